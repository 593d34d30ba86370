import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import Redis
import SwitchboardCore
import SwitchboardRoutes
import SwitchboardWire
import Synchronization

/// The broker engine for several instances: publishes go through Redis Pub/Sub so every
/// instance's hub gets them.
///
/// - **Local first.** A publish is delivered to this instance's subscribers directly, then
///   `PUBLISH`ed (as a ``RedisEnvelope`` carrying this instance's id) for the others; an
///   instance ignores its own messages when they come back. Local delivery therefore goes on
///   while Redis is down, and the publisher is told the cross-instance part failed.
/// - **Interest-based.** The instance `SUBSCRIBE`s to a destination's channel only while it
///   has local subscribers for it (``InterestObserver``), and `PSUBSCRIBE`s a glob for each
///   wildcard pattern. A message arriving on a channel is delivered only to exact
///   subscriptions, one arriving through a pattern only to that pattern's subscriptions, so
///   nobody gets a message twice.
/// - **Presence notices.** While a local session watches a destination's joins and leaves
///   (`x-presence`), its routing destination `/~presence<destination>` has local interest: the
///   instance then `SUBSCRIBE`s to the destination's presence channel, where the lifecycle
///   functions publish each join and leave once (``PresenceNotice``).
/// - **Redis Cluster** (``GatewayRedis/cluster(_:)``): destinations use sharded Pub/Sub
///   (`SPUBLISH`/`SSUBSCRIBE` on `<prefix>{<destination>}:dest`, in the slot of the
///   destination's history keys), as do the instance channel and the canary. After a slot move
///   or a failover the client subscribes again on the new owner, and each destination of the
///   re-subscribed channels reads what it missed from history. Wildcard subscriptions are
///   refused (sharded Pub/Sub has no pattern form): ``wildcardRefusal``.
package final class RedisEngine: BrokerEngine, InterestObserver {
    package let redis: GatewayRedis
    let hub: FanoutHub
    package let naming: RedisChannelNaming
    let instanceID: String
    let messageIDs: MessageIDGenerator
    let logger: Logger
    let promiseLoop: any EventLoop

    /// Pub/Sub messages received, publishes that Redis refused, malformed envelopes.
    package let messagesIn = Atomic<Int>(0)
    package let publishFailures = Atomic<Int>(0)
    package let malformedMessages = Atomic<Int>(0)
    /// Inbound stream entries whose recording failed and was made again, and those given up
    /// (``RedisInboundRoutes``).
    package let inboundRecordRetries = Atomic<Int>(0)
    package let inboundEntriesGivenUp = Atomic<Int>(0)
    /// Inbound stream reads that failed (the reader reconnects), and entries skipped as recorded
    /// by another instance (behind the shared position and older than their `once` tokens).
    package let inboundReadFailures = Atomic<Int>(0)
    package let inboundEntriesRecordedElsewhere = Atomic<Int>(0)
    /// Inbound streams found ending before their reader's position (they went back: a restart
    /// from an older snapshot, a failover, the key deleted and added again): read on from their end.
    package let inboundStreamRewinds = Atomic<Int>(0)
    /// Times an inbound stream reader stopped reading while the fan-out backlog was over its limit.
    package let inboundStreamReadPauses = Atomic<Int>(0)
    /// Inbound messages (Pub/Sub and stream routes) dropped, by reason (``RedisInboundRoutes``).
    package let inboundDropped = InboundDrops()
    let publishTimer = Metrics.Timer(label: "switchboard_redis_command_duration_seconds", dimensions: [("command", "PUBLISH")])

    /// One Redis subscription (channel or glob) held for local interest.
    final class Interest: Sendable {
        let ready: EventLoopPromise<Void>
        /// The hub's activation of the destination (see ``InterestObserver``), carried by
        /// every copy delivered for it.
        let generation: UInt64
        let subscription = NIOLockedValueBox<RedisCallbackSubscription?>(nil)
        let cancelled = Atomic<Bool>(false)
        /// For a destination that keeps history: its order on this instance (see
        /// ``DestinationSequencer``). Messages are handed to the hub under this lock.
        let sequenced: NIOLockedValueBox<Sequenced>?

        struct Sequenced {
            var sequencer = DestinationSequencer()
            /// Registrations waiting for the destination's position.
            var waiters: [EventLoopPromise<StreamPosition>] = []
            /// Why the last read of the position failed, for the waiters that give up.
            var lastFailure: String?
            /// The subscription failed (Redis refused it) or the interest ended: registrations
            /// fail at once with this (they waited for a position that never comes).
            var failed: RouteError?
        }

        init(ready: EventLoopPromise<Void>, generation: UInt64 = 0, sequenced: Bool = false) {
            self.ready = ready
            self.generation = generation
            self.sequenced = sequenced ? NIOLockedValueBox(Sequenced()) : nil
        }
    }

    struct State {
        var exact: [String: Interest] = [:]
        var globs: [String: (patterns: Set<DestinationPattern>, interest: Interest)] = [:]
        var instanceSubscription: RedisCallbackSubscription?
    }

    let state = NIOLockedValueBox(State())
    /// The resume read of each destination in flight, which others join (see
    /// ``sharedResumeRead(_:after:covering:)``).
    let resumeReads = NIOLockedValueBox([String: SharedResumeRead]())
    /// Resume reads answered by a read another subscription started.
    let sharedReadsCounter = Metrics.Counter(label: "switchboard_history_resume_reads_shared_total")
    let clusterHealth = NIOLockedValueBox(ClusterHealth())
    /// Watches the cross-instance path (see ``DeliveryCanary``); nil when turned off.
    package let canary: DeliveryCanary?

    /// Which destinations keep history, and their windows; nil: none.
    package let history: DestinationHistory.Settings?
    /// How long a `SUBSCRIBE` to a destination that keeps history waits for Redis to be reachable
    /// (its position and replay are read there) before it fails; zero: it fails at once.
    let unreachableWait: TimeAmount
    /// `redis.appendfsync-always`: a Redis restart keeps history's positions (see ``HistoryFunctions``).
    let durableRedis: Bool
    /// Set by ``shutdown()``: nothing waits for Redis any more.
    let stopping = Atomic<Bool>(false)
    /// Reads scheduled to be tried again (``readRetrying(until:_:)``), waited for at shutdown.
    let retriesPending = Atomic<Int>(0)
    /// Tasks of the engine's own, ended at shutdown before the event loops stop.
    let tasks = BackgroundTasks()
    /// Messages given up for good in a history hole (trimmed or expired before repair).
    package let historySkipped = Atomic<Int>(0)
    /// History reads that repaired a hole (or checked after a reconnect).
    package let historyRepairs = Atomic<Int>(0)
    let skippedCounter = Metrics.Counter(label: "switchboard_history_skipped_messages_total")
    let repairCounter = Metrics.Counter(label: "switchboard_history_repairs_total")

    package var name: String { "redis" }
    package var publishesSynchronously: Bool { false }

    package init(
        redis: GatewayRedis, hub: FanoutHub, naming: RedisChannelNaming, instanceID: String, messageIDs: MessageIDGenerator,
        eventLoop: any EventLoop, logger: Logger, canary: (interval: TimeAmount, timeout: TimeAmount)? = nil,
        history: DestinationHistory.Settings? = nil, unreachableWait: TimeAmount = .seconds(5), durableRedis: Bool = false
    ) {
        self.durableRedis = durableRedis
        self.history = history
        self.unreachableWait = unreachableWait
        self.canary = canary.map { [tasks] in
            DeliveryCanary(
                redis: redis, naming: naming, instanceID: instanceID, interval: $0.interval, timeout: $0.timeout, loop: eventLoop, tasks: tasks,
                logger: logger)
        }
        self.redis = redis
        self.hub = hub
        self.naming = naming
        self.instanceID = instanceID
        self.messageIDs = messageIDs
        self.promiseLoop = eventLoop
        self.logger = logger
        hub.setInterestObserver(self)
        // While the fan-out backlog is over its limit the instance reads no more messages from
        // Redis: they wait there (up to its pubsub output-buffer limit, past which Redis drops
        // the connection and the resubscription reads the gap from history).
        redis.pauseSubscriberReading { [weak hub] in hub?.isBacklogged ?? false }
        hub.onBacklogChange { [redis] in redis.refreshSubscriberReading() }
        self.canary?.onRecovered.withLockedValue { $0 = { [weak self] in self?.repairAllDestinations() } }
    }

    /// Connects (in the background; reconnects by itself) and subscribes to this instance's
    /// channel, where messages addressed to one of its sessions arrive.
    package func start() async throws {
        // Before the client starts, so that its first connection loads them too.
        if history != nil { await redis.installFunctions(HistoryFunctions.self, named: "history", logger: logger) }
        redis.start()
        redis.onSubscriptionsRestored { [weak self] shardChannels in
            guard let self else { return }
            if let shardChannels {
                self.repairDestinations(shardChannels.compactMap { self.naming.destination(fromShardChannel: $0) })
            } else {
                self.subscriberReconnected()
            }
        }
        let sub = try await redis.subscribe(to: [instanceChannel(instanceID)], kind: redis.gatewayChannelKind) { [weak self] message in
            self?.onInstanceMessage(message)
        }
        state.withLockedValue { $0.instanceSubscription = sub }
        startClusterHealthChecks()
        try await canary?.start()
        warnUnlessNoEviction()
    }

    static let evictionWarning =
        "redis may evict keys under memory pressure: streams, consumer groups and histories would be lost silently; "
        + "set maxmemory-policy noeviction"

    /// Says so at start when Redis may evict keys (`maxmemory-policy` other than `noeviction`):
    /// under memory pressure it would drop streams, consumer groups and histories silently,
    /// messages already answered with a RECEIPT among them. Where `CONFIG` is refused (a managed
    /// Redis, an ACL), nothing is said.
    private func warnUnlessNoEviction() {
        let redis = self.redis
        let logger = self.logger
        tasks.run {
            for _ in 0..<50 where !Task.isCancelled {
                do {
                    let config = try await redis.send(CONFIGGET("maxmemory-policy")).get()
                    guard let policy = config.values["maxmemory-policy"] else { return }
                    if policy == "noeviction" {
                        logger.info("redis keeps every key under memory pressure", metadata: ["maxmemory-policy": "\(policy)"])
                    } else {
                        logger.warning(
                            "\(Self.evictionWarning)",
                            metadata: ["maxmemory-policy": "\(policy)"])
                    }
                    return
                } catch let error as RedisClientError where error == .notConnected {
                    try? await Task.sleep(for: .milliseconds(200))  // poll while the client connects
                } catch {
                    logger.debug("redis maxmemory-policy not checked", metadata: ["error": "\(error)"])
                    return
                }
            }
        }
    }

    /// Stops the canary and the checks, ends every wait for Redis (the subscriptions waiting
    /// are failed while the event loops still run), and closes the connections.
    package func shutdown() async {
        stopping.store(true, ordering: .sequentiallyConsistent)
        canary?.stop()
        stopClusterHealthChecks()
        let interests = state.withLockedValue { Array($0.exact.values) + $0.globs.values.map(\.interest) }
        for interest in interests {
            interest.cancelled.store(true, ordering: .sequentiallyConsistent)
            failWaiters(interest, RouteError(.abandoned, "the gateway is shutting down"))
        }
        await redis.shutdown()
        // A retry already scheduled runs once more (and fails: the client is shut down).
        let deadline = NIODeadline.now() + .seconds(1)
        while retriesPending.load(ordering: .sequentiallyConsistent) > 0 && NIODeadline.now() < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        await tasks.close(within: .seconds(3), logger: logger)
    }

    /// The ERROR message of a wildcard `SUBSCRIBE` on Redis Cluster.
    package static let wildcardRefusal =
        "wildcard subscriptions are not available on Redis Cluster: sharded Pub/Sub has no pattern form; subscribe to each destination"

    /// The channel of `destination`: `<prefix>dest:<d>`, or on a cluster the shard channel `<prefix>{<d>}:dest`.
    func channel(forDestination destination: String) -> String {
        redis.isCluster ? naming.shardChannel(forDestination: destination) : naming.channel(forDestination: destination)
    }

    func destination(fromChannel channel: String) -> String? {
        redis.isCluster ? naming.destination(fromShardChannel: channel) : naming.destination(fromChannel: channel)
    }

    func instanceChannel(_ instance: String) -> String {
        redis.isCluster ? naming.instanceShardChannel(instance) : naming.instanceChannel(instance)
    }

    /// `PUBLISH`, or `SPUBLISH` on a cluster (the channel's slot picks the primary).
    func publishCommand(_ channel: String, _ payload: ByteBuffer) -> EventLoopFuture<Int> {
        redis.isCluster
            ? redis.send(SPUBLISH(channel: channel, message: .bytes(payload))) : redis.send(PUBLISH(channel: channel, message: .bytes(payload)))
    }

    // MARK: Publishing

    package func publish(_ message: PublishedMessage, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        if keepsHistory(message.destination) {
            return record(message, once: nil).hop(to: eventLoop).map { _ in }
        }
        hub.deliver(message)
        let payload = RedisEnvelope.encode(message, origin: instanceID)
        let start = NIODeadline.now()
        let timer = publishTimer
        return publishCommand(channel(forDestination: message.destination), payload)
            .hop(to: eventLoop)
            .map { _ in timer.recordNanoseconds((NIODeadline.now() - start).nanoseconds) }
            .flatMapErrorThrowing { error in
                self.publishFailures.add(1, ordering: .relaxed)
                if RouteError.replyLost(error) {
                    // Sent, but no reply: Redis may have passed it to the other instances.
                    throw RouteError(
                        .outcomeUnknown,
                        "redis connection lost before the reply (\(error)); delivered to this instance's subscribers, the other instances' may or may not have it")
                }
                let why = error is RedisServerError ? "redis refused it" : "redis unavailable"
                throw RouteError(.redisUnavailable, "\(why) (\(error)); delivered to this instance's subscribers only")
            }
    }

    /// With the destination's history: recorded and published in one step unless the token
    /// (kept 10 minutes in the destination's slot) was recorded already, so
    /// a retry on any instance counts once. Without history there is no atomic step to keep the
    /// token in: refused (``IdempotencyUnavailable``), not published.
    package func publish(_ message: PublishedMessage, idempotencyKey: String, on eventLoop: any EventLoop) -> EventLoopFuture<Bool> {
        guard keepsHistory(message.destination) else {
            return eventLoop.makeFailedFuture(IdempotencyUnavailable(destination: message.destination))
        }
        return record(message, once: idempotencyKey).hop(to: eventLoop).map { $0 != nil }
    }

    /// Publishes `message` to the subscriptions of session `session` on instance `instance`.
    package func publish(_ message: PublishedMessage, toSession session: String, onInstance instance: String) -> EventLoopFuture<Void> {
        if instance == instanceID {
            hub.deliver(message, toSession: session)
            return promiseLoop.makeSucceededVoidFuture()
        }
        let payload = RedisEnvelope.encode(message, origin: instanceID, session: session)
        return publishCommand(instanceChannel(instance), payload).map { _ in }
    }

    package func subscriptionReady(_ pattern: DestinationPattern, on eventLoop: any EventLoop) -> EventLoopFuture<Void>? {
        let interest: Interest? = state.withLockedValue { s in
            pattern.isWildcard ? s.globs[naming.glob(for: pattern)]?.interest : s.exact[pattern.text]
        }
        return interest?.ready.futureResult.hop(to: eventLoop)
    }

    // MARK: Interest (called under the hub's lock: never block here)

    package func interestActivated(_ pattern: DestinationPattern, generation: UInt64) {
        if pattern.isWildcard {
            let glob = naming.glob(for: pattern)
            let fresh: Interest? = state.withLockedValue { s in
                if s.globs[glob] != nil {
                    s.globs[glob]!.patterns.insert(pattern)
                    return nil
                }
                let interest = Interest(ready: promiseLoop.makePromise())
                s.globs[glob] = ([pattern], interest)
                return interest
            }
            guard let fresh else { return }
            if redis.isCluster {
                fresh.ready.fail(RouteError(.subscribeFailed, Self.wildcardRefusal))
            } else {
                startSubscription(fresh, name: glob, kind: .pattern)
            }
        } else if let watched = PresenceNotice.destination(forRouting: pattern.text) {
            let interest = Interest(ready: promiseLoop.makePromise())
            state.withLockedValue { $0.exact[pattern.text] = interest }
            startSubscription(interest, name: naming.presenceChannel(forDestination: watched), kind: .channel)
        } else {
            let interest = Interest(ready: promiseLoop.makePromise(), generation: generation, sequenced: keepsHistory(pattern.text))
            state.withLockedValue { $0.exact[pattern.text] = interest }
            startSubscription(interest, name: channel(forDestination: pattern.text), kind: redis.gatewayChannelKind)
        }
    }

    package func interestDeactivated(_ pattern: DestinationPattern) {
        let gone: Interest? = state.withLockedValue { s in
            if pattern.isWildcard {
                let glob = naming.glob(for: pattern)
                guard var entry = s.globs[glob] else { return nil }
                entry.patterns.remove(pattern)
                if entry.patterns.isEmpty {
                    s.globs[glob] = nil
                    return entry.interest
                }
                s.globs[glob] = entry
                return nil
            }
            return s.exact.removeValue(forKey: pattern.text)
        }
        guard let gone else { return }
        gone.cancelled.store(true, ordering: .sequentiallyConsistent)
        // Not here, under the hub's lock: failing the waiters takes the sequencer's lock, which
        // `sequence` holds while it hands a message to the hub (whose lock it then waits for):
        // two loops deadlocked (a soak's rolling restart hung). Registrations coming meanwhile
        // are failed by it too (it marks the interest failed).
        promiseLoop.execute { self.failWaiters(gone, RouteError(.abandoned, "the destination's last subscriber left")) }
        if let sub = gone.subscription.withLockedValue({ $0 }) {
            tasks.run { await sub.unsubscribe() }
        }
    }

    private func startSubscription(_ interest: Interest, name: String, kind: RedisSubscriptionKind) {
        let started = tasks.run { [self] in
            do {
                let sub = try await redis.subscribe(to: [name], kind: kind) { [weak self] message in
                    self?.onMessage(message, for: interest)
                }
                interest.subscription.withLockedValue { $0 = sub }
                if interest.cancelled.load(ordering: .sequentiallyConsistent) {
                    await sub.unsubscribe()
                }
                if interest.sequenced != nil, let destination = destination(fromChannel: name) {
                    await establishRetrying(interest, destination: destination)
                }
                // Cancelled by the shutdown: the history was not established.
                if Task.isCancelled {
                    interest.ready.fail(RouteError(.abandoned, "the gateway is shutting down"))
                } else {
                    interest.ready.succeed()
                }
            } catch {
                logger.log(level: .warning, throttledBy: InputLogs.subscribeFailed, "redis subscribe failed", metadata: ["channel": "\(name)", "error": "\(error)"])
                interest.ready.fail(RouteError(.subscribeFailed, "redis subscribe to \(name) failed: \(error)"))
                failWaiters(interest, error)
            }
        }
        if !started {
            // On the engine's loop: this runs under the hub's lock, and the sequencer's lock
            // is taken after the hub's elsewhere (see interestDeactivated).
            let error = RouteError(.abandoned, "the gateway is shutting down")
            promiseLoop.execute {
                interest.ready.fail(error)
                self.failWaiters(interest, error)
            }
        }
    }

    // MARK: Receiving

    /// A message on the subscription of `interest`. Once the interest is cancelled its copies are
    /// dropped: while a destination's (or glob's) last subscriber leaves and a new one comes, the
    /// old subscription and the new one can both be registered for the channel for a moment, and
    /// every message would reach the hub twice (a duplicate for a destination without history, a
    /// stale copy ahead of a resume's replay for one with history).
    func onMessage(_ message: RedisPubSubMessage, for interest: Interest) {
        messagesIn.add(1, ordering: .relaxed)
        guard !interest.cancelled.load(ordering: .relaxed) else { return }
        if message.kind == .channel, naming.destination(fromPresenceChannel: message.channel) != nil {
            onPresenceNotice(message)
            return
        }
        guard let decoded = RedisEnvelope.decode(message.payload) else {
            malformedMessages.add(1, ordering: .relaxed)
            logger.log(level: .warning, throttledBy: InputLogs.malformedEnvelope, "malformed envelope on redis channel", metadata: ["channel": "\(message.channel)"])
            return
        }
        // This instance delivered its own messages already, unless they went through history.
        if decoded.origin == instanceID && decoded.position == nil { return }
        guard let destination = destination(fromChannel: message.channel) ?? decoded.destination else { return }
        let published = PublishedMessage(
            destination: destination, messageID: decoded.messageID ?? messageIDs.next(),
            headers: decoded.headers, body: decoded.body, position: decoded.position)
        if message.kind == .pattern, let glob = message.pattern {
            let patterns = state.withLockedValue { $0.globs[glob]?.patterns } ?? []
            guard !patterns.isEmpty else { return }
            hub.deliver(published, scope: .patterns(Array(patterns)))
        } else if published.position != nil, interest.sequenced != nil {
            sequence(published, interest: interest, destination: destination)
        } else {
            hub.deliver(published, scope: .exact, generation: interest.generation)
        }
    }

    /// A join or leave: to the local watchers of its destination only (exact scope on the
    /// routing destination, which no client subscription can match).
    func onPresenceNotice(_ message: RedisPubSubMessage) {
        guard let notice = PresenceNotice(json: message.payload),
            notice.destination == naming.destination(fromPresenceChannel: message.channel)
        else {
            malformedMessages.add(1, ordering: .relaxed)
            logger.log(level: .warning, throttledBy: InputLogs.malformedPresence, "malformed presence notice", metadata: ["channel": "\(message.channel)"])
            return
        }
        hub.deliver(notice.message(messageID: messageIDs.next()), scope: .exact)
    }

    func onInstanceMessage(_ message: RedisPubSubMessage) {
        messagesIn.add(1, ordering: .relaxed)
        guard let decoded = RedisEnvelope.decode(message.payload), let session = decoded.session, let destination = decoded.destination else {
            malformedMessages.add(1, ordering: .relaxed)
            return
        }
        let published = PublishedMessage(
            destination: destination, messageID: decoded.messageID ?? messageIDs.next(),
            headers: decoded.headers, body: decoded.body)
        if !hub.deliver(published, toSession: session) {
            logger.debug("message for an unknown session dropped", metadata: ["session": "\(session)"])
        }
    }
}
