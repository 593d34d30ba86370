import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Bounds one kind of log line whose rate someone else decides: a client's frames, a backend's
/// replies, messages on a Redis channel anyone with access can publish to, one line per
/// message while Redis is down. At most ``limit`` lines per ``interval``; the lines over it are
/// counted, and the first line let through afterwards carries their number (`suppressed`).
package final class LogThrottle: Sendable {
    private struct State {
        var windowStart: NIODeadline?
        var logged = 0
        var suppressed = 0
    }

    package let limit: Int
    package let interval: TimeAmount
    private let state = NIOLockedValueBox(State())

    package init(limit: Int = 10, per interval: TimeAmount = .seconds(10)) {
        self.limit = limit
        self.interval = interval
    }

    /// Nil: leave this line out (counted). Otherwise log it, noting how many were left out since
    /// the last line logged.
    package func admit(now: NIODeadline = .now()) -> Int? {
        state.withLockedValue { s in
            if let start = s.windowStart, now - start < interval, s.logged >= limit {
                s.suppressed += 1
                return nil
            }
            if s.windowStart.map({ now - $0 >= interval }) ?? true {
                s.windowStart = now
                s.logged = 0
            }
            s.logged += 1
            defer { s.suppressed = 0 }
            return s.suppressed
        }
    }
}

extension Logger {
    /// Logs at `level` unless `throttle` has let through its limit of lines lately; the first
    /// line after some were left out says how many (metadata `suppressed`).
    package func log(
        level: Logger.Level, throttledBy throttle: LogThrottle, _ message: @autoclosure () -> Logger.Message,
        metadata: @autoclosure () -> Logger.Metadata? = nil, file: String = #fileID, function: String = #function, line: UInt = #line
    ) {
        guard logLevel <= level, let suppressed = throttle.admit() else { return }
        var all = metadata() ?? [:]
        if suppressed > 0 { all["suppressed"] = "\(suppressed)" }
        log(level: level, message(), metadata: all, file: file, function: function, line: line)
    }
}
