import Logging
import NIOConcurrencyHelpers
import NIOCore
import Redis
import SwitchboardCore
import SwitchboardWire

/// Proves that the cross-instance path delivers: every `interval` the instance publishes a
/// canary on `<prefix>canary` and watches for it to come back through its own subscriber
/// connection, like any message does. On a Redis Cluster it does so on every shard: one shard
/// channel per primary (``RedisChannelNaming/canaryChannels(for:)``), planned again when the
/// slot map changes, so a stalled shard is noticed whichever it is. When an own canary is older
/// than `timeout` (Redis or a shard stalled, a subscriber connection silently dead, a publish
/// path broken), the instance is not ready (``lateReason``), so a green readiness check means
/// "delivering". Peers' canaries are recorded too (``peers``).
///
/// A canary is `<instance id> <process token> <send time>`: its age is measured from when it
/// was sent, not when it came, so canaries that keep arriving but late (a saturated subscriber,
/// a growing output buffer in Redis) still make the instance not ready; and another process
/// with the same `instance.id` is told apart (logged) instead of keeping this one green.
package final class DeliveryCanary: Sendable {
    package let interval: TimeAmount
    package let timeout: TimeAmount
    let redis: GatewayRedis
    let naming: RedisChannelNaming
    let instanceID: String
    let loop: any EventLoop
    let tasks: BackgroundTasks
    let logger: Logger
    /// This process's token: canaries with this instance id and another token are another
    /// process's, configured with the same `instance.id`.
    let token = String(UInt64.random(in: 1...UInt64.max), radix: 36)
    static let sameIDLog = LogThrottle()

    /// One canary channel: since when it is watched, and when the newest own canary that came
    /// back was sent.
    struct Watched {
        var since: NIODeadline
        var seen: NIODeadline?
        var subscription: RedisCallbackSubscription

        func age(_ now: NIODeadline) -> TimeAmount { now - (self.seen ?? self.since) }
    }

    struct State {
        var started: NIODeadline?
        var channels: [String: Watched] = [:]
        /// The slot map the channels were planned for (Redis Cluster), and whether a plan runs.
        var plannedFor: RedisClusterTopology?
        var planning = false
        var peers: [String: NIODeadline] = [:]
        var task: RepeatedTask?
        var stopped = false
    }

    private let state = NIOLockedValueBox(State())

    package init(
        redis: GatewayRedis, naming: RedisChannelNaming, instanceID: String, interval: TimeAmount, timeout: TimeAmount, loop: any EventLoop,
        tasks: BackgroundTasks = BackgroundTasks(), logger: Logger
    ) {
        self.redis = redis
        self.naming = naming
        self.instanceID = instanceID
        self.interval = interval
        self.timeout = timeout
        self.loop = loop
        self.tasks = tasks
        self.logger = logger
    }

    /// Subscribes and starts publishing. The subscriptions are re-established by the client after
    /// a reconnect (on a cluster, on a shard's new primary).
    package func start() async throws {
        state.withLockedValue { $0.started = .now() }
        if let cluster = redis.clusterClient {
            if cluster.topology == nil { _ = try await cluster.refreshTopology() }
            try await plan()
        } else {
            try await watch([naming.canaryChannel(sharded: false)])
        }
        let task = loop.scheduleRepeatedTask(initialDelay: .zero, delay: interval) { [weak self] _ in self?.tick() }
        state.withLockedValue { $0.task = task }
    }

    /// Stops publishing (the subscriptions end with the client).
    package func stop() {
        let task = state.withLockedValue { s in
            defer {
                s.task = nil
                s.stopped = true
            }
            return s.task
        }
        task?.cancel()
    }

    /// Publishes on every watched channel; on a cluster whose slot map changed, plans the
    /// channels again first.
    private func tick() {
        let (channels, replan) = state.withLockedValue { s -> ([String], Bool) in
            // A tick queued on the loop before stop() cancelled the task publishes nothing.
            guard !s.stopped else { return ([], false) }
            let changed = redis.clusterClient.map { $0.topology != nil && $0.topology != s.plannedFor } ?? false
            let replan = changed && !s.planning && !s.stopped
            if replan { s.planning = true }
            return (Array(s.channels.keys), replan)
        }
        if replan {
            let started = tasks.run {
                do { try await self.plan() } catch { self.logger.warning("delivery canary: subscribing failed", metadata: ["error": "\(error)"]) }
            }
            if !started { state.withLockedValue { $0.planning = false } }
        }
        let payload = "\(instanceID) \(token) \(NIODeadline.now().uptimeNanoseconds)"
        for channel in channels {
            if redis.isCluster {
                _ = redis.send(SPUBLISH(channel: channel, message: .string(payload)))
            } else {
                _ = redis.send(PUBLISH(channel: channel, message: .string(payload)))
            }
        }
    }

    /// Watches one channel on every primary of the current slot map, and no other. A plan that
    /// failed (subscribing failed) is tried again on the next tick.
    private func plan() async throws {
        defer { state.withLockedValue { $0.planning = false } }
        guard let topology = redis.clusterClient?.topology else { return }
        let wanted = naming.canaryChannels(for: topology)
        let dropped = state.withLockedValue { s -> [RedisCallbackSubscription] in
            let gone = s.channels.keys.filter { !wanted.contains($0) }
            return gone.compactMap { s.channels.removeValue(forKey: $0)?.subscription }
        }
        for subscription in dropped { await subscription.unsubscribe() }
        try await watch(wanted.filter { channel in state.withLockedValue { $0.channels[channel] == nil } })
        state.withLockedValue { $0.plannedFor = topology }
    }

    private func watch(_ channels: [String]) async throws {
        for channel in channels {
            let subscription = try await redis.subscribe(to: [channel], kind: redis.gatewayChannelKind) { [weak self] message in
                self?.received(String(buffer: message.payload), on: message.channel)
            }
            let keep = state.withLockedValue { s -> Bool in
                guard !s.stopped, s.channels[channel] == nil else { return false }
                s.channels[channel] = Watched(since: .now(), subscription: subscription)
                return true
            }
            if !keep { await subscription.unsubscribe() }
        }
    }

    /// Called when an own canary comes back after being late: the path works again, and what
    /// it may have lost meanwhile is read from history (see ``RedisEngine``).
    let onRecovered = NIOLockedValueBox<(@Sendable () -> Void)?>(nil)

    func received(_ payload: String, on channel: String) {
        let now = NIODeadline.now()
        let timeout = self.timeout
        // `<id> <token> <sent>`; an older gateway's canary is its id alone.
        let fields = payload.utf8.split(separator: UInt8(ascii: " "), maxSplits: 2).map { String(Substring($0)) }
        let sender = fields.first ?? ""
        let own = sender == instanceID && fields.count == 3 && fields[1] == token
        if sender == instanceID, !own {
            logger.log(
                level: .error, throttledBy: Self.sameIDLog, "another process publishes canaries as this instance.id: instance ids must be unique",
                metadata: ["instance": "\(instanceID)"])
            return
        }
        let sent = own ? UInt64(fields[2]).map { NIODeadline.uptimeNanoseconds(min($0, now.uptimeNanoseconds)) } : nil
        if own, sent == nil { return }  // not one of ours: a forged one (the token is on the channel)
        let recovered = state.withLockedValue { s -> Bool in
            guard own, var sent else {
                if s.peers[sender] == nil {
                    // A peer restarted under a new id, or anyone publishing on the channel:
                    // bound what is kept. When full, the silent ones go, else the one seen
                    // longest ago (a flood of made-up senders must not lock real peers out).
                    guard sender.utf8.count <= Self.maxPeerIDBytes else { return false }
                    if s.peers.count >= Self.maxPeers {
                        s.peers = s.peers.filter { now - $0.value < self.forgetPeerAfter }
                        if s.peers.count >= Self.maxPeers, let oldest = s.peers.min(by: { $0.value < $1.value }) {
                            s.peers[oldest.key] = nil
                        }
                    }
                }
                s.peers[sender] = now
                return false
            }
            guard let watched = s.channels[channel] else { return false }
            // The newest sent that came back: an older one arriving after it changes nothing
            // (nor one sent before the channel was watched, planned again on a new slot map).
            sent = max(sent, watched.since)
            if let seen = watched.seen, seen >= sent { return false }
            s.channels[channel]?.seen = sent
            // Back: once, when the channel goes from late to on time (each late one arriving
            // while the path lags is still late, and must not start another repair round).
            return watched.age(now) > timeout && now - sent <= timeout
        }
        if recovered {
            logger.info("delivery canary back", metadata: ["channel": "\(channel)"])
            onRecovered.withLockedValue { $0 }?()
        }
    }

    /// Seconds since this instance's own canary last came back, on the channel that waited
    /// longest (since start while none has).
    package var ownAge: Double? {
        let now = NIODeadline.now()
        return state.withLockedValue { s in
            guard let oldest = s.channels.values.map({ $0.age(now) }).max() ?? s.started.map({ now - $0 }) else { return nil }
            return Double(oldest.nanoseconds) / 1e9
        }
    }

    /// Why the instance is not delivering, or nil while its canaries are on time.
    package var lateReason: String? {
        let now = NIODeadline.now()
        let (late, started) = state.withLockedValue { s in
            (s.channels.filter { $0.value.age(now) > timeout }.map { ($0.key, $0.value.age(now)) }.sorted { $0.0 < $1.0 }, s.started)
        }
        if late.isEmpty {
            // No channel watched yet (subscribing failed): late once the timeout has passed.
            guard let started, state.withLockedValue({ $0.channels.isEmpty }), now - started > timeout else { return nil }
            return String(format: "delivery canary late: own canary not watched for %.1f s (subscribing failed)", Double((now - started).nanoseconds) / 1e9)
        }
        let worst = late.map(\.1).max() ?? .zero
        let text = String(format: "delivery canary late: own canary not seen for %.1f s", Double(worst.nanoseconds) / 1e9)
        guard redis.isCluster else { return text }
        let topology = redis.clusterClient?.topology
        let shards = late.map { channel, _ in
            topology?.primary(for: HashSlot(key: channel)).map { "\(channel) on \($0)" } ?? channel
        }
        return text + " (" + shards.joined(separator: ", ") + ")"
    }

    /// The channels watched, sorted.
    package var watchedChannels: [String] { state.withLockedValue { $0.channels.keys.sorted() } }

    /// Seconds since each peer's canary was last seen (peers silent for ``forgetPeerAfter`` are
    /// forgotten).
    package var peers: [String: Double] {
        let now = NIODeadline.now()
        return state.withLockedValue { s in
            s.peers.filter { now - $0.value < forgetPeerAfter }.mapValues { Double((now - $0).nanoseconds) / 1e9 }
        }
    }

    /// How long a silent peer stays in ``peers``: ten canary intervals, at least a minute.
    var forgetPeerAfter: TimeAmount { max(interval * 10, .minutes(1)) }
    /// At most this many peers are kept (a canary channel is open to any Redis client).
    static let maxPeers = 1024
    /// A longer sender is not an instance id (those are `instance.id`s or 6 random characters).
    static let maxPeerIDBytes = 256
}
