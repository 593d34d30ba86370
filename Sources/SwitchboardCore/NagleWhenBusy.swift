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
/// unacknowledged puts several messages in one segment — far less CPU per delivery. Below
/// saturation Nagle only adds delay (a write can wait for a delayed ACK), so the loop must
/// not stay in that mode for a load it can carry without it.
///
/// The measure is the loop thread's CPU time over wall time in windows of ``window``, read at
/// the start of flush passes. The whole thread's CPU is measured, not only the writes, because
/// Nagle makes the writes much cheaper: a measure of the writes alone would drop as soon as
/// Nagle is on, and flap. The rules:
/// - **On** after ``busyWindowsToEnable`` windows in a row at or above `thresholdPercent`
///   (one noisy window, or a short burst of connects, is not saturation).
/// - **Off** after ``quietWindowsToRestore`` windows below half the threshold (a long idle
///   gap counts as that many windows, so the first message after it leaves at once).
/// - **Probe**: a loop that has been in Nagle mode for ``probeAfterWindows`` and whose last
///   window is below the threshold tries `TCP_NODELAY` again. Nagle makes the loop cheaper,
///   so a load it still carries between half the threshold and the threshold may or may not
///   need it; only trying tells. If the loop turns Nagle back on within
///   ``probeGraceWindows``, the probe failed and the next one waits twice as long (up to
///   ``maxProbeAfterWindows``); otherwise the mode is settled and the wait starts over.
///
/// No I/O here: the caller turns actions into socket options.
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
    /// Busy windows in a row before Nagle is turned on.
    public static let busyWindowsToEnable: Int64 = 3
    /// Quiet windows in a row before `TCP_NODELAY` is restored.
    public static let quietWindowsToRestore: Int64 = 5
    /// Windows in Nagle mode before the first probe (5 s).
    public static let initialProbeAfterWindows: Int64 = 50
    /// Longest wait between probes that keep failing (60 s).
    public static let maxProbeAfterWindows: Int64 = 600
    /// A probe failed if Nagle comes back within this many windows.
    public static let probeGraceWindows: Int64 = 10

    /// CPU share of the loop's thread, in per cent, from which Nagle is turned on.
    public let thresholdPercent: Int64
    private var windowStart: NIODeadline
    private var cpuAtWindowStart: Int64
    private var busyWindows: Int64 = 0
    private var quietWindows: Int64 = 0
    private var windowsInMode: Int64 = 0
    /// Windows since the last probe while it may still fail; nil when no probe is pending.
    private var windowsSinceProbe: Int64?
    /// Windows in Nagle mode before the next probe.
    public private(set) var probeAfterWindows = Self.initialProbeAfterWindows
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
        let windows = elapsed / window
        windowStart = now
        cpuAtWindowStart = cpuNanos
        return nagle ? decideInNagleMode(percent: percent, windows: windows)
                     : decideInNoDelayMode(percent: percent, windows: windows)
    }

    private mutating func decideInNoDelayMode(percent: Int64, windows: Int64) -> Action {
        guard percent >= thresholdPercent else {
            busyWindows = 0
            if let since = windowsSinceProbe {
                if since + windows >= Self.probeGraceWindows {
                    windowsSinceProbe = nil  // the probe held: the next one waits the least again
                    probeAfterWindows = Self.initialProbeAfterWindows
                } else {
                    windowsSinceProbe = since + windows
                }
            }
            return .none
        }
        busyWindows += 1
        guard busyWindows >= Self.busyWindowsToEnable else { return .none }
        if windowsSinceProbe != nil {
            probeAfterWindows = min(probeAfterWindows * 2, Self.maxProbeAfterWindows)
            windowsSinceProbe = nil
        }
        return switchMode(toNagle: true)
    }

    private mutating func decideInNagleMode(percent: Int64, windows: Int64) -> Action {
        windowsInMode += windows
        if percent >= thresholdPercent {
            quietWindows = 0
            return .none
        }
        if percent * 2 < thresholdPercent {
            quietWindows += windows
            guard quietWindows >= Self.quietWindowsToRestore else { return .none }
            probeAfterWindows = Self.initialProbeAfterWindows
            return switchMode(toNagle: false)
        }
        quietWindows = 0
        guard windowsInMode >= probeAfterWindows else { return .none }
        windowsSinceProbe = 0
        return switchMode(toNagle: false)
    }

    private mutating func switchMode(toNagle: Bool) -> Action {
        nagle = toNagle
        busyWindows = 0
        quietWindows = 0
        windowsInMode = 0
        return toNagle ? .enableNagle : .disableNagle
    }

    /// CPU time of the calling thread, in nanoseconds (0 where it cannot be read).
    public static func threadCPUNanoseconds() -> Int64 {
        var ts = timespec()
        guard clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0 else { return 0 }
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }
}
