import NIOCore
import NIOHTTP1
import Testing

@testable import SwitchboardServer

@Suite struct HTTPConnectionIdleStateTests {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
    let head = HTTPServerRequestPart.head(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/"))

    @Test func idleAfterTheLastActivity() {
        var state = HTTPConnectionIdleState(timeout: .seconds(10))
        let firstCheck = state.activated(now: t0)
        #expect(firstCheck == t0 + .seconds(10))
        state.read(head, now: t0 + .seconds(4))
        state.read(.end(nil), now: t0 + .seconds(4))
        let closesAfterAnswer = state.answered(now: t0 + .seconds(5))
        #expect(closesAfterAnswer == false)
        let atFirstCheck = state.timerFired(now: t0 + .seconds(10))
        #expect(atFirstCheck == .check(t0 + .seconds(15)))
        let atSecondCheck = state.timerFired(now: t0 + .seconds(15))
        #expect(atSecondCheck == .close)
    }

    @Test func notIdleWhileAnAnswerIsPrepared() {
        var state = HTTPConnectionIdleState(timeout: .seconds(10))
        _ = state.activated(now: t0)
        state.read(head, now: t0)
        state.read(.end(nil), now: t0)
        let whileAnswering = state.timerFired(now: t0 + .seconds(30))
        #expect(whileAnswering == .check(t0 + .seconds(40)))
    }

    /// A client that pipelines requests and reads none of the answers: the connection turns
    /// unwritable with answers owed, which kept it open for good (the idle timeout never ran
    /// while an answer was owed). It closes once unwritable for the idle timeout; writable
    /// again in time, it stays.
    @Test func aClientThatReadsNothingIsClosedAfterTheIdleTimeout() {
        var state = HTTPConnectionIdleState(timeout: .seconds(10))
        _ = state.activated(now: t0)
        state.read(head, now: t0)
        state.read(.end(nil), now: t0)
        state.writabilityChanged(isWritable: false, now: t0 + .seconds(1))
        #expect(state.timerFired(now: t0 + .seconds(10)) == .check(t0 + .seconds(11)))
        #expect(state.timerFired(now: t0 + .seconds(11)) == .close)

        var recovering = HTTPConnectionIdleState(timeout: .seconds(10))
        _ = recovering.activated(now: t0)
        recovering.read(head, now: t0)
        recovering.read(.end(nil), now: t0)
        recovering.writabilityChanged(isWritable: false, now: t0 + .seconds(1))
        recovering.writabilityChanged(isWritable: true, now: t0 + .seconds(5))
        #expect(recovering.timerFired(now: t0 + .seconds(11)) == .check(t0 + .seconds(21)))
    }

    @Test func aRequestBeingReadIsIdleWithoutProgress() {
        var state = HTTPConnectionIdleState(timeout: .seconds(10))
        _ = state.activated(now: t0)
        state.read(head, now: t0)
        let whileReading = state.timerFired(now: t0 + .seconds(10))
        #expect(whileReading == .close)
    }

    /// Slowloris on a body: a byte now and then kept the connection (the idle timeout counts
    /// from the last read). The request must be in within the request timeout, plus a second
    /// per 500 bytes of body read.
    @Test func aTrickledBodyIsClosedAtTheRequestTimeout() {
        var state = HTTPConnectionIdleState(timeout: .seconds(60), requestTimeout: .seconds(10))
        #expect(state.activated(now: t0) == t0 + .seconds(10))
        state.read(head, now: t0)
        for n in 1...19 { state.read(.body(ByteBuffer(string: "x")), now: t0 + .milliseconds(Int64(n) * 500)) }
        #expect(state.timerFired(now: t0 + .seconds(10)) == .close)
    }

    @Test func aBodyArrivingAtAFairRateGetsMoreTime() {
        var state = HTTPConnectionIdleState(timeout: .seconds(60), requestTimeout: .seconds(10))
        _ = state.activated(now: t0)
        state.read(head, now: t0)
        state.read(.body(ByteBuffer(repeating: 0, count: 10_000)), now: t0 + .seconds(9))
        // 10 s + 10,000 / 500 s.
        #expect(state.timerFired(now: t0 + .seconds(10)) == .check(t0 + .seconds(20)))
        #expect(state.timerFired(now: t0 + .seconds(29)) == .check(t0 + .seconds(30)))
        #expect(state.timerFired(now: t0 + .seconds(30)) == .close)
    }

    @Test func timeWithReadsPausedDoesNotCountAndIdleConnectionsAreLookedAtEachRequestTimeout() {
        var state = HTTPConnectionIdleState(timeout: .seconds(60), requestTimeout: .seconds(10))
        _ = state.activated(now: t0)
        // No request: looked at again a request timeout later (one may begin meanwhile).
        #expect(state.timerFired(now: t0 + .seconds(10)) == .check(t0 + .seconds(20)))
        state.read(head, now: t0 + .seconds(11))
        // Reads paused (earlier answers owed): the request's time starts again.
        #expect(state.timerFired(now: t0 + .seconds(20), readsPaused: true) == .check(t0 + .seconds(30)))
        state.read(.end(nil), now: t0 + .seconds(25))
        #expect(state.requestDue == nil)
    }

    @Test func quiesceClosesWhenNothingIsOwedOrAfterTheLastAnswer() {
        var idle = HTTPConnectionIdleState(timeout: nil)
        let idleDecision = idle.quiesce(now: t0)
        #expect(idleDecision == .closeNow)
        var busy = HTTPConnectionIdleState(timeout: nil, shutdownGrace: .seconds(5))
        busy.read(head, now: t0)
        busy.read(head, now: t0)
        let busyDecision = busy.quiesce(now: t0)
        #expect(busyDecision == .closeAfterAnswers(by: t0 + .seconds(5)))
        let afterFirstAnswer = busy.answered(now: t0)
        #expect(!afterFirstAnswer)
        let afterLastAnswer = busy.answered(now: t0)
        #expect(afterLastAnswer)
    }

    @Test func quiesceClosesAtTheGraceEvenWithAnswersOwed() {
        // Without a timeout, and with one longer than the grace: the grace decides.
        for timeout in [nil, TimeAmount.seconds(60)] {
            var state = HTTPConnectionIdleState(timeout: timeout, shutdownGrace: .seconds(5))
            _ = state.activated(now: t0)
            state.read(head, now: t0)  // a body that never ends
            _ = state.quiesce(now: t0 + .seconds(1))
            let early = state.timerFired(now: t0 + .seconds(3))
            #expect(early == .check(t0 + .seconds(6)))
            let atGrace = state.timerFired(now: t0 + .seconds(6))
            #expect(atGrace == .close)
        }
    }

    @Test func quiesceKeepsAShorterIdleTimeout() {
        var state = HTTPConnectionIdleState(timeout: .seconds(2), shutdownGrace: .seconds(60))
        _ = state.activated(now: t0)
        state.read(head, now: t0)
        _ = state.quiesce(now: t0)
        let idle = state.timerFired(now: t0 + .seconds(2))
        #expect(idle == .close)  // the request's body stopped coming: idle
    }
}
