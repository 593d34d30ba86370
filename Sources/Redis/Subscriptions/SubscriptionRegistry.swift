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
        /// Finished (the client shut down): a new subscriber is refused.
        var closed = false
        /// Names Redis refused on a re-subscribe (an ACL: `NOPERM`), with the refusal. Their
        /// subscribers stay (nothing is dropped without a trace), ``retryRefused()`` subscribes
        /// them again, and a new subscriber of one is refused the same way.
        var refused: [Key: RedisServerError] = [:]
        /// Counts attaches and detaches: work for one connection stops once another replaced it.
        var generation: UInt64 = 0
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
    /// Throws ``RedisClientError/shutdown`` once the client shut down (its stream would never end),
    /// and Redis's refusal of a name it refused on the last re-subscribe.
    package func add(names: [String], kind: RedisSubscriptionKind, sink: Sink) throws -> (id: UInt64, confirmation: EventLoopFuture<Void>?) {
        let (id, sent, joined) = try self.state.withLockedValue { state -> (UInt64, (EventLoopFuture<Void>, [Key])?, [EventLoopFuture<Void>]) in
            guard !state.closed else { throw RedisClientError.shutdown }
            for name in names { if let refusal = state.refused[Key(kind: kind, name: name)] { throw refusal } }
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
                    state.refused[key] = nil
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
    ///
    /// Redis refuses a `SUBSCRIBE` as a whole when an ACL denies one of its names (`NOPERM`: a
    /// channel no longer allowed). The names of a re-subscribe refused so are then subscribed
    /// one at a time: those refused again are kept (``retryRefused()``) and told to `refused`,
    /// and the rest are subscribed. Otherwise one denied name failed every reconnect, and all
    /// Pub/Sub stopped. Other errors fail the attach, as before (the connection is closed and
    /// opened again).
    package func attach(
        _ sender: @escaping Sender, refused: @escaping @Sendable (RedisSubscriptionKind, [String], any Error) -> Void = { _, _, _ in }
    ) -> [EventLoopFuture<Void>] {
        // What a subscriber joining meanwhile waits for: the outcome, refusals sorted out
        // (completed outside the lock: a future failed already runs its callbacks at once).
        let (sent, generation) = self.state.withLockedValue { state -> ([(EventLoopFuture<Void>, EventLoopPromise<Void>, [Key])], UInt64) in
            state.sender = sender
            state.generation &+= 1
            var byKind: [RedisSubscriptionKind: [String]] = [:]
            for key in state.subscribers.keys { byKind[key.kind, default: []].append(key.name) }
            let sent = RedisSubscriptionKind.allCases.compactMap { kind -> (EventLoopFuture<Void>, EventLoopPromise<Void>, [Key])? in
                guard let names = byKind[kind], !names.isEmpty else { return nil }
                let future = sender(SubscriptionCommand(kind: kind, isSubscribe: true, names: names.sorted()))
                let promise = future.eventLoop.makePromise(of: Void.self)
                let keys = names.map { Key(kind: kind, name: $0) }
                for key in keys { state.confirming[key] = promise.futureResult }
                return (future, promise, keys)
            }
            return (sent, state.generation)
        }
        for (future, promise, keys) in sent {
            self.forget(promise.futureResult, of: keys)
            future.flatMap {
                // Accepted: a name refused before (the ACL allows it again) is no longer.
                self.state.withLockedValue { state in for key in keys { state.refused[key] = nil } }
                return future.eventLoop.makeSucceededVoidFuture()
            }.flatMapError { error in
                guard (error as? RedisServerError)?.isPermissionDenied == true else { return future.eventLoop.makeFailedFuture(error) }
                return self.subscribeOneByOne(keys, generation: generation, on: future.eventLoop, refused: refused)
            }.cascade(to: promise)
        }
        return sent.map { $0.1.futureResult }
    }

    /// Subscribes each of `keys` alone on the connection of `generation`; keeps those Redis
    /// refuses as refused (a subscriber joining one meanwhile is refused). Fails if the
    /// connection does, or was replaced.
    private func subscribeOneByOne(
        _ keys: [Key], generation: UInt64, on loop: any EventLoop, refused: @escaping @Sendable (RedisSubscriptionKind, [String], any Error) -> Void
    ) -> EventLoopFuture<Void> {
        let attempts = self.state.withLockedValue { state -> [(Key, EventLoopFuture<Void>, EventLoopPromise<Void>)]? in
            guard state.generation == generation, let sender = state.sender else { return nil }
            return keys.filter { !(state.subscribers[$0]?.isEmpty ?? true) }.map { key in
                let future = sender(SubscriptionCommand(kind: key.kind, isSubscribe: true, names: [key.name]))
                let promise = loop.makePromise(of: Void.self)
                state.confirming[key] = promise.futureResult
                return (key, future, promise)
            }
        }
        guard let attempts else {
            return loop.makeFailedFuture(RedisClientError(.connectionClosed, detail: "the subscriber connection was replaced while it re-subscribed"))
        }
        for (key, future, promise) in attempts {
            self.forget(promise.futureResult, of: [key])
            future.whenComplete { result in
                // Recorded before the joiners waiting on the name are told.
                self.state.withLockedValue { state in
                    switch result {
                    case .success: state.refused[key] = nil
                    case .failure(let error):
                        if let refusal = error as? RedisServerError, refusal.isPermissionDenied, !(state.subscribers[key]?.isEmpty ?? true) {
                            state.refused[key] = refusal
                        }
                    }
                }
                promise.completeWith(result)
            }
        }
        let outcomes = attempts.map { key, _, promise in
            promise.futureResult.map { (key, nil as RedisServerError?) }.flatMapError { error in
                guard let refusal = error as? RedisServerError, refusal.isPermissionDenied else { return loop.makeFailedFuture(error) }
                return loop.makeSucceededFuture((key, refusal))
            }
        }
        return EventLoopFuture.whenAllSucceed(outcomes, on: loop).map { outcomes in
            let denied = outcomes.compactMap { key, error in error.map { (key, $0) } }
            for kind in RedisSubscriptionKind.allCases {
                let names = denied.filter { $0.0.kind == kind }
                if let first = names.first { refused(kind, names.map(\.0.name).sorted(), first.1) }
            }
        }
    }

    /// While the caller's connection is up (until the task is cancelled): every `interval`,
    /// ``retryRefused()``; `subscribed` is told the names subscribed again.
    package func retryRefused(every interval: TimeAmount, subscribed: @escaping @Sendable ([Key]) -> Void = { _ in }) -> Task<Void, Never> {
        let interval = Duration.nanoseconds(max(interval.nanoseconds, 1_000_000))
        return Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                guard !Task.isCancelled, self.hasRefused else { continue }
                let keys = await self.retryRefused()
                if !keys.isEmpty, !Task.isCancelled { subscribed(keys) }
            }
        }
    }

    /// Whether some names are refused (see ``retryRefused()``).
    package var hasRefused: Bool { self.state.withLockedValue { !$0.refused.isEmpty } }

    /// Subscribes again, one at a time, the names Redis refused (an ACL may allow them now);
    /// those still refused stay so. Returns the names subscribed now.
    package func retryRefused() async -> [Key] {
        let (attempts, generation) = self.state.withLockedValue { state -> ([(Key, EventLoopFuture<Void>)], UInt64) in
            guard let sender = state.sender else { return ([], state.generation) }
            let attempts = state.refused.keys.sorted { $0.name < $1.name }.map { key in
                (key, sender(SubscriptionCommand(kind: key.kind, isSubscribe: true, names: [key.name])))
            }
            return (attempts, state.generation)
        }
        var subscribed: [Key] = []
        for (key, future) in attempts {
            do {
                try await future.get()
                self.state.withLockedValue { _ = $0.refused.removeValue(forKey: key) }
                subscribed.append(key)
            } catch let refusal as RedisServerError where refusal.isPermissionDenied {
                self.state.withLockedValue { state in if state.refused[key] != nil { state.refused[key] = refusal } }
            } catch {
                break
            }
        }
        // The connection closed meanwhile: nothing to announce (the next one re-subscribes all).
        return self.state.withLockedValue { $0.generation == generation && $0.sender != nil } ? subscribed : []
    }

    /// Detaches the connection (it closed); subscriptions stay recorded for the next ``attach(_:)``.
    package func detach() {
        self.state.withLockedValue {
            $0.generation &+= 1
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
            state.closed = true
            state.subscribers = [:]
            state.sender = nil
            return all
        }
        for case .stream(let continuation, _) in sinks { continuation.finish() }
    }
}
