import NIOCore
import NIOPosix

/// Counts the task phases of each event loop thread of a group, for ``FanoutHub/taskPhase``.
///
/// NIO reports a tick after every task phase (the tasks it runs between two polls for I/O),
/// on the loop's own thread; the count lives in a thread-local, so reading it is a
/// `pthread_getspecific` and counting costs no atomics. Pass one instance to the group
/// (`MultiThreadedEventLoopGroup(numberOfThreads:metricsDelegate:)`) and its ``read`` to the
/// hub.
final class TaskPhaseCounter: NIOEventLoopMetricsDelegate {
    private final class Count: @unchecked Sendable {
        var phases: UInt64 = 0
    }

    private let count = ThreadSpecificVariable<Count>()

    func processedTick(info: NIOEventLoopTickInfo) {
        if let count = count.currentValue {
            count.phases &+= 1
        } else {
            count.currentValue = Count()
        }
    }

    /// The task phases the calling thread has finished (0 on a thread that is no loop of the
    /// group).
    var phases: UInt64 { count.currentValue?.phases ?? 0 }

    /// ``phases`` as the hub reads it.
    var read: @Sendable () -> UInt64 { { [self] in self.phases } }
}
