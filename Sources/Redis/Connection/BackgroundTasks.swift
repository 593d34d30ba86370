import Logging
import NIOConcurrencyHelpers

/// Tasks a client (or the gateway's Redis engine) starts on its own, ended by
/// ``close(within:logger:)`` before the caller's event loops stop: a task still running after
/// them would complete a future, or wait for one, on a loop that is gone ("Cannot schedule
/// tasks on an EventLoop that has already shut down").
package final class BackgroundTasks: Sendable {
    private struct State {
        var next: UInt64 = 0
        var running: [UInt64: Task<Void, Never>] = [:]
        var closed = false
    }

    private let state = NIOLockedValueBox(State())

    package init() {}

    /// Runs `body` in a task kept until it ends; `false` (nothing started) once closed.
    @discardableResult
    package func run(_ body: @escaping @Sendable () async -> Void) -> Bool {
        self.state.withLockedValue { state in
            guard !state.closed else { return false }
            let id = state.next
            state.next += 1
            // Inserted under the lock before the task can take it to remove itself.
            state.running[id] = Task {
                await body()
                self.state.withLockedValue { _ = $0.running.removeValue(forKey: id) }
            }
            return true
        }
    }

    /// How many tasks are still running.
    package var count: Int { self.state.withLockedValue { $0.running.count } }

    /// Starts nothing more, cancels what runs and waits up to `within` for it to end (each body
    /// ends on cancellation or when its Redis wait fails, the client being shut down first).
    /// Returns how many were still running then (logged).
    @discardableResult
    package func close(within bound: Duration, logger: Logger) async -> Int {
        let tasks = self.state.withLockedValue { state in
            state.closed = true
            return Array(state.running.values)
        }
        for task in tasks { task.cancel() }
        let clock = ContinuousClock()
        let deadline = clock.now + bound
        while self.count > 0 && clock.now < deadline {
            do { try await Task.sleep(for: .milliseconds(5)) } catch { break }  // the shutdown itself cancelled
        }
        let left = self.count
        if left > 0 { logger.warning("redis background tasks still running at shutdown", metadata: ["tasks": "\(left)"]) }
        return left
    }
}
