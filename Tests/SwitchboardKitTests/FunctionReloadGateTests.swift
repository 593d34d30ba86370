import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import SwitchboardWire
import Testing

/// ``FunctionReloadGates`` without I/O: calls are futures the test answers in the order it
/// chooses, the load a promise it completes. What goes out again, and in which order.
@Suite struct FunctionReloadGateTests {
    final class Marker: Sendable {}

    /// One key's calls, with what each held or failed call ran when it went out.
    final class Calls: Sendable {
        let marker = Marker()
        let loop = EmbeddedEventLoop()
        let ran = NIOLockedValueBox<[String]>([])
        let loads = NIOLockedValueBox<[EventLoopPromise<Void>]>([])
        let answers = NIOLockedValueBox<[EventLoopPromise<Void>]>([])
        var key: FunctionReloadGates.Key {
            FunctionReloadGates.Key(client: ObjectIdentifier(marker), loop: nil, library: ObjectIdentifier(Marker.self))
        }

        var load: @Sendable () -> EventLoopFuture<Void> {
            { [loop, loads] in
                let promise = loop.makePromise(of: Void.self)
                loads.withLockedValue { $0.append(promise) }
                return promise.futureResult
            }
        }

        /// Makes call `name`: its ticket, and whether it was sent (else held).
        func call(_ name: String) -> (ticket: UInt64, sent: Bool) {
            let answer = loop.makePromise(of: Void.self)
            answers.withLockedValue { $0.append(answer) }
            let (future, ticket) = FunctionReloadGates.send(key, unlessHeld: { [ran] _ in ran.withLockedValue { $0.append(name) } }) {
                answer.futureResult
            }
            return (ticket, future != nil)
        }

        /// First attempt `ticket` answered: found the library missing (`again` names its retry) or not.
        func answered(_ ticket: UInt64, missing again: String?) {
            var retry: (@Sendable () -> Void)?
            if let again {
                let ran = ran
                retry = { ran.withLockedValue { $0.append(again) } }
            }
            FunctionReloadGates.answered(key, ticket: ticket, retry: retry, load: load)
        }

        func finish() {
            for promise in answers.withLockedValue({ $0 }) { promise.succeed(()) }
            for promise in loads.withLockedValue({ $0 }) { promise.succeed(()) }
        }
    }

    @Test func aFailureReportedAfterTheLoadStillGoesOutInCallOrder() {
        let calls = Calls()
        let a = calls.call("a")
        let b = calls.call("b")
        #expect(a.sent && b.sent)
        calls.answered(a.ticket, missing: "a again")
        #expect(calls.loads.withLockedValue { $0.count } == 1)
        let c = calls.call("c")
        #expect(!c.sent)
        // The library is back, but b (sent before the load) has not answered: nothing goes out.
        calls.loads.withLockedValue { $0[0] }.succeed(())
        #expect(calls.ran.withLockedValue { $0 }.isEmpty)
        // b's answer comes late (its caller added its callback after the reply had come).
        calls.answered(b.ticket, missing: "b again")
        #expect(calls.ran.withLockedValue { $0 } == ["a again", "b again", "c"])
        #expect(calls.loads.withLockedValue { $0.count } == 1)
        // Open again: calls go straight out.
        let d = calls.call("d")
        #expect(d.sent)
        calls.answered(d.ticket, missing: nil)
        calls.finish()
    }

    @Test func aRetryFailingAgainStartsAnotherLoadAndHeldCallsWaitForIt() {
        let calls = Calls()
        let a = calls.call("a")
        calls.answered(a.ticket, missing: "a again")
        let b = calls.call("b")
        #expect(!b.sent)
        calls.loads.withLockedValue { $0[0] }.succeed(())
        #expect(calls.ran.withLockedValue { $0 } == ["a again", "b"])
        // "a again" found the library flushed once more: a second load; calls made meanwhile wait.
        FunctionReloadGates.missing(calls.key, ticket: a.ticket, retry: { [ran = calls.ran] in ran.withLockedValue { $0.append("a third") } }, load: calls.load)
        #expect(calls.loads.withLockedValue { $0.count } == 2)
        let c = calls.call("c")
        #expect(!c.sent)
        calls.loads.withLockedValue { $0[1] }.succeed(())
        #expect(calls.ran.withLockedValue { $0 } == ["a again", "b", "a third", "c"])
        calls.finish()
    }

    @Test func answersThatFindTheLibraryDoNotHoldAnything() {
        let calls = Calls()
        for n in 0..<3 {
            let call = calls.call("c\(n)")
            #expect(call.sent)
            calls.answered(call.ticket, missing: nil)
        }
        #expect(calls.loads.withLockedValue { $0.isEmpty } && calls.ran.withLockedValue { $0.isEmpty })
        calls.finish()
    }
}
