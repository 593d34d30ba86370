#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import NIOCore

/// Decides when one event loop's connections switch to Nagle's algorithm (`TCP_NODELAY` off)
/// and back, from how busy the loop's thread is.
///
/// With `TCP_NODELAY` every write leaves at once: the lowest latency, but one TCP segment
/// (and, on the receiving side, one wake-up) per write. When a loop is saturated, latency is
/// queueing delay anyway, and letting the kernel hold small writes while earlier data is
/// unacknowledged puts several messages in one segment — far less CPU per delivery.
///
/// The measure is the loop thread's CPU time over wall time in windows of ``window``, read at
/// the start of flush passes. A loop at or above `thresholdPercent` turns Nagle on for its
/// connections; it turns it off again after ``quietWindowsToRestore`` windows below half the
/// threshold (a long idle gap counts as that many windows, so the first message after it
/// leaves at once). The whole thread's CPU is measured, not only the writes, because Nagle
/// makes the writes much cheaper: a measure of the writes alone would drop below the
/// restore line as soon as Nagle is on, and flap. The gap between the two lines (½) is wider
/// than what Nagle saves of the whole (about a third), so the switch settles. No I/O here.
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

    /// CPU share of the loop's thread, in per cent, from which Nagle is turned on.
    public let thresholdPercent: Int64
    private var windowStart: NIODeadline
    private var cpuAtWindowStart: Int64
    private var quietWindows: Int64 = 0
    /// Whether the loop's connections are in Nagle mode.
    public private(set) var nagle = false

    /// - Parameters:
    ///   - thresholdPercent: 1…100.
    ///   - cpuNanos: the loop thread's CPU time now (``threadCPUNanoseconds()``).
    public init(thresholdPercent: Int, now: NIODeadline, cpuNanos: Int64) {
        precondition((1...100).contains(thresholdPercent))
        self.thresholdPercent = Int64(thresholdPercent)
        self.windowStart = now
        self.cpuAtWindowStart = cpuNanos
    }

    /// Whether a window has ended by `now`: only then does ``passStarting(at:cpuNanos:)`` need
    /// the thread's CPU time (a system call).
    public func windowEnded(at now: NIODeadline) -> Bool {
        now - windowStart >= Self.window
    }

    /// Call when a flush pass starts, before it writes, once ``windowEnded(at:)``.
    public mutating func passStarting(at now: NIODeadline, cpuNanos: Int64) -> Action {
        let elapsed = (now - windowStart).nanoseconds
        let window = Self.window.nanoseconds
        guard elapsed >= window else { return .none }
        let percent = max(0, cpuNanos - cpuAtWindowStart) * 100 / elapsed
        windowStart = now
        cpuAtWindowStart = cpuNanos
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

    /// CPU time of the calling thread, in nanoseconds (0 where it cannot be read).
    public static func threadCPUNanoseconds() -> Int64 {
        var ts = timespec()
        guard clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0 else { return 0 }
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }
}
