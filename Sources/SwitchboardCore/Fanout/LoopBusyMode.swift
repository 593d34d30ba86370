import NIOCore
import SwitchboardWire

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Decides when one event loop is saturated — in **busy mode** — and when it is no longer, from
/// how busy the loop's thread is.
///
/// A loop in busy mode trades latency it has already lost for throughput:
/// - its connections switch to Nagle's algorithm (`TCP_NODELAY` off; with `http.tcp-nodelay`).
///   With `TCP_NODELAY` every write leaves at once: the lowest latency, but one TCP segment
///   (and, on the receiving side, one wake-up) per write. Letting the kernel hold small writes
///   while earlier data is unacknowledged puts several messages in one segment;
/// - its flush passes are spaced by the wider ``FanoutHub/busyWriteCoalescing``, so each
///   `write` carries several messages.
///
/// Both cut the CPU per delivery severalfold, and when a loop is saturated latency is queueing
/// delay anyway. Below saturation they only add delay (a write can wait for a delayed ACK or
/// for the next pass), so the loop must not stay in that mode for a load it can carry without.
///
/// Both measures are taken over windows of ``window``, read at the start of flush passes, from
/// one `getrusage(RUSAGE_THREAD)` of the loop's thread. A window is **busy** when either says
/// the loop is saturated:
/// - its CPU time over wall time reaches `thresholdPercent`. The whole thread's CPU is
///   measured, not only the writes, because busy mode makes the writes much cheaper: a
///   measure of the writes alone would drop as soon as it is on, and flap.
/// - it **never waited for work**: no voluntary context switch in the window, so it did not
///   block in `epoll_wait` once. This is the measure that holds where the thread cannot get a
///   whole core (more loops than cores, a CPU quota, a busy neighbour): a saturated loop then
///   shows a CPU share well below any line, but it still never runs out of work. A loop that
///   carries its load waits between messages, many times a window.
///
/// A window is **quiet** when the CPU share is below half the threshold and the loop waited.
/// The rules:
/// - **On** after ``busyWindowsToEnable`` busy windows in a row (one noisy window, or a
///   short burst of connects, is not saturation); after one (``busyWindowsToReenable``) if
///   the loop left busy mode less than ``recentWindows`` ago. A bursty load, saturating for
///   a while, then idle, then saturating again, would otherwise start every burst with
///   300 ms of normal mode at saturation and a backlog to work off.
/// - **Off** after ``quietWindowsToRestore`` quiet windows (a long idle gap counts as that
///   many windows, so the first message after it leaves at once).
/// - **Probe**: a loop that has been in busy mode for ``probeAfterWindows`` and whose last
///   window is not busy tries normal mode again. Busy mode makes the loop cheaper,
///   so a load it still carries between half the threshold and the threshold may or may not
///   need it; only trying tells. If the loop is busy again within
///   ``probeGraceWindows``, the probe failed and the next one waits twice as long (up to
///   ``maxProbeAfterWindows``); otherwise the mode is settled and the wait starts over.
///
/// No I/O here: the caller turns actions into socket options and coalescing intervals.
package struct LoopBusyMode: Sendable {
    /// What the loop must do before the pass writes.
    package enum Action: Equatable, Sendable {
        case none
        /// The loop is saturated: Nagle on every connection of the loop, wide coalescing.
        case enterBusyMode
        /// Back to normal: `TCP_NODELAY` (which also sends what the kernel holds), the
        /// usual coalescing.
        case leaveBusyMode
    }

    /// Length of one measurement window.
    package static let window = TimeAmount.milliseconds(100)
    /// Busy windows in a row before busy mode is entered.
    package static let busyWindowsToEnable: Int64 = 3
    /// Busy windows before busy mode comes back when the loop left it at most
    /// ``recentWindows`` ago: its load was real, so one busy window is enough.
    package static let busyWindowsToReenable: Int64 = 1
    /// How long a loop that left busy mode counts as recently saturated (10 s).
    package static let recentWindows: Int64 = 100
    /// Quiet windows in a row before `TCP_NODELAY` is restored.
    package static let quietWindowsToRestore: Int64 = 5
    /// Windows in busy mode before the first probe (5 s).
    package static let initialProbeAfterWindows: Int64 = 50
    /// Longest wait between probes that keep failing (60 s).
    package static let maxProbeAfterWindows: Int64 = 600
    /// A probe failed if busy mode comes back within this many windows.
    package static let probeGraceWindows: Int64 = 10

    /// CPU share of the loop's thread, in per cent, from which a window is busy.
    package let thresholdPercent: Int64
    private var windowStart: NIODeadline
    private var cpuAtWindowStart: Int64
    private var waitsAtWindowStart: Int64?
    private var busyWindows: Int64 = 0
    private var quietWindows: Int64 = 0
    private var windowsInMode: Int64 = 0
    /// Windows since the loop left busy mode, while that is recent; nil otherwise.
    private var windowsSinceBusy: Int64?
    /// Windows since the last probe while it may still fail; nil when no probe is pending.
    private var windowsSinceProbe: Int64?
    /// Windows in busy mode before the next probe.
    package private(set) var probeAfterWindows = Self.initialProbeAfterWindows
    /// Times the loop waited for work in the last window that ended (nil: not measured).
    package private(set) var lastWaits: Int64?
    /// Whether the loop is in busy mode.
    package private(set) var busy = false

    /// - Parameters:
    ///   - thresholdPercent: 1…100.
    ///   - cpuNanos: the loop thread's CPU time now (``threadUsage()``).
    ///   - waits: the thread's voluntary context switches now, if counted.
    package init(thresholdPercent: Int, now: NIODeadline, cpuNanos: Int64, waits: Int64? = nil) {
        precondition((1...100).contains(thresholdPercent))
        self.thresholdPercent = Int64(thresholdPercent)
        self.windowStart = now
        self.cpuAtWindowStart = cpuNanos
        self.waitsAtWindowStart = waits
    }

    /// Whether a window has ended by `now`: only then does ``passStarting(at:cpuNanos:waits:)`` need
    /// the thread's usage (a system call).
    package func windowEnded(at now: NIODeadline) -> Bool {
        now - windowStart >= Self.window
    }

    /// How a window compares with the lines.
    enum Load { case quiet, moderate, busy }

    /// Call when a flush pass starts, before it writes, once ``windowEnded(at:)``.
    /// - Parameters:
    ///   - cpuNanos: the loop thread's CPU time now.
    ///   - waits: how many times the thread has waited for work so far (voluntary context
    ///     switches); nil where that cannot be read, which leaves the CPU share alone.
    package mutating func passStarting(at now: NIODeadline, cpuNanos: Int64, waits: Int64? = nil) -> Action {
        let elapsed = (now - windowStart).nanoseconds
        let window = Self.window.nanoseconds
        guard elapsed >= window else { return .none }
        let cpuPercent = max(0, cpuNanos - cpuAtWindowStart) * 100 / elapsed
        let waited = waits.flatMap { current in waitsAtWindowStart.map { current - $0 } }
        lastWaits = waited
        let load: Load
        if cpuPercent >= thresholdPercent || waited == 0 {
            load = .busy
        } else if cpuPercent * 2 < thresholdPercent {
            load = .quiet
        } else {
            load = .moderate
        }
        let windows = elapsed / window
        windowStart = now
        cpuAtWindowStart = cpuNanos
        waitsAtWindowStart = waits
        return busy ? decideInBusyMode(load, windows: windows) : decideInNormalMode(load, windows: windows)
    }

    private mutating func decideInNormalMode(_ load: Load, windows: Int64) -> Action {
        if let since = windowsSinceBusy {
            windowsSinceBusy = since + windows > Self.recentWindows ? nil : since + windows
        }
        guard load == .busy else {
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
        guard busyWindows >= (windowsSinceBusy == nil ? Self.busyWindowsToEnable : Self.busyWindowsToReenable) else {
            return .none
        }
        if windowsSinceProbe != nil {
            probeAfterWindows = min(probeAfterWindows * 2, Self.maxProbeAfterWindows)
            windowsSinceProbe = nil
        }
        return switchMode(toBusy: true)
    }

    private mutating func decideInBusyMode(_ load: Load, windows: Int64) -> Action {
        windowsInMode += windows
        switch load {
        case .busy:
            quietWindows = 0
            return .none
        case .quiet:
            quietWindows += windows
            guard quietWindows >= Self.quietWindowsToRestore else { return .none }
            probeAfterWindows = Self.initialProbeAfterWindows
            return switchMode(toBusy: false)
        case .moderate:
            quietWindows = 0
            guard windowsInMode >= probeAfterWindows else { return .none }
            windowsSinceProbe = 0
            return switchMode(toBusy: false)
        }
    }

    private mutating func switchMode(toBusy: Bool) -> Action {
        busy = toBusy
        windowsSinceBusy = toBusy ? nil : 0
        busyWindows = 0
        quietWindows = 0
        windowsInMode = 0
        return toBusy ? .enterBusyMode : .leaveBusyMode
    }

    /// CPU time of the calling thread, in nanoseconds, and how many times it has waited for
    /// work (voluntary context switches; nil where the platform does not count them per thread).
    package static func threadUsage() -> (cpuNanos: Int64, waits: Int64?) {
        #if os(Linux)
        var usage = rusage()
        // RUSAGE_THREAD (1) is only declared with _GNU_SOURCE.
        if getrusage(__rusage_who_t(1), &usage) == 0 {
            let cpu =
                (Int64(usage.ru_utime.tv_sec) + Int64(usage.ru_stime.tv_sec)) * 1_000_000_000
                + (Int64(usage.ru_utime.tv_usec) + Int64(usage.ru_stime.tv_usec)) * 1_000
            return (cpu, Int64(usage.ru_nvcsw))
        }
        #endif
        return (threadCPUNanoseconds(), nil)
    }

    /// CPU time of the calling thread, in nanoseconds (0 where it cannot be read).
    package static func threadCPUNanoseconds() -> Int64 {
        var ts = timespec()
        guard clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0 else { return 0 }
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }
}
