import Foundation
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A child process of the tests (`redis-server`, `redis-cli`, `openssl`), started with
/// `posix_spawn` so that it inherits no descriptor but its standard ones.
///
/// Foundation's `Process.run()` on Linux lists the open descriptors to close in the child, then
/// spawns it: a descriptor another thread opened in between (NIO's sockets are not
/// close-on-exec on Linux; nor were `Process`'s own socket pair, by which it sees its child
/// exit, and `Pipe`s) was inherited. A `redis-server` started that way held a test's socket open
/// after the test closed it, or another child's socket pair, so that child's exit was seen only
/// once the server was gone too, and the cooperative thread waiting for it was blocked as long
/// (a probe: a `true` waited for as long as a `sleep 3` started beside it). Here the child closes
/// every descriptor from 3 up at its start (`posix_spawn_file_actions_addclosefrom_np`), so
/// nothing opened at any time in this process leaks into it.
package final class ChildProcess: Sendable {
    package struct Failure: Error, CustomStringConvertible {
        package var description: String
    }

    /// The child's process id.
    package let pid: pid_t
    /// The wait status once the child is reaped (``lostStatus`` when someone else reaped it).
    private let status = NIOLockedValueBox<Int32?>(nil)
    /// Not a wait status: the exit was not ours to see (`ECHILD`).
    private static let lostStatus: Int32 = 0x7f

    private init(pid: pid_t) { self.pid = pid }

    /// Starts `executable` with `arguments`, in `directory` if given, its standard input from
    /// `/dev/null`, and its output (standard output and error) into the returned pipe with
    /// `captureOutput`, else to `/dev/null`. The child runs in a process group of its own.
    package static func spawn(
        _ executable: String, _ arguments: [String], directory: String? = nil, captureOutput: Bool = false
    ) throws -> (process: ChildProcess, output: FileHandle?) {
        #if os(Linux)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP))

        guard let closeFrom = Self.addCloseFrom else {
            throw Failure(description: "posix_spawn_file_actions_addclosefrom_np is missing (glibc 2.34 or later needed)")
        }
        if let directory {
            guard let chdir = Self.addChdir else { throw Failure(description: "posix_spawn_file_actions_addchdir_np is missing") }
            _ = chdir(&actions, directory)
        }
        var fds: [Int32] = [-1, -1]
        if captureOutput {
            guard pipe(&fds) == 0 else { throw Failure(description: "pipe failed: errno \(errno)") }
            // Close-on-exec for any other spawner (ours close from 3 up anyway); `dup2` clears
            // it on the child's 1 and 2.
            for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        }
        defer { if fds[1] >= 0 { close(fds[1]) } }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        if captureOutput {
            posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
            posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        } else {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        }
        _ = closeFrom(&actions, 3)

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid = pid_t()
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        guard result == 0 else {
            if fds[0] >= 0 { close(fds[0]) }
            throw Failure(description: "posix_spawn \(executable) failed: errno \(result)")
        }
        let output = captureOutput ? FileHandle(fileDescriptor: fds[0], closeOnDealloc: true) : nil
        return (ChildProcess(pid: pid), output)
        #else
        // Darwin would need POSIX_SPAWN_CLOEXEC_DEFAULT instead (not built here).
        throw Failure(description: "test children are started on Linux only")
        #endif
    }

    #if os(Linux)
    // GNU extensions of glibc, not visible to Swift's Glibc module: looked up at run time.
    private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    private typealias AddChdir = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32
    private static let addCloseFrom: AddCloseFrom? = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np").map {
        unsafeBitCast($0, to: AddCloseFrom.self)
    }
    private static let addChdir: AddChdir? = dlsym(nil, "posix_spawn_file_actions_addchdir_np").map {
        unsafeBitCast($0, to: AddChdir.self)
    }
    #endif

    /// Whether the child has not exited yet.
    package var isRunning: Bool {
        self.status.withLockedValue { status in
            if status != nil { return false }
            var raw: Int32 = 0
            let reaped = waitpid(self.pid, &raw, WNOHANG)
            if reaped == self.pid || (reaped == -1 && errno == ECHILD) {
                status = reaped == self.pid ? raw : Self.lostStatus
                return false
            }
            return true
        }
    }

    /// Sends `signal` to the child, unless it was reaped already (its id may be another
    /// process's by now).
    package func send(_ signal: Int32) {
        self.status.withLockedValue { status in
            if status == nil { _ = kill(self.pid, signal) }
        }
    }

    /// Waits until the child exits; returns its exit code (128 + the signal when a signal
    /// ended it; -1 when its exit was not ours to see). Holds the lock meanwhile: the other
    /// calls wait for the exit too (the callers kill the child first, or wait for it anyway).
    @discardableResult
    package func waitUntilExit() -> Int32 {
        let raw = self.status.withLockedValue { status -> Int32 in
            if let status { return status }
            var raw: Int32 = 0
            var reaped: pid_t
            repeat { reaped = waitpid(self.pid, &raw, 0) } while reaped == -1 && errno == EINTR
            status = reaped == self.pid ? raw : Self.lostStatus
            return status!
        }
        if raw == Self.lostStatus { return -1 }
        let signal = raw & 0x7f
        return signal == 0 ? (raw >> 8) & 0xff : 128 + signal
    }

    /// Whether children can be started here (`posix_spawn_file_actions_addclosefrom_np`, glibc
    /// 2.34 or later); the suites that need them are skipped otherwise.
    package static var isSupported: Bool {
        #if os(Linux)
        addCloseFrom != nil
        #else
        false
        #endif
    }
}
