import Configuration
import Logging
import NIOCore
import RedisClient
import STOMPCodec
import SwitchboardCore
import SwitchboardAuth
import SwitchboardRoutes

/// One `/app` route from configuration.
public struct RouteConfiguration: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable {
        case webhook
        case redisStream = "redis-stream"
        case redisPubSub = "redis-pubsub"
    }
    public var name: String
    public var destination: String
    public var kind: Kind
    /// webhook: the URL.
    public var url: String = ""
    public var timeoutMs: Int = 5_000
    /// redis-stream: the stream, its approximate cap, and consumer groups created at start-up.
    public var stream: String = ""
    public var maxLength: Int = 100_000
    public var groups: [String] = []
    /// redis-pubsub: the channel.
    public var channel: String = ""
}

/// Redis settings; Redis mode is on when ``url`` is set.
public struct RedisSettings: Sendable, Equatable {
    public var url: String
    public var channelPrefix = "switchboard:"
    public var commandTimeoutMs = 2_000
    public var connectTimeoutMs = 2_000
    public var inbound: [RedisInboundSetting] = []
}

/// One inbound route (backend → browsers) from configuration.
public struct RedisInboundSetting: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable { case channel, broadcast, stream }
    public var name: String
    public var kind: Kind
    public var channel: String = ""
    public var destination: String = ""
    public var stream: String = ""
}

/// Log output: `log.format`, and `log.levels.<subsystem>` over `log.level`.
public struct LogSettings: Sendable, Equatable {
    public enum Format: String, Sendable { case text, json }
    public var format = Format.text
    /// Levels by subsystem (`server`, `session`, `http`, `redis`, `routes`).
    public var levels: [String: Logger.Level] = [:]
}

/// Every setting of a gateway instance. See the configuration table in the README.
public struct SwitchboardConfiguration: Sendable {
    public var host = "0.0.0.0"
    public var port = 8080
    public var stompPath = "/stomp"
    public var instanceID: String?
    public var session = SessionConfiguration()
    public var routes: [RouteConfiguration] = []
    public var redis: RedisSettings?
    public var apiMaxBodyBytes = 1024 * 1024
    public var heartbeatResolutionMs = 250
    /// Flush passes of one event loop closer together than this are merged (0: never; below
    /// saturation each batch is flushed at once, and busy mode widens the spacing).
    public var writeCoalesceMicros = 0
    /// The same spacing while the loop is saturated (`server.busy-percent`); at least
    /// `writeCoalesceMicros`.
    public var busyWriteCoalesceMicros = 10_000
    public var eventLoopThreads = System.coreCount
    public var backlog = 4096
    /// `TCP_NODELAY` on accepted connections: each write leaves at once. Off, the kernel's
    /// Nagle algorithm holds small writes while earlier data is unacknowledged.
    public var tcpNoDelay = true
    /// CPU share of an event loop's thread (per cent) from which the loop is saturated — in
    /// busy mode — until the load is gone: Nagle on its connections (with `tcpNoDelay`) and
    /// `busyWriteCoalesceMicros`; 0: never.
    public var busyPercent = 50
    public var shutdownGraceMs = 5_000
    /// On SIGTERM: how long readiness is false before sessions are told to reconnect.
    public var drainDelayMs = 1_000
    public var logLevel: Logger.Level = .info
    /// Log output format and per-subsystem levels (`log.*`).
    public var log = LogSettings()
    /// JWT verification keys; none configured means no authentication.
    public var jwt = JWTKeySettings()
    /// Whether sessions without a token are accepted; default: yes without JWT keys, no with.
    public var allowAnonymous: Bool?
    /// Cookie holding a token at the handshake (the `access_token` query parameter works too).
    public var handshakeCookie = "access_token"
    public var subscribeRules: [String] = []
    public var sendRules: [String] = []
    public var apiKeys: [APIKeyStore.Key] = []
    /// Origins allowed to open WebSocket sessions and call the API from a browser; empty: any.
    public var allowedOrigins: [String] = []
    public var maxConnections = 100_000
    public var maxConnectionsPerIP = 10_000
    public var consoleEnabled = true
    /// PEM certificate chain and private key: when both are set the port speaks TLS only
    /// (https:// and wss://).
    public var tlsCertificateFile: String?
    public var tlsKeyFile: String?
    /// A connection must complete its first HTTP request (upgrade or API call) in time.
    public var handshakeTimeoutMs = 10_000
    /// Idle keep-alive HTTP connections are closed after this.
    public var httpIdleTimeoutMs = 60_000
    public var consolePath = "/console"

