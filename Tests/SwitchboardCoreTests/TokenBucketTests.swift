import NIOCore
import SwitchboardCore
import Testing

/// The rate limits' token bucket (`limits.frames-per-second`, `limits.bytes-per-second`).
@Suite struct TokenBucketTests {
    static let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    /// Takes `n` tokens `ms` milliseconds after ``start``.
    static func take(_ bucket: inout TokenBucket, _ n: Int, at ms: Int64 = 0) -> Bool {
        bucket.take(n, now: start + .milliseconds(ms))
    }

    @Test func aBurstPassesThenTheRateHolds() {
        var bucket = TokenBucket(rate: 10, burst: 20, now: Self.start)
        let burst = (0..<20).map { _ in Self.take(&bucket, 1) }
        #expect(burst.allSatisfy { $0 })
        let over = Self.take(&bucket, 1)
        let later = Self.take(&bucket, 1, at: 100)
        let again = Self.take(&bucket, 1, at: 100)
        #expect(!over && later && !again)
    }

    /// A frame larger than the burst (`limits.max-frame-bytes` above 2 × `bytes-per-second`)
    /// was refused on a quiet connection whatever its rate: it passes from a full bucket, which
    /// goes into debt until the rate has paid for it.
    @Test func aCostAboveTheBurstPassesFromAFullBucketIntoDebt() {
        var bucket = TokenBucket(rate: 10, burst: 20, now: Self.start)
        let large = Self.take(&bucket, 30)
        // 10 tokens of debt: one second to pay back, then 100 ms more for the next token.
        let inDebt = Self.take(&bucket, 1, at: 1_050)
        let paid = Self.take(&bucket, 1, at: 1_150)
        #expect(large && !inDebt && paid)
        // Not from a bucket short of full.
        var used = TokenBucket(rate: 10, burst: 20, now: Self.start)
        let small = Self.take(&used, 1)
        let refused = Self.take(&used, 30)
        let full = Self.take(&used, 30, at: 100)
        #expect(small && !refused && full)
    }
}
