import Foundation
import NIOConcurrencyHelpers

/// Starts the test process's child processes one at a time.
///
/// Foundation's `Process.run()` on Linux lists the open descriptors to close in the child, then
/// spawns it. A descriptor another thread opens in between without close-on-exec (the socket pair
/// by which `Process` sees its own child exit, a `Pipe`) is inherited by the child: a
/// `redis-server` started that way held another child's socket pair, so that child's exit was
/// seen (`waitUntilExit()`, `isRunning`) only once the server was gone too, and the thread
/// waiting for it (a test's `kill()`, a certificate's `openssl`) was blocked for that long.
/// A probe showed a `true` waited for as long as a `sleep 3` started beside it.
package enum ChildProcess {
    private static let lock = NIOLock()

    /// Runs `prepare` (where the caller makes its pipes) and then `process.run()`, while no other
    /// child is started. Returns what `prepare` returned.
    @discardableResult
    package static func run<Prepared>(_ process: Process, prepare: () throws -> Prepared = {}) throws -> Prepared {
        try self.lock.withLock {
            let prepared = try prepare()
            try process.run()
            return prepared
        }
    }
}
