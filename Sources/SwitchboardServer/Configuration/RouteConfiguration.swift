import Configuration
import NIOSSL
import Redis
import SwitchboardCore
import SwitchboardRedis
import SwitchboardRoutes
import SwitchboardWire

/// One `/app` route from configuration (`routes.<name>.*`).
package struct RouteConfiguration: Sendable, Equatable {
    /// Where the route's messages go.
    package enum Target: Sendable, Equatable {
        /// An HTTP POST per message, answered within `timeoutMs`.
        case webhook(url: String, timeoutMs: Int)
        /// `XADD MAXLEN ~ maxLength` to a stream; `groups` are created at start-up; the `RECEIPT`
        /// waits for `waitReplicas` replicas (`nil`: `redis.wait-replicas`).
        case redisStream(stream: String, maxLength: Int, groups: [String], waitReplicas: Int? = nil)
        /// `PUBLISH` to a channel; with `requireSubscriber`, a `PUBLISH` that reached no
        /// subscriber fails the `SEND` (not on Redis Cluster, whose count is one node's).
        case redisPubSub(channel: String, requireSubscriber: Bool = false)

        /// The `routes.<name>.type` value.
        package var typeName: String {
            switch self {
            case .webhook: "webhook"
            case .redisStream: "redis-stream"
            case .redisPubSub: "redis-pubsub"
            }
        }
    }

    package var name: String
    /// Application destination or wildcard pattern.
    package var destination: String
    package var target: Target

    package init(name: String, destination: String, target: Target) {
        self.name = name
        self.destination = destination
        self.target = target
    }

    /// Reads the routes listed in `names` from the `routes` scope.
    static func read(_ reader: ConfigReader, destinations: DestinationSettings) throws -> [RouteConfiguration] {
        try reader.stringArray(forKey: "names", default: []).map { name in
            let route = reader.scoped(to: ConfigKey([name]))
            let base = "routes.\(name)"
            let required = RequiredStrings(reader: route, base: base)
            guard let destination = route.string(forKey: "destination") else {
                throw SwitchboardConfiguration.Invalid(description: "\(base).destination is required")
            }
            guard destinations.isApplication(destination) else {
                throw SwitchboardConfiguration.Invalid(
                    description: "\(base).destination '\(destination)' must start with \(destinations.applicationPrefixes.joined(separator: " or "))")
            }
            do { _ = try DestinationPattern(destination) } catch {
                throw SwitchboardConfiguration.Invalid(description: "\(base).destination: \(error)")
            }
            let target: Target
            switch route.string(forKey: "type", default: "webhook") {
            case "webhook":
                let url = try required("url", for: "a webhook route")
                let timeoutMs = route.int(forKey: "timeout-ms", default: 5_000)
                try SwitchboardConfiguration.atLeast(1, (base + ".timeout-ms", timeoutMs))
                do { _ = try WebhookRoute.components(of: url) } catch {
                    throw SwitchboardConfiguration.Invalid(description: "\(base).url: \(error)")
                }
                target = .webhook(url: url, timeoutMs: timeoutMs)
            case "redis-stream":
                let stream = try required("stream", for: "a redis-stream route")
                let maxLength = route.int(forKey: "max-length", default: 100_000)
                try SwitchboardConfiguration.atLeast(1, (base + ".max-length", maxLength))
                let waitReplicas = route.int(forKey: "wait-replicas")
                if let waitReplicas { try SwitchboardConfiguration.atLeast(0, (base + ".wait-replicas", waitReplicas)) }
                target = .redisStream(
                    stream: stream, maxLength: maxLength, groups: route.stringArray(forKey: "groups", default: []), waitReplicas: waitReplicas)
            case "redis-pubsub":
                target = .redisPubSub(
                    channel: try required("channel", for: "a redis-pubsub route"), requireSubscriber: route.bool(forKey: "require-subscriber", default: false))
            case let other:
                throw SwitchboardConfiguration.Invalid(description: "\(base).type '\(other)' is not supported (supported: webhook, redis-stream, redis-pubsub)")
            }
            return RouteConfiguration(name: name, destination: destination, target: target)
        }
    }
}

