import Logging
import NIOConcurrencyHelpers
import NIOCore
import SwitchboardCore
import Testing

@Suite("LogThrottle: log lines driven by input are bounded")
struct LogThrottleTests {
    @Test("at most the limit per interval; the first line after says how many were left out")
    func window() {
        let throttle = LogThrottle(limit: 3, per: .seconds(10))
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
        #expect((0..<3).map { _ in throttle.admit(now: t0) } == [0, 0, 0])
        #expect(throttle.admit(now: t0 + .seconds(1)) == nil)
        #expect(throttle.admit(now: t0 + .seconds(9)) == nil)
        // A new interval: let through, with the two left out.
        #expect(throttle.admit(now: t0 + .seconds(10)) == 2)
        #expect(throttle.admit(now: t0 + .seconds(10)) == 0)
        #expect(throttle.admit(now: t0 + .seconds(11)) == 0)
        #expect(throttle.admit(now: t0 + .seconds(12)) == nil)
        // Long quiet: the count carries to the next line logged.
        #expect(throttle.admit(now: t0 + .seconds(100)) == 1)
    }

    @Test("the Logger extension logs admitted lines with metadata suppressed, and nothing below its level")
    func logger() {
        let lines = NIOLockedValueBox<[(String, Logger.Metadata?)]>([])
        var logger = Logger(label: "t") { _ in CapturedLogs(lines: lines) }
        logger.logLevel = .info
        let throttle = LogThrottle(limit: 2, per: .seconds(3600))
        for i in 0..<5 { logger.log(level: .warning, throttledBy: throttle, "line \(i)", metadata: ["i": "\(i)"]) }
        #expect(lines.withLockedValue { $0.map(\.0) } == ["line 0", "line 1"])
        #expect(lines.withLockedValue { $0.allSatisfy { $0.1?["suppressed"] == nil } })
        // Below the level: not logged, and not counted against the limit.
        let quiet = LogThrottle(limit: 1, per: .seconds(3600))
        logger.log(level: .debug, throttledBy: quiet, "hidden")
        logger.log(level: .error, throttledBy: quiet, "shown")
        #expect(lines.withLockedValue { $0.map(\.0) } == ["line 0", "line 1", "shown"])
    }

    @Test("suppressed lines are reported on the next line logged")
    func suppressedMetadata() {
        let lines = NIOLockedValueBox<[(String, Logger.Metadata?)]>([])
        let logger = Logger(label: "t") { _ in CapturedLogs(lines: lines) }
        let throttle = LogThrottle(limit: 1, per: .milliseconds(1))
        logger.log(level: .warning, throttledBy: throttle, "first")
        var left = 0
        // Lines within the same millisecond are left out; wait for the interval to pass.
        let start = NIODeadline.now()
        // (until one was left out, too: a thread preempted at the start could see none)
        while NIODeadline.now() - start < .milliseconds(2) || left == 0 {
            if throttle.admit(now: start) == nil { left += 1 }
        }
        logger.log(level: .warning, throttledBy: throttle, "after")
        #expect(left > 0)
        #expect(lines.withLockedValue { $0.last?.1?["suppressed"] } == "\(left)")
    }
}
