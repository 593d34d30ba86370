import Logging
import Metrics
import NIOCore
import Redis
import STOMPCodec
import SwitchboardWire
import Synchronization

/// Routes `/app/...` messages into a Redis Stream, where backend replicas read them in a
/// consumer group: each entry is processed by one replica and acknowledged after success.
///
/// Entry fields: `destination`, `message` (the body), `content-type`, `session`, `user`
/// (when known), `instance`, `timestamp` (ms since 1970), then the SEND's user headers
/// (a header named like one of these fields is dropped). Written with `XADD MAXLEN ~ n`.
/// The future succeeds only once Redis confirmed the XADD, so a RECEIPT means stored.
///
/// With consumer groups configured, ``groups`` keeps them in existence: after a reconnect the
/// XADDs wait until every group was seen or re-created, so no stored entry is skipped.
package struct RedisStreamRoute: AppRoute {
    package let stream: String
    package let maxLength: Int
    let redis: GatewayRedis
    /// With `redis.wait-replicas`: where and how the XADDs wait for replicas.
    let replication: ReplicaAcknowledgement?
    /// The consumer groups this route keeps, `nil` when none is configured.
    package let groups: RedisStreamGroups?
    /// XADDs go out in order on the client's one command connection (on a cluster, on the
    /// connection to the stream's primary).
    package var keepsOrderWhenPipelined: Bool { true }

    /// - Parameters:
    ///   - groups: consumer groups to create (at `0`) and re-create when Redis lost them.
    ///   - eventLoop: where group verifications complete.
    ///   - replication: XADDs count as stored only once replicas acknowledged them.
    package init(
        stream: String, maxLength: Int, redis: GatewayRedis, groups: [String] = [], replication: ReplicaAcknowledgement? = nil,
        eventLoop: any EventLoop
    ) {
        self.stream = stream
        self.maxLength = maxLength
        self.redis = redis
        self.replication = replication
        self.groups = groups.isEmpty ? nil : RedisStreamGroups(stream: stream, groups: groups, maxLength: maxLength, redis: redis, eventLoop: eventLoop)
    }

    package var description: String { "redis stream \(stream)" }

    /// XADDs that failed, all stream routes together.
    package static let failures = Atomic<Int>(0)
    static let xaddTimer = Metrics.Timer(label: "switchboard_redis_xadd_duration_seconds")

    static let fixedFields: Set<String> = ["destination", "message", "content-type", "session", "user", "instance", "timestamp"]

    package static func fields(for message: AppMessage) -> [(name: String, value: RedisArgument)] {
        var fields: [(name: String, value: RedisArgument)] = [
            ("destination", .string(message.destination)),
            ("message", .bytes(message.body)),
            ("content-type", .string(message.contentType ?? "text/plain")),
            ("session", .string(message.sessionID)),
        ]
        if let user = message.user { fields.append(("user", .string(user))) }
        fields.append(("instance", .string(message.instanceID)))
        fields.append(("timestamp", .string(String(message.timestamp))))
        var seen = Set<String>()
        for (name, value) in message.headers where !fixedFields.contains(name) && seen.insert(name).inserted {
            fields.append((name, .string(value)))
        }
        return fields
    }

    package func handle(_ message: AppMessage, on eventLoop: any EventLoop) -> EventLoopFuture<[RouteReply]> {
        let stream = self.stream
        let start = NIODeadline.now()
        let xadd = XADD(key: stream, maxLength: maxLength, approximateTrim: true, fields: Self.fields(for: message))
        let redis = self.redis
        let replication = self.replication
        let send: @Sendable () -> EventLoopFuture<String>
        if let replication {
            let write = ReplicatedWrite(xadd, replicas: replication.replicas, timeout: replication.timeout)
            send = { replication.redis.send(write) }
        } else {
            send = { redis.send(xadd) }
        }
        let sent = groups.map { $0.whenVerified(on: eventLoop, send) } ?? send()
        return
            sent
            .hop(to: eventLoop)
            .map { _ in
                Self.xaddTimer.recordNanoseconds((NIODeadline.now() - start).nanoseconds)
                return []
            }
            .flatMapErrorThrowing { error in
                Self.failures.add(1, ordering: .relaxed)
                if let replication, let error = error as? RedisClientError, error == .notReplicated {
                    ReplicaAcknowledgement.failures.add(1, ordering: .relaxed)
                    throw RouteError(.redisCommandFailed, replication.failureMessage(stream: stream, error))
                }
                if let unknown = RouteError.outcomeUnknown(
                    ifReplyLost: error, "XADD to redis stream \(stream)", "the entry may be stored, and sending it again may have it processed twice")
                {
                    throw unknown
                }
                throw RouteError(.redisCommandFailed, "XADD to redis stream \(stream) failed: \(error)")
            }
    }
}

