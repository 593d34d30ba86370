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

    /// The credit for reads held back is at most 5 s worth, in all: pauses ending one inside
    /// another's window added up.
    @Test func theCreditForHeldReadsIsCappedInAll() {
        var bucket = TokenBucket(rate: 10, burst: 20, now: Self.start)
        #expect((0..<20).allSatisfy { _ in Self.take(&bucket, 1) })
        bucket.credit(for: .seconds(5), now: Self.start)
        bucket.credit(for: .seconds(5), now: Self.start)
        bucket.credit(for: .seconds(60), now: Self.start)
        #expect((0..<50).allSatisfy { _ in Self.take(&bucket, 1) })
        #expect(!Self.take(&bucket, 1), "5 s worth at 10/s: 50")
    }
}