/// Non-empty string values of one named entry, with an error naming the key when missing.
struct RequiredStrings {
    var reader: ConfigReader
    var base: String

    func callAsFunction(_ key: String, for what: String) throws -> String {
        guard let value = reader.string(forKey: ConfigKey(key)), !value.isEmpty else {
            throw SwitchboardConfiguration.Invalid(description: "\(base).\(key) is required for \(what)")
        }
        return value
    }
}

/// `redis.*`: Redis mode is on when `redis.url` is set.
package struct RedisSettings: Sendable, Equatable {
    package var url: String
    package var channelPrefix = "switchboard:"
    package var commandTimeoutMs = 2_000
    /// A Redis command connection per event loop (no thread hop per command), besides the shared one.
    package var connectionPerLoop = true
    /// The delivery canary's period (0: off) and how late it may be before the instance is not ready.
    package var canaryIntervalMs = 1_000
    package var canaryTimeoutMs = 3_000
    package var connectTimeoutMs = 2_000
    /// How long a `SUBSCRIBE` to a destination with history waits for an unreachable Redis; 0: none.
    package var unreachableWaitMs = 5_000
    /// `redis.reconnect-wait-ms`: how long a command (a publish) waits for the command
    /// connection while it reconnects; 0: it fails at once.
    package var reconnectWaitMs = 1_000
    /// `redis.subscriber-ping-interval-ms`: how often the subscriber connections (and a
    /// sentinel watch) send `PING` to find a dead peer; 0: never.
    package var subscriberPingIntervalMs = 5_000
    /// `redis.appendfsync-always`: the Redis primaries lose nothing they acknowledged when they
    /// restart (`appendonly yes`, `appendfsync always`), so a restart keeps history's positions
    /// instead of moving them ahead (a hole every subscriber is told of).
    package var appendfsyncAlways = false
    /// `redis.wait-replicas`: a stream route's `XADD` counts as stored (its `RECEIPT`) only once
    /// this many replicas acknowledged it (`WAIT`); 0: once the primary stored it.
    package var waitReplicas = 0
    /// `redis.wait-replicas-timeout-ms`: how long a `WAIT` may take before the write fails.
    package var waitReplicasTimeoutMs = 1_000
    /// `redis.tls.*`, with a `rediss://` URL.
    package var tls: RedisTLSSettings?
    /// `redis.sentinel.*`: find the primary through Redis Sentinel (the URL's host and port are then not used).
    package var sentinel: RedisSentinelConfiguration?
    /// `redis.cluster.nodes`: a Redis Cluster's seed nodes (the URL's host and port are then not used).
    package var cluster: RedisClusterConfiguration?
    /// Inbound routes (backend → browsers).
    package var inbound: [RedisInboundSetting] = []

    package init(url: String) { self.url = url }

    /// Reads the `redis` scope; nil without `redis.url`.
    init?(reader: ConfigReader, destinations: DestinationSettings) throws {
        guard let url = reader.string(forKey: "url"), !url.isEmpty else { return nil }
        self.url = url
        channelPrefix = reader.string(forKey: "channel-prefix", default: channelPrefix)
        // The history functions find the prefix in a key as what comes before its first `{`
        // (the hash tag): a prefix holding one published to a channel nobody subscribed to.
        guard !channelPrefix.contains(where: { $0 == "{" || $0 == "}" }) else {
            throw SwitchboardConfiguration.Invalid(description: "redis.channel-prefix must not contain '{' or '}', got '\(channelPrefix)'")
        }
        commandTimeoutMs = reader.int(forKey: "command-timeout-ms", default: commandTimeoutMs)
        connectionPerLoop = reader.bool(forKey: "connection-per-loop", default: connectionPerLoop)
        canaryIntervalMs = reader.int(forKey: "canary-interval-ms", default: canaryIntervalMs)
        canaryTimeoutMs = reader.int(forKey: "canary-timeout-ms", default: canaryTimeoutMs)
        try SwitchboardConfiguration.atLeast(0, ("redis.canary-interval-ms", canaryIntervalMs))
        try SwitchboardConfiguration.atLeast(1, ("redis.canary-timeout-ms", canaryTimeoutMs))
        // A timeout within about one interval made canaries late: not ready part of each
        // interval, and a history read of every destination each time one came back.
        if canaryIntervalMs > 0, canaryTimeoutMs < 2 * canaryIntervalMs {
            throw SwitchboardConfiguration.Invalid(
                description: "redis.canary-timeout-ms (\(canaryTimeoutMs)) must be at least twice redis.canary-interval-ms (\(canaryIntervalMs))")
        }
        connectTimeoutMs = reader.int(forKey: "connect-timeout-ms", default: connectTimeoutMs)
        unreachableWaitMs = reader.int(forKey: "unreachable-wait-ms", default: unreachableWaitMs)
        try SwitchboardConfiguration.atLeast(0, ("redis.unreachable-wait-ms", unreachableWaitMs))
        reconnectWaitMs = reader.int(forKey: "reconnect-wait-ms", default: reconnectWaitMs)
        try SwitchboardConfiguration.atLeast(0, ("redis.reconnect-wait-ms", reconnectWaitMs))
        subscriberPingIntervalMs = reader.int(forKey: "subscriber-ping-interval-ms", default: subscriberPingIntervalMs)
        try SwitchboardConfiguration.atLeast(0, ("redis.subscriber-ping-interval-ms", subscriberPingIntervalMs))
        appendfsyncAlways = reader.bool(forKey: "appendfsync-always", default: appendfsyncAlways)
        waitReplicas = reader.int(forKey: "wait-replicas", default: waitReplicas)
        waitReplicasTimeoutMs = reader.int(forKey: "wait-replicas-timeout-ms", default: waitReplicasTimeoutMs)
        try SwitchboardConfiguration.atLeast(0, ("redis.wait-replicas", waitReplicas))
        try SwitchboardConfiguration.atLeast(1, ("redis.wait-replicas-timeout-ms", waitReplicasTimeoutMs))
        try SwitchboardConfiguration.atLeast(1, ("redis.command-timeout-ms", commandTimeoutMs), ("redis.connect-timeout-ms", connectTimeoutMs))
        let parsed: RedisConfiguration
        do { parsed = try RedisConfiguration(url: url) } catch {
            throw SwitchboardConfiguration.Invalid(
                description:
                    "redis.url '\(Self.redactingPassword(url))' is not a valid redis:// URL: \("\(error)".replacingOccurrences(of: url, with: Self.redactingPassword(url)))")
        }
        tls = try RedisTLSSettings(reader: reader.scoped(to: "tls"), urlUsesTLS: parsed.tls != nil)
        sentinel = try Self.sentinelSettings(reader.scoped(to: "sentinel"))
        cluster = try Self.clusterSettings(reader.scoped(to: "cluster"), url: parsed)
        if cluster != nil, sentinel != nil {
            throw SwitchboardConfiguration.Invalid(
                description: "redis.cluster.nodes and redis.sentinel.nodes are both set: a Redis Cluster fails over by itself, choose one")
        }
        let inboundReader = reader.scoped(to: "inbound")
        inbound = try inboundReader.stringArray(forKey: "names", default: []).map { name in
            let entry = inboundReader.scoped(to: ConfigKey([name]))
            let base = "redis.inbound.\(name)"
            let required = RequiredStrings(reader: entry, base: base)
            switch entry.string(forKey: "type", default: "channel") {
            case "channel":
                let channel = try required("channel", for: "a channel inbound route")
                let destination = try required("destination", for: "a channel inbound route")
                guard destinations.isBroker(destination) else {
                    throw SwitchboardConfiguration.Invalid(
                        description: "\(base).destination '\(destination)' must start with \(destinations.brokerPrefixes.joined(separator: " or "))")
                }
                return RedisInboundSetting(name: name, route: .channel(channel: channel, destination: destination))
            case "broadcast":
                return RedisInboundSetting(name: name, route: .broadcast(channel: try required("channel", for: "a broadcast inbound route")))
            case "stream":
                return RedisInboundSetting(name: name, route: .stream(stream: try required("stream", for: "a stream inbound route")))
            case let other:
                throw SwitchboardConfiguration.Invalid(description: "\(base).type '\(other)' is not supported (supported: channel, broadcast, stream)")
            }
        }
    }

    /// Reads `redis.sentinel.*`: nil without `nodes`; `master-name` is required with them.
    static func sentinelSettings(_ reader: ConfigReader) throws -> RedisSentinelConfiguration? {
        let nodes = reader.stringArray(forKey: "nodes", default: [])
        let masterName = reader.string(forKey: "master-name")
        let username = reader.string(forKey: "username")
        let password = reader.string(forKey: "password")
        guard !nodes.isEmpty else {
            if masterName != nil { throw SwitchboardConfiguration.Invalid(description: "redis.sentinel.master-name is set without redis.sentinel.nodes") }
            return nil
        }
        guard let masterName, !masterName.isEmpty else {
            throw SwitchboardConfiguration.Invalid(description: "redis.sentinel.nodes is set without redis.sentinel.master-name")
        }
        let addresses = try nodes.map { node in
            do { return try RedisSentinelConfiguration.parseNode(node) } catch {
                throw SwitchboardConfiguration.Invalid(description: "redis.sentinel.nodes: '\(node)' is not host:port")
            }
        }
        return RedisSentinelConfiguration(
            nodes: addresses, masterName: masterName, username: username, password: password)
    }

    /// Reads `redis.cluster.nodes`: nil when empty.
    static func clusterSettings(_ reader: ConfigReader, url: RedisConfiguration) throws -> RedisClusterConfiguration? {
        let nodes = reader.stringArray(forKey: "nodes", default: [])
        guard !nodes.isEmpty else { return nil }
        guard url.database == 0 else {
            throw SwitchboardConfiguration.Invalid(
                description: "redis.url selects database \(url.database), but a Redis Cluster (redis.cluster.nodes) has only database 0")
        }
        let addresses = try nodes.map { node in
            do { return try RedisClusterConfiguration.parseNode(node) } catch {
                throw SwitchboardConfiguration.Invalid(description: "redis.cluster.nodes: '\(node)' is not host:port")
            }
        }
        return RedisClusterConfiguration(nodes: addresses)
    }

    /// `redis://user:secret@host` → `redis://***@host`, for error messages.
    static func redactingPassword(_ url: String) -> String {
        guard let scheme = url.range(of: "://"), let at = url[scheme.upperBound...].lastIndex(of: "@") else { return url }
        return url[..<scheme.upperBound] + "***" + url[at...]
    }
}