/// `redis.wait-replicas`: a stream route's XADD counts as stored only once `replicas` replicas
/// acknowledged it within `timeout` (`XADD`, then `WAIT` on the same connection). `redis` is a
/// client of its own: a `WAIT` holds its connection until the replicas answer, and the
/// gateway's other commands must not queue behind it.
package struct ReplicaAcknowledgement: Sendable {
    package let redis: GatewayRedis
    package let replicas: Int
    package let timeout: TimeAmount

    package init(redis: GatewayRedis, replicas: Int, timeout: TimeAmount) {
        self.redis = redis
        self.replicas = replicas
        self.timeout = timeout
    }

    /// XADDs stored on the primary that too few replicas acknowledged in time.
    package static let failures = Atomic<Int>(0)

    /// Warns when a primary has fewer replicas than required (then every receipted `SEND` to a
    /// stream route fails): once, when the gateway starts. On a cluster, from the slot map.
    package func warnIfTooFewReplicas(logger: Logger) async {
        var short: [String] = []
        switch redis {
        case .single(let client):
            guard (try? await client.waitUntilConnected(timeout: .seconds(10))) != nil,
                let info = try? await client.execute(RawCommand("INFO", "replication")),
                let text = try? String(fromRESP: info)
            else { return }
            let line = text.split(whereSeparator: \.isNewline).first { $0.hasPrefix("connected_slaves:") }
            let count = line.flatMap { Int($0.dropFirst("connected_slaves:".count)) } ?? 0
            if count < replicas { short.append("the primary has \(count)") }
        case .cluster(let client):
            for shard in client.topology?.shards ?? [] where shard.replicas.count < replicas {
                short.append("\(shard.primary) has \(shard.replicas.count)")
            }
        }
        guard !short.isEmpty else { return }
        logger.warning(
            "redis-stream routes wait for \(replicas) replica\(replicas == 1 ? "" : "s") (wait-replicas) but \(short.joined(separator: ", ")) replicas: their receipted SENDs will fail until enough replicas are connected"
        )
    }

    func failureMessage(stream: String, _ error: RedisClientError) -> String {
        "XADD to redis stream \(stream) not acknowledged by \(replicas) replica\(replicas == 1 ? "" : "s") within "
            + "\(timeout.nanoseconds / 1_000_000) ms (wait-replicas; \(error.detail ?? "too few acknowledged")): "
            + "the primary has the entry but a failover may lose it; send again to be sure (it may then be processed twice)"
    }
}

/// Routes `/app/...` messages to a Redis Pub/Sub channel (`PUBLISH channel body`), as the
/// first seed article does. At most once: a backend that is not subscribed at that moment
/// never sees the message. Prefer ``RedisStreamRoute``. On Redis Cluster it is a classic
/// `PUBLISH` too (the cluster forwards it to every node), so backends `SUBSCRIBE` as usual.
///
/// A `PUBLISH` that reached no subscriber is counted
/// (`switchboard_route_publishes_unreceived_total`); with `requireSubscriber` it fails
/// (``RouteError/Code/notDelivered``), its `RECEIPT` would say delivered. Off by default: the
/// count leaves out subscribers on replicas, and the failure ends the client's session. On a
/// cluster the count covers only the node that took the `PUBLISH`, so there it is not checked.
package struct RedisPubSubRoute: AppRoute {
    package let channel: String
    let redis: GatewayRedis
    let requireSubscriber: Bool
    let unreceived: Metrics.Counter
    /// PUBLISHes go out in order on the client's one command connection.
    package var keepsOrderWhenPipelined: Bool { true }

    package init(channel: String, redis: GatewayRedis, requireSubscriber: Bool = false) {
        self.channel = channel
        self.redis = redis
        self.requireSubscriber = requireSubscriber
        self.unreceived = Metrics.Counter(label: "switchboard_route_publishes_unreceived_total", dimensions: [("channel", channel)])
    }

    package var description: String { "redis channel \(channel)" }

    package func handle(_ message: AppMessage, on eventLoop: any EventLoop) -> EventLoopFuture<[RouteReply]> {
        let channel = self.channel
        let counted = !redis.isCluster
        let (required, unreceived) = (requireSubscriber, self.unreceived)
        return redis.send(PUBLISH(channel: channel, message: .bytes(message.body)))
            .hop(to: eventLoop)
            .flatMapErrorThrowing { error in
                if let unknown = RouteError.outcomeUnknown(
                    ifReplyLost: error, "PUBLISH to redis channel \(channel)", "subscribed backends may have it, and sending it again may deliver it twice")
                {
                    throw unknown
                }
                throw RouteError(.redisCommandFailed, "PUBLISH to redis channel \(channel) failed: \(error)")
            }
            .flatMapThrowing { receivers in
                if counted && receivers == 0 {
                    unreceived.increment()
                    guard required else { return [] }
                    throw RouteError(
                        .notDelivered,
                        "PUBLISH to redis channel \(channel) reached no subscriber: not delivered "
                            + "(a redis-pubsub route keeps nothing for a backend that is away; a redis-stream route does)")
                }
                return []
            }
    }
}

extension RouteError {
    /// Whether `error` means a Redis command was sent but its reply never came (the connection
    /// was lost, or it timed out): Redis may have run it, so the outcome is unknown.
    package static func replyLost(_ error: any Error) -> Bool {
        guard let error = error as? RedisClientError else { return false }
        return error == .connectionClosed || error == .commandTimeout
    }

    /// ``RouteError/Code/outcomeUnknown`` for a command whose reply was lost (``replyLost(_:)``); `nil`
    /// for other failures.
    static func outcomeUnknown(ifReplyLost error: any Error, _ command: String, _ consequence: String) -> RouteError? {
        guard replyLost(error) else { return nil }
        return RouteError(.outcomeUnknown, "\(command): outcome unknown, the connection was lost before the reply (\(error)); \(consequence)")
    }
}
