import NIOConcurrencyHelpers
import NIOCore

/// A stream of messages published to one or more channels, patterns or shard channels.
///
/// **Buffering policy: drop-oldest.** Every subscription has its own bounded buffer of `bufferSize`
/// messages (``RedisConfiguration/subscriptionBufferSize`` by default). When a consumer falls behind and
/// the buffer is full, the *oldest* buffered message is discarded to make room for the new one and
/// ``droppedMessageCount`` is incremented, so a slow consumer can never make the client's memory grow
/// without bound nor stall delivery to other subscribers. Monitor ``droppedMessageCount`` to detect it.
///
/// Subscriptions are reference counted per name across the whole ``RedisClient``: the server-side
/// `UNSUBSCRIBE` is sent only when the last local subscriber of a name leaves. A subscription ends when
/// ``unsubscribe()`` is called, when the task iterating it is cancelled, or when it is deallocated.
/// It survives reconnects: the client re-subscribes automatically after reconnecting (messages published
/// while disconnected are lost, as with any Redis pub/sub).
public final class RedisSubscription: AsyncSequence, Sendable {
    public typealias Element = RedisPubSubMessage

    /// The subscribed channels / patterns / shard channels.
    public let names: [String]
    /// What `names` are.
    public let kind: RedisSubscriptionKind
    private let stream: AsyncStream<RedisPubSubMessage>
    private let continuation: AsyncStream<RedisPubSubMessage>.Continuation
    private let dropped: NIOLockedValueBox<Int>
    private let id: UInt64
    private let registry: SubscriptionRegistry

    init(
        names: [String],
        kind: RedisSubscriptionKind,
        stream: AsyncStream<RedisPubSubMessage>,
        continuation: AsyncStream<RedisPubSubMessage>.Continuation,
        dropped: NIOLockedValueBox<Int>,
        id: UInt64,
        registry: SubscriptionRegistry
    ) {
        self.names = names
        self.kind = kind
        self.stream = stream
        self.continuation = continuation
        self.dropped = dropped
        self.id = id
        self.registry = registry
        continuation.onTermination = { [registry] _ in
            registry.remove(id: id, names: names, kind: kind)
        }
    }

    deinit {
        self.continuation.finish()
    }

    /// Number of messages discarded because the buffer was full.
    public var droppedMessageCount: Int { self.dropped.withLockedValue { $0 } }

    /// Ends the subscription: iteration finishes after buffered messages and the server-side unsubscribe is
    /// sent if no other local subscriber uses the same names. Completes once the server confirmed
    /// (or immediately when disconnected). Calling it twice is harmless.
    public func unsubscribe() async {
        let confirmation = self.registry.remove(id: self.id, names: self.names, kind: self.kind)
        self.continuation.finish()
        try? await confirmation?.get()
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: AsyncStream<RedisPubSubMessage>.AsyncIterator
        /// Keeps the subscription alive while it is being iterated.
        let owner: RedisSubscription

        public mutating func next() async -> RedisPubSubMessage? {
            await self.base.next()
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: self.stream.makeAsyncIterator(), owner: self)
    }
}

/// A callback-based subscription (see ``RedisClient/subscribe(to:kind:handler:)``).
///
/// The handler runs on the subscriber connection's event loop for every message, with no buffering and
/// no extra hop; it must not block. Call ``unsubscribe()`` to stop delivery.
public final class RedisCallbackSubscription: Sendable {
    public let names: [String]
    public let kind: RedisSubscriptionKind
    private let id: UInt64
    private let registry: SubscriptionRegistry
    private let active = NIOLockedValueBox(true)

    init(names: [String], kind: RedisSubscriptionKind, id: UInt64, registry: SubscriptionRegistry) {
        self.names = names
        self.kind = kind
        self.id = id
        self.registry = registry
    }

    /// Stops delivery; sends the server-side unsubscribe if no other local subscriber uses the names.
    /// Completes once the server confirmed (or immediately when disconnected). Calling it twice is harmless.
    public func unsubscribe() async {
        let wasActive = self.active.withLockedValue { active in
            defer { active = false }
            return active
        }
        guard wasActive else { return }
        try? await self.registry.remove(id: self.id, names: self.names, kind: self.kind)?.get()
    }
}
