import NIOCore

/// Decides when one event loop's connections switch to Nagle's algorithm (`TCP_NODELAY` off)
/// and back, from the share of the loop's time spent in flush passes.
///
/// With `TCP_NODELAY` every write leaves at once: the lowest latency, but one TCP segment
/// (and, on the receiving side, one wake-up) per write. When a loop is saturated, latency is
/// queueing delay anyway, and letting the kernel hold small writes while earlier data is
/// unacknowledged puts several messages in one segment — far less CPU per delivery. So a
/// loop that spends at least `thresholdPercent` of a ``window`` in flush passes turns Nagle
/// on for its connections, and turns it off again after ``quietWindowsToRestore`` windows
/// below half the threshold (a long idle gap counts as that many windows, so the first
/// message after it leaves at once). Driven by ``LoopShard``; no I/O here.
public struct NagleWhenBusy: Sendable {
    /// What the loop must do before the pass writes.
    public enum Action: Equatable, Sendable {
        case none
        /// Turn `TCP_NODELAY` off on every connection of the loop.
        case enableNagle
        /// Turn `TCP_NODELAY` back on (which also sends what the kernel holds).
        case disableNagle
    }

    /// Length of one measurement window.
    public static let window = TimeAmount.milliseconds(100)
    /// Quiet windows in a row before `TCP_NODELAY` is restored.
    public static let quietWindowsToRestore: Int64 = 5

    /// Share of a window spent in flush passes, in per cent, from which Nagle is turned on.
    public let thresholdPercent: Int64
    private var windowStart: NIODeadline
    private var busyNanos: Int64 = 0
    private var quietWindows: Int64 = 0
    /// Whether the loop's connections are in Nagle mode.
    public private(set) var nagle = false

    /// - Parameter thresholdPercent: 1…100.
    public init(thresholdPercent: Int, now: NIODeadline) {
        precondition((1...100).contains(thresholdPercent))
        self.thresholdPercent = Int64(thresholdPercent)
        self.windowStart = now
    }

    /// Call when a flush pass starts, before it writes.
    public mutating func passStarting(at now: NIODeadline) -> Action {
        let elapsed = (now - windowStart).nanoseconds
        let window = Self.window.nanoseconds
        guard elapsed >= window else { return .none }
        let percent = busyNanos * 100 / elapsed
        windowStart = now
        busyNanos = 0
        if percent >= thresholdPercent {
            quietWindows = 0
            guard !nagle else { return .none }
            nagle = true
            return .enableNagle
        }
        guard nagle, percent * 2 < thresholdPercent else {
            quietWindows = 0
            return .none
        }
        quietWindows += elapsed / window
        guard quietWindows >= Self.quietWindowsToRestore else { return .none }
        quietWindows = 0
        nagle = false
        return .disableNagle
    }

    /// Call when the pass that started at `start` has written everything.
    public mutating func passEnded(startedAt start: NIODeadline, at end: NIODeadline) {
        busyNanos += max(0, (end - start).nanoseconds)
    }
}
