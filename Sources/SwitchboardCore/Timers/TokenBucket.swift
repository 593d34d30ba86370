import NIOCore
import SwitchboardWire

/// A token bucket: `rate` tokens per second, holding at most `capacity` (the burst).
package struct TokenBucket: Sendable {
    package let rate: Double
    package let capacity: Double
    private var tokens: Double
    private var last: NIODeadline

    package init(rate: Int, burst: Int, now: NIODeadline = .now()) {
        self.rate = Double(rate)
        self.capacity = Double(max(burst, 1))
        self.tokens = Double(max(burst, 1))
        self.last = now
    }

    /// Takes `n` tokens if there are enough; false when the rate is exceeded.
    package mutating func take(_ n: Int, now: NIODeadline = .now()) -> Bool {
        let elapsed = Double((now - last).nanoseconds) / 1e9
        if elapsed > 0 {
            tokens = min(capacity, tokens + elapsed * rate)
            last = now
        }
        guard tokens >= Double(n) else { return false }
        tokens -= Double(n)
        return true
    }
}

/// A connection sent faster than its configured limit.
package struct RateLimitExceeded: Error, Sendable, CustomStringConvertible {
    package var description: String
}