    public init() {}

    /// A configuration problem, naming the key.
    public struct Invalid: Error, CustomStringConvertible {
        public var description: String
    }

    /// Reads every key from `reader` (YAML file, environment, flags, in that order of weight).
    public init(reader: ConfigReader) throws {
        self.init()
        host = reader.string(forKey: "http.host", default: host)
        port = reader.int(forKey: "http.port", default: port)
        guard (0...65535).contains(port) else { throw Invalid(description: "http.port must be 0…65535, got \(port)") }
        apiMaxBodyBytes = reader.int(forKey: "http.max-body-bytes", default: apiMaxBodyBytes)
        backlog = reader.int(forKey: "http.backlog", default: backlog)
        try Self.atLeast(1, ("http.max-body-bytes", apiMaxBodyBytes), ("http.backlog", backlog))
        tcpNoDelay = reader.bool(forKey: "http.tcp-nodelay", default: tcpNoDelay)
        // `http.nagle-when-busy-percent`: its name before busy mode also widened the coalescing.
        busyPercent = reader.int(forKey: "server.busy-percent",
                                 default: reader.int(forKey: "http.nagle-when-busy-percent", default: busyPercent))
        guard (0...100).contains(busyPercent) else {
            throw Invalid(description: "server.busy-percent must be 0…100, got \(busyPercent)")
        }
        tlsCertificateFile = reader.string(forKey: "http.tls.certificate-file")
        tlsKeyFile = reader.string(forKey: "http.tls.key-file", isSecret: true)
        guard (tlsCertificateFile == nil) == (tlsKeyFile == nil) else {
            throw Invalid(description: "http.tls.certificate-file and http.tls.key-file must be set together")
        }
        handshakeTimeoutMs = reader.int(forKey: "http.handshake-timeout-ms", default: handshakeTimeoutMs)
        httpIdleTimeoutMs = reader.int(forKey: "http.idle-timeout-ms", default: httpIdleTimeoutMs)
        try Self.atLeast(1, ("http.handshake-timeout-ms", handshakeTimeoutMs), ("http.idle-timeout-ms", httpIdleTimeoutMs))
        stompPath = reader.string(forKey: "stomp.path", default: stompPath)
        guard stompPath.hasPrefix("/") else { throw Invalid(description: "stomp.path must start with '/', got '\(stompPath)'") }
        instanceID = reader.string(forKey: "instance.id")
        eventLoopThreads = reader.int(forKey: "server.threads", default: eventLoopThreads)
        guard eventLoopThreads >= 1 && eventLoopThreads <= FanoutHub.maxShards else {
            throw Invalid(description: "server.threads must be 1…\(FanoutHub.maxShards), got \(eventLoopThreads)")
        }
        writeCoalesceMicros = reader.int(forKey: "server.write-coalesce-us", default: writeCoalesceMicros)
        guard writeCoalesceMicros >= 0 && writeCoalesceMicros <= 100_000 else {
            throw Invalid(description: "server.write-coalesce-us must be 0…100000, got \(writeCoalesceMicros)")
        }
        busyWriteCoalesceMicros = reader.int(forKey: "server.write-coalesce-busy-us", default: busyWriteCoalesceMicros)
        guard busyWriteCoalesceMicros >= 0 && busyWriteCoalesceMicros <= 100_000 else {
            throw Invalid(description: "server.write-coalesce-busy-us must be 0…100000, got \(busyWriteCoalesceMicros)")
        }
        shutdownGraceMs = reader.int(forKey: "server.shutdown-grace-ms", default: shutdownGraceMs)
        drainDelayMs = reader.int(forKey: "server.drain-delay-ms", default: drainDelayMs)
        try Self.atLeast(0, ("server.drain-delay-ms", drainDelayMs), ("server.shutdown-grace-ms", shutdownGraceMs))
        consoleEnabled = reader.bool(forKey: "console.enabled", default: consoleEnabled)
        consolePath = reader.string(forKey: "console.path", default: consolePath)
        guard consolePath.hasPrefix("/"), consolePath.count > 1 else { throw Invalid(description: "console.path must start with '/', got '\(consolePath)'") }
        if let level = reader.string(forKey: "log.level") {
            guard let parsed = Logger.Level(rawValue: level) else {
                throw Invalid(description: "log.level must be one of trace, debug, info, notice, warning, error, critical; got '\(level)'")
            }
            logLevel = parsed
        }
        try readLog(reader)

        var s = SessionConfiguration()
        s.heartBeat = STOMPHeartBeat(send: reader.int(forKey: "stomp.heartbeat.send-ms", default: s.heartBeat.send),
                                     receive: reader.int(forKey: "stomp.heartbeat.receive-ms", default: s.heartBeat.receive))
        try Self.atLeast(0, ("stomp.heartbeat.send-ms", s.heartBeat.send), ("stomp.heartbeat.receive-ms", s.heartBeat.receive))
        s.heartBeatTolerance = reader.double(forKey: "stomp.heartbeat.tolerance", default: s.heartBeatTolerance)
        guard s.heartBeatTolerance >= 1 else { throw Invalid(description: "stomp.heartbeat.tolerance must be ≥ 1, got \(s.heartBeatTolerance)") }
        heartbeatResolutionMs = reader.int(forKey: "stomp.heartbeat.resolution-ms", default: heartbeatResolutionMs)
        guard heartbeatResolutionMs >= 10 else { throw Invalid(description: "stomp.heartbeat.resolution-ms must be ≥ 10, got \(heartbeatResolutionMs)") }
        let connectTimeoutMs = reader.int(forKey: "stomp.connect-timeout-ms", default: 10_000)
        try Self.atLeast(1, ("stomp.connect-timeout-ms", connectTimeoutMs))
        s.connectTimeout = .milliseconds(Int64(connectTimeoutMs))
        s.decoderLimits.maxFrameBytes = reader.int(forKey: "limits.max-frame-bytes", default: s.decoderLimits.maxFrameBytes)
        s.decoderLimits.maxHeaders = reader.int(forKey: "limits.max-headers", default: s.decoderLimits.maxHeaders)
        s.decoderLimits.maxHeaderLineBytes = reader.int(forKey: "limits.max-header-line-bytes", default: s.decoderLimits.maxHeaderLineBytes)
        s.decoderLimits.maxHeaderBytes = reader.int(forKey: "limits.max-header-bytes", default: s.decoderLimits.maxHeaderBytes)
        s.decoderLimits.maxBodyBytes = reader.int(forKey: "limits.max-body-bytes", default: s.decoderLimits.maxFrameBytes)
        s.maxSubscriptionsPerSession = reader.int(forKey: "limits.max-subscriptions", default: s.maxSubscriptionsPerSession)
        s.maxPendingOutboundBytes = reader.int(forKey: "limits.max-pending-bytes", default: s.maxPendingOutboundBytes)
        s.maxFramesPerTransaction = reader.int(forKey: "limits.max-transaction-frames", default: s.maxFramesPerTransaction)
        try Self.atLeast(1, ("limits.max-frame-bytes", s.decoderLimits.maxFrameBytes), ("limits.max-headers", s.decoderLimits.maxHeaders),
                         ("limits.max-header-line-bytes", s.decoderLimits.maxHeaderLineBytes), ("limits.max-subscriptions", s.maxSubscriptionsPerSession),
                         ("limits.max-header-bytes", s.decoderLimits.maxHeaderBytes), ("limits.max-body-bytes", s.decoderLimits.maxBodyBytes),
                         ("limits.max-pending-bytes", s.maxPendingOutboundBytes), ("limits.max-transaction-frames", s.maxFramesPerTransaction))
        s.brokerPrefixes = reader.stringArray(forKey: "destinations.broker-prefixes", default: s.brokerPrefixes)
        s.applicationPrefixes = reader.stringArray(forKey: "destinations.app-prefixes", default: s.applicationPrefixes)
        for p in s.brokerPrefixes + s.applicationPrefixes where !p.hasPrefix("/") {
            throw Invalid(description: "destination prefixes must start with '/', got '\(p)'")
        }
        session = s

        for name in reader.stringArray(forKey: "routes.names", default: []) {
            let base = "routes.\(name)"
            guard let destination = reader.string(forKey: ConfigKey(base + ".destination")) else {
                throw Invalid(description: "\(base).destination is required")
            }
            guard s.isApplicationDestination(destination) else {
                throw Invalid(description: "\(base).destination '\(destination)' must start with \(s.applicationPrefixes.joined(separator: " or "))")
            }
            do { _ = try DestinationPattern(destination) } catch {
                throw Invalid(description: "\(base).destination: \(error)")
            }
            let kindName = reader.string(forKey: ConfigKey(base + ".type"), default: "webhook")
            guard let kind = RouteConfiguration.Kind(rawValue: kindName) else {
                throw Invalid(description: "\(base).type '\(kindName)' is not supported (supported: \(RouteConfiguration.Kind.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            var route = RouteConfiguration(name: name, destination: destination, kind: kind)
            func required(_ key: String) throws -> String {
                guard let v = reader.string(forKey: ConfigKey(base + "." + key)), !v.isEmpty else {
                    throw Invalid(description: "\(base).\(key) is required for a \(kindName) route")
                }
                return v
            }
            switch kind {
            case .webhook:
                route.url = try required("url")
                route.timeoutMs = reader.int(forKey: ConfigKey(base + ".timeout-ms"), default: route.timeoutMs)
                try Self.atLeast(1, (base + ".timeout-ms", route.timeoutMs))
                do { _ = try WebhookRoute(url: route.url, timeout: .milliseconds(Int64(route.timeoutMs))) } catch {
                    throw Invalid(description: "\(base).url: \(error)")
                }
            case .redisStream:
                route.stream = try required("stream")
                route.maxLength = reader.int(forKey: ConfigKey(base + ".max-length"), default: route.maxLength)
                try Self.atLeast(1, (base + ".max-length", route.maxLength))
                route.groups = reader.stringArray(forKey: ConfigKey(base + ".groups"), default: [])
            case .redisPubSub:
                route.channel = try required("channel")
            }
            routes.append(route)
        }
        try readRedis(reader)
        try readSecurity(reader)
    }

    mutating func readSecurity(_ reader: ConfigReader) throws {
        jwt.hmacSecret = reader.string(forKey: "auth.jwt.hmac-secret", isSecret: true)
        jwt.publicKeyFiles = reader.stringArray(forKey: "auth.jwt.public-key-files", default: [])
        jwt.jwksFile = reader.string(forKey: "auth.jwt.jwks-file")
        jwt.keptClaims = reader.stringArray(forKey: "auth.jwt.claims", default: [])
        jwt.audience = reader.string(forKey: "auth.jwt.audience")
        jwt.issuer = reader.string(forKey: "auth.jwt.issuer")
        jwt.leewaySeconds = reader.int(forKey: "auth.jwt.leeway-seconds", default: jwt.leewaySeconds)
        try Self.atLeast(0, ("auth.jwt.leeway-seconds", jwt.leewaySeconds))
        if let allow = reader.bool(forKey: "auth.allow-anonymous") { allowAnonymous = allow }
        handshakeCookie = reader.string(forKey: "auth.handshake-cookie", default: handshakeCookie)
        subscribeRules = reader.stringArray(forKey: "auth.rules.subscribe", default: [])
        sendRules = reader.stringArray(forKey: "auth.rules.send", default: [])
        do { _ = try AccessRules(subscribe: subscribeRules, send: sendRules) } catch {
            throw Invalid(description: "auth.rules: \(error)")
        }
        for name in reader.stringArray(forKey: "auth.api-keys.names", default: []) {
            let base = "auth.api-keys.\(name)"
            guard let hash = reader.string(forKey: ConfigKey(base + ".sha256")), hash.count == 64, hash.allSatisfy(\.isHexDigit) else {
                throw Invalid(description: "\(base).sha256 must be the 64-hex-digit SHA-256 of the key (switchboard --hash-api-key KEY prints it)")
            }
            let scopes = reader.stringArray(forKey: ConfigKey(base + ".scopes"), default: session.brokerPrefixes)
            apiKeys.append(APIKeyStore.Key(name: name, sha256: hash, scopes: scopes))
        }
        allowedOrigins = reader.stringArray(forKey: "http.allowed-origins", default: [])
        maxConnections = reader.int(forKey: "limits.max-connections", default: maxConnections)
        maxConnectionsPerIP = reader.int(forKey: "limits.max-connections-per-ip", default: maxConnectionsPerIP)
        session.maxSessionsPerUser = reader.int(forKey: "limits.max-sessions-per-user", default: session.maxSessionsPerUser)
        session.maxFramesPerSecond = reader.int(forKey: "limits.frames-per-second", default: session.maxFramesPerSecond)
        session.maxBytesPerSecond = reader.int(forKey: "limits.bytes-per-second", default: session.maxBytesPerSecond)
        try Self.atLeast(1, ("limits.max-connections", maxConnections), ("limits.max-connections-per-ip", maxConnectionsPerIP),
                         ("limits.max-sessions-per-user", session.maxSessionsPerUser))
        // 0: no rate limit.
        try Self.atLeast(0, ("limits.frames-per-second", session.maxFramesPerSecond), ("limits.bytes-per-second", session.maxBytesPerSecond))
        if !reader.bool(forKey: "destinations.user-destinations", default: true) { session.userPrefix = nil }
        session.userDestinationPrefixes = reader.stringArray(forKey: "destinations.user-destination-prefixes", default: session.userDestinationPrefixes)
    }

    mutating func readRedis(_ reader: ConfigReader) throws {
        if let url = reader.string(forKey: "redis.url"), !url.isEmpty {
            var r = RedisSettings(url: url)
            r.channelPrefix = reader.string(forKey: "redis.channel-prefix", default: r.channelPrefix)
            r.commandTimeoutMs = reader.int(forKey: "redis.command-timeout-ms", default: r.commandTimeoutMs)
            r.connectTimeoutMs = reader.int(forKey: "redis.connect-timeout-ms", default: r.connectTimeoutMs)
            try Self.atLeast(1, ("redis.command-timeout-ms", r.commandTimeoutMs), ("redis.connect-timeout-ms", r.connectTimeoutMs))
            do { _ = try RedisConfiguration(url: url) } catch {
                throw Invalid(description: "redis.url '\(Self.redactingPassword(url))' is not a valid redis:// URL: \("\(error)".replacingOccurrences(of: url, with: Self.redactingPassword(url)))")
            }
            for name in reader.stringArray(forKey: "redis.inbound.names", default: []) {
                let base = "redis.inbound.\(name)"
                let kindName = reader.string(forKey: ConfigKey(base + ".type"), default: "channel")
                guard let kind = RedisInboundSetting.Kind(rawValue: kindName) else {
                    throw Invalid(description: "\(base).type '\(kindName)' is not supported (supported: channel, broadcast, stream)")
                }
                var inbound = RedisInboundSetting(name: name, kind: kind)
                func required(_ key: String) throws -> String {
                    guard let v = reader.string(forKey: ConfigKey(base + "." + key)), !v.isEmpty else {
                        throw Invalid(description: "\(base).\(key) is required for a \(kindName) inbound route")
                    }
                    return v
                }
                switch kind {
                case .channel:
                    inbound.channel = try required("channel")
                    inbound.destination = try required("destination")
                    guard session.isBrokerDestination(inbound.destination) else {
                        throw Invalid(description: "\(base).destination '\(inbound.destination)' must start with \(session.brokerPrefixes.joined(separator: " or "))")
                    }
                case .broadcast:
                    inbound.channel = try required("channel")
                case .stream:
                    inbound.stream = try required("stream")
                }
                r.inbound.append(inbound)
            }
            redis = r
        }
        for route in routes where route.kind != .webhook && redis == nil {
            throw Invalid(description: "routes.\(route.name).type \(route.kind.rawValue) needs redis.url")
        }
    }

    mutating func readLog(_ reader: ConfigReader) throws {
        for subsystem in ConfigKeyCatalog.logSubsystems {
            let key = "log.levels.\(subsystem)"
            if let raw = reader.string(forKey: ConfigKey(key)) {
                guard let level = Logger.Level(rawValue: raw) else {
                    throw Invalid(description: "\(key) must be one of trace, debug, info, notice, warning, error, critical; got '\(raw)'")
                }
                log.levels[subsystem] = level
            }
        }
        let formatName = reader.string(forKey: "log.format", default: "text")
        guard let format = LogSettings.Format(rawValue: formatName) else {
            throw Invalid(description: "log.format must be text or json, got '\(formatName)'")
        }
        log.format = format
    }

    /// Throws naming the first key whose value is below `minimum`.
    static func atLeast(_ minimum: Int, _ values: (String, Int)...) throws {
        for (key, value) in values where value < minimum {
            throw Invalid(description: "\(key) must be ≥ \(minimum), got \(value)")
        }
    }

    /// `redis://user:secret@host` → `redis://***@host`, for error messages.
    static func redactingPassword(_ url: String) -> String {
        guard let scheme = url.range(of: "://"), let at = url[scheme.upperBound...].lastIndex(of: "@") else { return url }
        return url[..<scheme.upperBound] + "***" + url[at...]
    }
}
