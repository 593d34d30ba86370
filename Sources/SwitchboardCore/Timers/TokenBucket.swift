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

    /// Tokens granted by ``credit(for:now:)`` beyond the capacity, usable until ``extraUntil``.
    private var extra: Double = 0
    private var extraUntil: NIODeadline = .distantPast

    /// Takes `n` tokens if there are enough; false when the rate is exceeded.
    package mutating func take(_ n: Int, now: NIODeadline = .now()) -> Bool {
        let elapsed = Double((now - last).nanoseconds) / 1e9
        if elapsed > 0 {
            tokens = min(capacity, tokens + elapsed * rate)
            last = now
        }
        if tokens >= Double(n) {
            tokens -= Double(n)
            return true
        }
        guard now <= extraUntil, tokens + extra >= Double(n) else { return false }
        extra -= Double(n) - tokens
        tokens = 0
        return true
    }

    /// What came in while it could not be counted (the reader held reads back for `paused`)
    /// comes in at once: it is allowed at the rate over that time, beyond the capacity, for as
    /// long again (at least a second). At most 5 s worth: a client can make the pause itself
    /// (a slow step), and a minute's worth was a burst of 60 times the rate.
    package mutating func credit(for paused: TimeAmount, now: NIODeadline = .now()) {
        guard paused > .zero else { return }
        let seconds = min(Double(paused.nanoseconds) / 1e9, 5)
        // (The total too: pauses ending one inside another's window added up.)
        extra = min((now <= extraUntil ? extra : 0) + seconds * rate, 5 * rate)
        extraUntil = now + .nanoseconds(Int64(max(seconds, 1) * 1e9))
    }
}

/// A connection sent faster than its configured limit.
package struct RateLimitExceeded: Error, Sendable, CustomStringConvertible {
    package var description: String
}
