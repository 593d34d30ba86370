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
/// the same user, so a consumer that keeps the latest state applies only newer generations.
/// Compare the generations of the events that change that state only (`user-online` and
/// `user-offline`: a `subscribed` in between must not make a retried `user-online` look
/// superseded), and record a generation once its work succeeded (recorded first, a failed
/// `user-online` would be skipped at its retry). In a service with several replicas, keep the
/// generation with the state and update both in one conditional write (`… WHERE gen < $1`).
/// A ``LifecycleEventType/presenceReset`` (Redis lost its data, or the very first event) says
/// the sessions before it ended without events: forget the state below its generation and read
/// presence again (`GET /api/users/{user}/presence`).
///
/// ```swift
/// let events = LifecycleEventConsumer(client: client, group: "presence")
/// let applied = Mutex<[String: UInt64]>([:])  // user → generation of the last online/offline applied
/// try await events.run { event in
///     guard event.type == .userOnline || event.type == .userOffline,
///         let user = event.user, let generation = event.generation
///     else { return }
///     // An older event handled again: already superseded.
///     guard generation > applied.withLock({ $0[user, default: 0] }) else { return }
///     try await presenceStore.set(user, online: event.type == .userOnline)  // throws: retried
///     applied.withLock { $0[user] = max($0[user, default: 0], generation) }
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
