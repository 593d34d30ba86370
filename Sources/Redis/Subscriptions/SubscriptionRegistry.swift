import NIOConcurrencyHelpers
import NIOCore

/// Reference-counted bookkeeping of pub/sub subscriptions, shared by every subscriber of a ``RedisClient``.
///
/// - Subscribing to a name that already has a local subscriber sends nothing; the first subscriber of a
///   name sends `SUBSCRIBE` (or `PSUBSCRIBE` / `SSUBSCRIBE`).
/// - Removing a subscriber sends `UNSUBSCRIBE` only for names that have no subscriber left.
/// - While no connection is attached, subscriptions are only recorded; ``attach(_:)`` (called after every
///   (re)connect) subscribes to every recorded name.
///
/// Commands are sent while holding the lock so that the wire order always matches the bookkeeping order.
package final class SubscriptionRegistry: Sendable {
    /// Sends a subscription command; `nil` means "not connected".
    package typealias Sender = @Sendable (SubscriptionCommand) -> EventLoopFuture<Void>

    package struct Key: Hashable, Sendable {
        package var kind: RedisSubscriptionKind
        package var name: String
    }

    package enum Sink: Sendable {
        case stream(AsyncStream<RedisPubSubMessage>.Continuation, NIOLockedValueBox<Int>)
        case callback(@Sendable (RedisPubSubMessage) -> Void)

        func deliver(_ message: RedisPubSubMessage) {
            switch self {
            case .stream(let continuation, let dropped):
                if case .dropped = continuation.yield(message) {
                    dropped.withLockedValue { $0 += 1 }
                }
            case .callback(let handler):
                handler(message)
            }
        }
    }

    struct State {
        var subscribers: [Key: [UInt64: Sink]] = [:]
        var nextID: UInt64 = 0
        var sender: Sender?
        /// The confirmation of each name's subscribe command still in flight: a subscriber
        /// joining the name meanwhile waits for it too (it is not subscribed before).
        var confirming: [Key: EventLoopFuture<Void>] = [:]
    }

    private let state = NIOLockedValueBox(State())

    package init() {}

    /// Names with at least one local subscriber.
    package var activeKeys: Set<Key> {
        self.state.withLockedValue { Set($0.subscribers.keys) }
    }

    /// Number of local subscribers of `name`.
    package func subscriberCount(kind: RedisSubscriptionKind, name: String) -> Int {
        self.state.withLockedValue { $0.subscribers[Key(kind: kind, name: name)]?.count ?? 0 }
    }

    /// Registers `sink` for `names`. Returns the subscriber ID and, if a command had to be sent on an
    /// attached connection or one subscribing a name is still unconfirmed, the future of their
    /// confirmation (a subscriber joining a name whose `SUBSCRIBE` is in flight was told at
    /// once, before the server subscribed it, and missed what was published meanwhile).
    package func add(names: [String], kind: RedisSubscriptionKind, sink: Sink) -> (id: UInt64, confirmation: EventLoopFuture<Void>?) {
        let (id, sent, joined) = self.state.withLockedValue { state -> (UInt64, (EventLoopFuture<Void>, [Key])?, [EventLoopFuture<Void>]) in
            let id = state.nextID
            state.nextID += 1
            var newNames: [String] = []
            var joined: [EventLoopFuture<Void>] = []
            for name in names {
                let key = Key(kind: kind, name: name)
                if state.subscribers[key, default: [:]].isEmpty {
                    newNames.append(name)
                } else if let pending = state.confirming[key], !joined.contains(where: { $0 === pending }) {
                    joined.append(pending)
                }
                state.subscribers[key, default: [:]][id] = sink
            }
            guard !newNames.isEmpty, let sender = state.sender else { return (id, nil, joined) }
            let future = sender(SubscriptionCommand(kind: kind, isSubscribe: true, names: newNames))
            let keys = newNames.map { Key(kind: kind, name: $0) }
            for key in keys { state.confirming[key] = future }
            return (id, (future, keys), joined)
        }
        if let (future, keys) = sent { self.forget(future, of: keys) }
        let all = joined + (sent.map { [$0.0] } ?? [])
        guard let first = all.first else { return (id, nil) }
        return (id, all.count == 1 ? first : EventLoopFuture.andAllSucceed(all, on: first.eventLoop))
    }

    /// Once `future` completes, its names are no longer being confirmed (outside the lock: a
    /// future completed already runs the callback at once).
    private func forget(_ future: EventLoopFuture<Void>, of keys: [Key]) {
        future.whenComplete { _ in
            self.state.withLockedValue { state in
                for key in keys where state.confirming[key] === future { state.confirming[key] = nil }
            }
        }
    }

    /// Removes subscriber `id` from `names`; sends an unsubscribe for names nobody listens to any more.
    @discardableResult
    package func remove(id: UInt64, names: [String], kind: RedisSubscriptionKind) -> EventLoopFuture<Void>? {
        self.state.withLockedValue { state in
            var unusedNames: [String] = []
            for name in names {
                let key = Key(kind: kind, name: name)
                guard var sinks = state.subscribers[key], sinks.removeValue(forKey: id) != nil else { continue }
                if sinks.isEmpty {
                    state.subscribers[key] = nil
                    state.confirming[key] = nil
                    unusedNames.append(name)
                } else {
                    state.subscribers[key] = sinks
                }
            }
            guard !unusedNames.isEmpty, let sender = state.sender else { return nil }
            return sender(SubscriptionCommand(kind: kind, isSubscribe: false, names: unusedNames))
        }
    }

    /// Attaches a freshly connected subscriber connection and re-subscribes everything recorded.
    /// Returns the confirmations to await.
    package func attach(_ sender: @escaping Sender) -> [EventLoopFuture<Void>] {
        let sent = self.state.withLockedValue { state -> [(EventLoopFuture<Void>, [Key])] in
            state.sender = sender
            var byKind: [RedisSubscriptionKind: [String]] = [:]
            for key in state.subscribers.keys { byKind[key.kind, default: []].append(key.name) }
            return RedisSubscriptionKind.allCases.compactMap { kind in
                guard let names = byKind[kind], !names.isEmpty else { return nil }
                let future = sender(SubscriptionCommand(kind: kind, isSubscribe: true, names: names.sorted()))
                let keys = names.map { Key(kind: kind, name: $0) }
                for key in keys { state.confirming[key] = future }
                return (future, keys)
            }
        }
        for (future, keys) in sent { self.forget(future, of: keys) }
        return sent.map(\.0)
    }

    /// Detaches the connection (it closed); subscriptions stay recorded for the next ``attach(_:)``.
    package func detach() {
        self.state.withLockedValue {
            $0.sender = nil
            $0.confirming = [:]
        }
    }

    /// Routes a received message to every local subscriber of its channel/pattern.
    package func deliver(_ message: RedisPubSubMessage) {
        let key = Key(kind: message.kind, name: message.subscriptionName)
        let sinks = self.state.withLockedValue { $0.subscribers[key].map { Array($0.values) } ?? [] }
        for sink in sinks { sink.deliver(message) }
    }

    /// Finishes every stream subscription (client shutdown).
    package func finishAll() {
        let sinks = self.state.withLockedValue { state -> [Sink] in
            let all = state.subscribers.values.flatMap(\.values)
            state.subscribers = [:]
            state.sender = nil
            return all
        }
        for case .stream(let continuation, _) in sinks { continuation.finish() }
    }
}