/// One inbound route (backend → browsers) from configuration (`redis.inbound.<name>.*`).
package struct RedisInboundSetting: Sendable, Equatable {
    package var name: String
    package var route: RedisInboundRoute

    package init(name: String, route: RedisInboundRoute) {
        self.name = name
        self.route = route
    }
}

extension WebhookClient.Settings {
    /// Reads the `webhooks` scope; the CA file is loaded here, so a bad one stops start-up.
    init(reader: ConfigReader) throws {
        self.init()
        caFile = reader.string(forKey: "tls.ca-file")
        maxConnectionsPerHost = reader.int(forKey: "max-connections-per-host", default: maxConnectionsPerHost)
        let idleMs = reader.int(forKey: "idle-timeout-ms", default: Int(idleTimeout.nanoseconds / 1_000_000))
        maxReplyBytes = reader.int(forKey: "max-reply-bytes", default: maxReplyBytes)
        try SwitchboardConfiguration.atLeast(
            1, ("webhooks.max-connections-per-host", maxConnectionsPerHost), ("webhooks.idle-timeout-ms", idleMs),
            ("webhooks.max-reply-bytes", maxReplyBytes))
        idleTimeout = .milliseconds(Int64(idleMs))
        if let caFile {
            let certificates: [NIOSSLCertificate]
            do { certificates = try NIOSSLCertificate.fromPEMFile(caFile) } catch {
                throw SwitchboardConfiguration.Invalid(description: "webhooks.tls.ca-file '\(caFile)': cannot read PEM certificates: \(error)")
            }
            if certificates.isEmpty {
                throw SwitchboardConfiguration.Invalid(description: "webhooks.tls.ca-file '\(caFile)' holds no PEM certificate")
            }
        }
    }
}
