import NIOConcurrencyHelpers
import NIOCore

/// Pauses reading from the subscriber connections while the application cannot take more
/// messages (the gateway: while its fan-out backlog is over its limit), except for the replies
/// their own commands are owed. Messages then wait in the kernel and in Redis, whose `client-output-buffer-limit pubsub` ends a connection that
/// falls too far behind; the client reconnects and subscribes again (and the gateway reads what
/// it may have missed from history).
package final class SubscriberReadGate: Sendable {
    private struct State {
        var shouldPause: (@Sendable () -> Bool)?
        var pauses = 0
    }

    private let state = NIOLockedValueBox(State())

    package init() {}

    /// Reading pauses while `shouldPause` returns true, as of the last ``apply(to:)``.
    package func pause(while shouldPause: @escaping @Sendable () -> Bool) {
        state.withLockedValue { $0.shouldPause = shouldPause }
    }

    /// Whether reading is to pause now (a subscriber's health `PING` waits meanwhile).
    package var isPausing: Bool { state.withLockedValue { $0.shouldPause }?() ?? false }

    /// Times a subscriber connection stopped reading.
    package var pauses: Int { state.withLockedValue { $0.pauses } }

    /// Reads the condition on `connection`'s event loop (so the last call there sees the last
    /// change) and holds its reads or lets them go on (``RedisConnection/setReadsPaused(_:)``:
    /// replies owed to its own commands are read all the same).
    package func apply(to connection: RedisConnection) {
        guard let shouldPause = state.withLockedValue({ $0.shouldPause }) else { return }
        let channel = connection.channel
        channel.eventLoop.execute {
            let pause = shouldPause()
            connection.setReadsPaused(pause).whenSuccess { changed in
                if changed && pause { self.state.withLockedValue { $0.pauses += 1 } }
            }
        }
    }
}
