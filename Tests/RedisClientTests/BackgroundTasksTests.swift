import Logging
import NIOConcurrencyHelpers
import Testing

@testable import Redis

/// A client's own tasks end at shutdown, before the caller's event loops stop.
@Suite struct BackgroundTasksTests {
    let logger = Logger(label: "test")

    @Test func closeCancelsWhatRunsAndWaitsForItToEnd() async {
        let tasks = BackgroundTasks()
        let ended = NIOLockedValueBox(0)
        for _ in 0..<3 {
            #expect(
                tasks.run {
                    try? await Task.sleep(for: .seconds(60))
                    ended.withLockedValue { $0 += 1 }
                })
        }
        #expect(tasks.count == 3)
        let left = await tasks.close(within: .seconds(30), logger: logger)
        #expect(left == 0)
        #expect(tasks.count == 0)
        #expect(ended.withLockedValue { $0 } == 3, "each body ran to its end before close returned")
    }

    @Test func nothingStartsOnceClosed() async {
        let tasks = BackgroundTasks()
        await tasks.close(within: .seconds(1), logger: logger)
        let ran = NIOLockedValueBox(false)
        #expect(!tasks.run { ran.withLockedValue { $0 = true } })
        try? await Task.sleep(for: .milliseconds(20))
        #expect(!ran.withLockedValue { $0 })
    }

    @Test func aTaskThatEndedIsForgotten() async throws {
        let tasks = BackgroundTasks()
        tasks.run {}
        while tasks.count > 0 { try await Task.sleep(for: .milliseconds(1)) }
        #expect(tasks.count == 0)
    }

    @Test func aBodyThatIgnoresCancellationIsWaitedForUpToTheBound() async {
        let tasks = BackgroundTasks()
        let release = NIOLockedValueBox(false)
        tasks.run {
            while !release.withLockedValue({ $0 }) { await Task.yield() }
        }
        let left = await tasks.close(within: .milliseconds(50), logger: logger)
        #expect(left == 1, "still running past the bound: reported, not waited for forever")
        release.withLockedValue { $0 = true }
    }
}
