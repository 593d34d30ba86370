import Logging
import Redis
import SwitchboardWire

/// Reads the gateway's presence and lifecycle events (`events.stream`, `switchboard:events` by
/// default) as one consumer of a consumer group, typed: each entry is decoded into a
/// ``LifecycleEvent`` and handed to the handler.
///
/// It runs on ``StreamConsumer``, so the group logic is the same as for `/app` streams: the
/// group is created at `0` when missing, an event is acknowledged (`XACK`) only after the
/// handler returned, a dead replica's events are claimed (`XAUTOCLAIM`), and an event that keeps
/// failing moves to the dead-letter stream. An entry that is not a lifecycle event (no known
/// `type`) is acknowledged and skipped. Use ``LifecycleEvent/id`` as the idempotency key: an
/// event is handled twice only when a replica dies (or loses Redis for `claimMinIdle`) after
/// its handler started, or when one handler call runs longer than `claimMinIdle`.
///
/// A user's events carry a ``LifecycleEvent/generation`` that increases with each of them: an
/// event handled again (a retry, or claimed from a dead replica) can come after a later one of
/// the same user, so a consumer that keeps the latest state applies only newer generations
/// (a new counter, after a day without events of the user or after Redis lost its data,
/// starts at Redis's time in µs, above the old one):
///
/// ```swift
/// let events = LifecycleEventConsumer(client: client, group: "presence")
/// let applied = Mutex<[String: UInt64]>([:])  // user → the last generation applied
/// try await events.run { event in
///     guard let user = event.user, let generation = event.generation else { return }
///     let newer = applied.withLock { last in
///         guard generation > last[user, default: 0] else { return false }
///         last[user] = generation
///         return true
///     }
///     guard newer else { return }  // an older event handled again: already superseded
///     switch event.type {
///     case .userOnline: print("\(user) is online")
///     case .userOffline: print("\(user) is offline (\(event.reason?.rawValue ?? ""))")
///     default: break
///     }
/// }
/// ```
public struct LifecycleEventConsumer: Sendable {
    /// Handles one event. Returning acknowledges it; throwing leaves it pending for a retry.
    public typealias Handler = @Sendable (LifecycleEvent) async throws -> Void

    /// The group consumer underneath (statistics, stop).
    public let consumer: StreamConsumer

    /// - Parameters:
    ///   - configuration: its `stream` should be the gateway's `events.stream`.
    public init(client: RedisClient, configuration: StreamConsumerConfiguration, logger: Logger = Logger(label: "SwitchboardKit.LifecycleEventConsumer")) {
        self.consumer = StreamConsumer(client: client, configuration: configuration, logger: logger)
    }

    /// A consumer of `switchboard:events` in `group`, with the default tuning.
    public init(client: RedisClient, group: String, stream: String = "switchboard:events") {
        self.init(client: client, configuration: StreamConsumerConfiguration(stream: stream, group: group))
    }

    /// Reads and handles events until ``stop()`` (or an unrecoverable error).
    public func run(_ handler: @escaping Handler) async throws {
        try await consumer.run { message in
            guard let event = LifecycleEvent(RedisStreamEntry(id: message.id, fields: message.fields)) else { return }
            try await handler(event)
        }
    }

    /// Stops ``run(_:)`` after the event in hand.
    public func stop() { consumer.stop() }
}
