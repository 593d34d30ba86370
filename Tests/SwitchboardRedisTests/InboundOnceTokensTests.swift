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
        let forgotten = NIOLockedValueBox<[Int]>([])
        let tokens = InboundOnceTokens(maxDigests: 100) { n in forgotten.withLockedValue { $0.append(n) } }
        for i in 0..<150 { _ = token(tokens, "m\(i)", at: .milliseconds(Int64(i))) }
        // Said once for the first, then not again within the interval.
        #expect(forgotten.withLockedValue { $0 } == [1])
        #expect(tokens.sizes.digests == 100)
        // The newest still count on.
        #expect(token(tokens, "m149", at: .seconds(1)).hasSuffix("-2"))
        _ = token(tokens, "n", at: .seconds(12))
        #expect(forgotten.withLockedValue { $0 } == [1, 50])
    }

    /// Full, it forgets the least recently seen digest, one per new digest: it forgot the
    /// oldest tenth at once (counts still running, 9 more than needed), sorting the whole table
    /// under its lock to find them.
    @Test func aFullTableForgetsTheLeastRecentlySeenOnly() {
        let tokens = InboundOnceTokens(maxDigests: 100)
        for i in 0..<100 { _ = token(tokens, "m\(i)", at: .milliseconds(Int64(i))) }
        #expect(token(tokens, "m0", at: .milliseconds(100)).hasSuffix("-2"))
        _ = token(tokens, "new", at: .milliseconds(101))
        #expect(token(tokens, "m1", at: .milliseconds(102)).hasSuffix("-1"))  // forgotten for room
        #expect(token(tokens, "m0", at: .milliseconds(103)).hasSuffix("-3"))
        #expect(token(tokens, "m3", at: .milliseconds(104)).hasSuffix("-2"))
        #expect(tokens.sizes.digests == 100)
    }

    /// Records of a digest seen often behind one seen long ago are compacted; expired digests
    /// leave as messages come.
    @Test func recordsStayBoundedAndExpiredDigestsLeave() {
        let tokens = InboundOnceTokens()
        _ = token(tokens, "once", at: .zero)
        for i in 1...10_000 { _ = token(tokens, "often", at: .milliseconds(Int64(i))) }
        #expect(tokens.sizes.digests == 2)
        #expect(tokens.sizes.records <= 2 * 2 + 1024 + 1)
        #expect(token(tokens, "often", at: .minutes(5)).hasSuffix("-10001"))
        // 11 minutes after "once", it is forgotten as the next message comes.
        _ = token(tokens, "other", at: .minutes(12))
        #expect(tokens.sizes.digests == 2)
        #expect(token(tokens, "once", at: .minutes(12)).hasSuffix("-1"))
    }
}
