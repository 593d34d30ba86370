import NIOCore
import SwitchboardWire

/// How published messages reach subscribers: the in-memory engine delivers to this
/// instance's hub; the Redis engine (see the `[scale]` work) goes through Redis so every
/// instance's hub gets them.
package protocol BrokerEngine: Sendable {
    /// Publishes `message` to every subscriber of its destination.
    ///
    /// The future succeeds once the message is delivered (in-memory) or accepted by the
    /// shared broker; only then may a `RECEIPT` go out. It fails with an error saying why
    /// the message could not be published.
    func publish(_ message: PublishedMessage, on eventLoop: any EventLoop) -> EventLoopFuture<Void>

    /// Publishes `message` as ``publish(_:on:)`` does unless a publish with the same
    /// `idempotencyKey` (a token: ``IdempotencyTokens``) to its destination was accepted within
    /// the last 10 minutes (on any instance, in Redis mode): then nothing is published and the
    /// future gives false.
    func publish(_ message: PublishedMessage, idempotencyKey: String, on eventLoop: any EventLoop) -> EventLoopFuture<Bool>

    /// The destinations' history, when this engine keeps it in this process (see
    /// ``DestinationHistory``).
    var history: DestinationHistory? { get }

    /// Registers a subscription to `destination` when the destination keeps history: calls
    /// `register` (which adds it to its loop's shard) so that every message is either in the
    /// replay or delivered live after it, and reads what to replay from `start` (nil: nothing,
    /// only where history stands). Returns nil, without calling `register`, when the
    /// destination keeps no history.
    func registerWithHistory(
        _ destination: String, from start: HistoryStart?, on eventLoop: any EventLoop, register: () -> Void
    ) -> HistoryRegistration?

    /// A short name for logs and `/health` (`memory`, `redis`).
    var name: String { get }

    /// True when ``publish(_:on:)`` has delivered by the time it returns, so callers may
    /// answer at once instead of waiting on the future.
    var publishesSynchronously: Bool { get }

    /// For an engine that subscribes upstream on local interest: a future that completes
    /// once the subscription for `pattern` is live, so a `SUBSCRIBE` receipt means messages
    /// published from now on arrive. Nil when it is live already.
    func subscriptionReady(_ pattern: DestinationPattern, on eventLoop: any EventLoop) -> EventLoopFuture<Void>?
}

/// How a subscription to a destination that keeps history was registered.
package enum HistoryRegistration: Sendable {
    /// Registered, and history read in the same step (the embedded broker).
    case ready(HistoryReplay)
    /// Registered; the replay follows. `through` is the position it was registered at, when
    /// known already: live copies up to it are the replay's (or predate the subscription).
    case pending(through: StreamPosition?, EventLoopFuture<HistoryReplay>)
}

extension BrokerEngine {
    package var history: DestinationHistory? { nil }

    package func registerWithHistory(
        _ destination: String, from start: HistoryStart?, on eventLoop: any EventLoop, register: () -> Void
    ) -> HistoryRegistration? {
        guard let history, history.covers(destination) else { return nil }
        return .ready(history.resume(destination, from: start ?? .last(0), register: register))
    }

    package func subscriptionReady(_ pattern: DestinationPattern, on eventLoop: any EventLoop) -> EventLoopFuture<Void>? { nil }
}

/// The embedded broker: delivers to local subscribers directly. It is the default when no
/// Redis is configured.
///
/// With a ``DestinationHistory``, each message of a destination that keeps history is numbered,
/// kept and delivered in one step, so every subscriber sees one order per destination.
package final class InMemoryEngine: BrokerEngine {
    package let hub: FanoutHub
    package let history: DestinationHistory?
    package var name: String { "memory" }
    package var publishesSynchronously: Bool { true }

    /// The idempotency keys of publishes (``publish(_:idempotencyKey:on:)``).
    package let idempotencyKeys: IdempotencyKeys

    package init(hub: FanoutHub, history: DestinationHistory? = nil, idempotencyKeys: IdempotencyKeys = IdempotencyKeys()) {
        self.hub = hub
        self.history = history
        self.idempotencyKeys = idempotencyKeys
    }

    package func publish(_ message: PublishedMessage, idempotencyKey: String, on eventLoop: any EventLoop) -> EventLoopFuture<Bool> {
        guard idempotencyKeys.claim(idempotencyKey, destination: message.destination) else { return eventLoop.makeSucceededFuture(false) }
        // Delivered (or recorded and handed to the loops) by the time it returns.
        _ = publish(message, on: eventLoop)
        return eventLoop.makeSucceededFuture(true)
    }

    package func publish(_ message: PublishedMessage, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        if let history, history.covers(message.destination) {
            history.record(message) { hub.deliver($0) }
        } else {
            hub.deliver(message)
        }
        return eventLoop.makeSucceededVoidFuture()
    }
}
