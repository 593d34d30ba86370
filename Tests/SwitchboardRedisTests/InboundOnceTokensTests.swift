import NIOConcurrencyHelpers
import NIOCore
import Testing

@testable import SwitchboardRedis

/// The once tokens of inbound Pub/Sub messages: identical messages get new tokens for as long
/// as the history function keeps the old ones (10 minutes).
@Suite struct InboundOnceTokensTests {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    func token(_ tokens: InboundOnceTokens, _ body: String, at offset: TimeAmount) -> String {
        tokens.token(destination: "/topic/refresh", headers: [:], body: ByteBuffer(string: body), now: start + offset)
    }

    /// A "refresh" sent every 5 minutes: the count was forgotten after 2 minutes, so each got
    /// `<digest>-1`, a token the function still kept (10 minutes): all but the first were
    /// dropped as recorded already.
    @Test func identicalMessagesMinutesApartGetNewTokensWhileTheOldAreKept() {
        let tokens = InboundOnceTokens()
        let first = token(tokens, "refresh", at: .zero)
        let second = token(tokens, "refresh", at: .minutes(5))
        let third = token(tokens, "refresh", at: .minutes(10))
        #expect(first.hasSuffix("-1") && second.hasSuffix("-2") && third.hasSuffix("-3"))
        #expect(Set([first, second, third]).count == 3)
        // Forgotten only once every token of it has expired in Redis (10 minutes).
        #expect(token(tokens, "refresh", at: .minutes(22)).hasSuffix("-1"))
        #expect(tokens.forgetAfter > .minutes(10))
    }

    @Test func theTableIsBoundedAndSaysWhenItForgets() {
        let forgotten = NIOLockedValueBox(0)
        let tokens = InboundOnceTokens(maxDigests: 100) { n in forgotten.withLockedValue { $0 += n } }
        for i in 0..<150 { _ = token(tokens, "m\(i)", at: .milliseconds(Int64(i))) }
        #expect(forgotten.withLockedValue { $0 } > 0)
        // The newest still count on.
        #expect(token(tokens, "m149", at: .seconds(1)).hasSuffix("-2"))
    }
}
