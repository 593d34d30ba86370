import Configuration
import Logging
import NIOCore
import STOMPCodec
import SwitchboardAuth
import SwitchboardCore
import SwitchboardWire

/// The sessions' own defaults: the sections below start from them, so each is written once.
private let sessionDefaults = SessionConfiguration()

/// `http.*`: the listening socket, the HTTP API and TLS.
package struct HTTPSettings: Sendable, Equatable {
    package var host = "0.0.0.0"
    package var port = 8080
    /// A second port for the HTTP API only (no WebSocket sessions), served by event loops of
    /// its own (`http.api-threads`) that never run fan-out: API round trips stay short while
    /// the session loops are saturated. `nil`: none (the API is on ``port`` only).
    package var apiPort: Int?
    /// Event loop threads of the API port.
    package var apiThreads = 1
    /// Largest API request body (413 beyond).
    package var maxBodyBytes = 1024 * 1024
    /// Most notifications in one `POST /api/notifications` (413 beyond).
    package var maxBatchItems = 1000
    /// Bytes of API publishes in flight (accepted, not answered yet) on the whole instance;
    /// past it a publish is answered 503 and not published. 0: no bound.
    package var maxPublishBytes = 64 * 1024 * 1024
    package var backlog = 4096
    /// Plain-HTTP (API) connections open per listening port; past it a new one gets 503 and is
    /// closed. 0: no limit.
    package var maxConnections = 10_000
    /// `TCP_NODELAY` on accepted connections: each write leaves at once. Off, the kernel's
    /// Nagle algorithm holds small writes while earlier data is unacknowledged.
    package var tcpNoDelay = true
    /// A connection must complete its first HTTP request (upgrade or API call) in time.
    package var handshakeTimeoutMs = 10_000
    /// Idle keep-alive HTTP connections are closed after this.
    package var idleTimeoutMs = 60_000
    /// Origins allowed to open WebSocket sessions and call the API from a browser; empty: any.
    package var allowedOrigins: [String] = []
    /// PEM certificate chain and private key: when set the port speaks TLS only (https://, wss://).
    package var tls: TLSFiles?
    /// `http.nagle-when-busy-percent`, the old name of `server.busy-percent`.
    var legacyBusyPercent: Int?

    package struct TLSFiles: Sendable, Equatable {
        package var certificateFile: String
        package var keyFile: String
    }

    package init() {}

    /// Reads the `http` scope.
    init(reader: ConfigReader) throws {
        host = reader.string(forKey: "host", default: host)
        port = reader.int(forKey: "port", default: port)
        guard (0...65535).contains(port) else { throw SwitchboardConfiguration.Invalid(description: "http.port must be 0…65535, got \(port)") }
        apiPort = reader.int(forKey: "api-port")
        if let apiPort {
            guard (0...65535).contains(apiPort) else {
                throw SwitchboardConfiguration.Invalid(description: "http.api-port must be 0…65535, got \(apiPort)")
            }
            guard apiPort == 0 || apiPort != port else {
                throw SwitchboardConfiguration.Invalid(description: "http.api-port must differ from http.port (\(port))")
            }
        }
        apiThreads = reader.int(forKey: "api-threads", default: apiThreads)
        guard (1...64).contains(apiThreads) else {
            throw SwitchboardConfiguration.Invalid(description: "http.api-threads must be 1…64, got \(apiThreads)")
        }
        maxBodyBytes = reader.int(forKey: "max-body-bytes", default: maxBodyBytes)
        maxBatchItems = reader.int(forKey: "max-batch-items", default: maxBatchItems)
        maxPublishBytes = reader.int(forKey: "max-publish-bytes", default: maxPublishBytes)
        guard maxPublishBytes >= 0 else {
            throw SwitchboardConfiguration.Invalid(description: "http.max-publish-bytes must be 0 (no limit) or more, got \(maxPublishBytes)")
        }
        backlog = reader.int(forKey: "backlog", default: backlog)
        maxConnections = reader.int(forKey: "max-connections", default: maxConnections)
        guard maxConnections >= 0 else {
            throw SwitchboardConfiguration.Invalid(description: "http.max-connections must be 0 (no limit) or more, got \(maxConnections)")
        }
        tcpNoDelay = reader.bool(forKey: "tcp-nodelay", default: tcpNoDelay)
        legacyBusyPercent = reader.int(forKey: "nagle-when-busy-percent")
        handshakeTimeoutMs = reader.int(forKey: "handshake-timeout-ms", default: handshakeTimeoutMs)
        idleTimeoutMs = reader.int(forKey: "idle-timeout-ms", default: idleTimeoutMs)
        try SwitchboardConfiguration.atLeast(
            1, ("http.max-body-bytes", maxBodyBytes), ("http.max-batch-items", maxBatchItems), ("http.backlog", backlog),
            ("http.handshake-timeout-ms", handshakeTimeoutMs), ("http.idle-timeout-ms", idleTimeoutMs))
        allowedOrigins = try reader.stringArray(forKey: "allowed-origins", default: []).map { entry in
            guard let origin = OriginName.canonical(entry) else {
                throw SwitchboardConfiguration.Invalid(description: "http.allowed-origins entry '\(entry)' is not an origin: scheme://host[:port]")
            }
            return origin
        }
        let certificateFile = reader.string(forKey: "tls.certificate-file")
        let keyFile = reader.string(forKey: "tls.key-file", isSecret: true)
        switch (certificateFile, keyFile) {
        case (nil, nil): tls = nil
        case let (certificateFile?, keyFile?): tls = TLSFiles(certificateFile: certificateFile, keyFile: keyFile)
        default: throw SwitchboardConfiguration.Invalid(description: "http.tls.certificate-file and http.tls.key-file must be set together")
        }
    }
}

/// `stomp.*`: the endpoint and heart-beating.
package struct STOMPSettings: Sendable, Equatable {
    package var path = "/stomp"
    /// The server's heart-beat offer (`stomp.heartbeat.send-ms`, `receive-ms`).
    package var heartBeat = sessionDefaults.heartBeat
    package var heartBeatTolerance = sessionDefaults.heartBeatTolerance
    /// Tick of the per-event-loop heart-beat timer.
    package var heartbeatResolutionMs = 250
    package var connectTimeoutMs = Int(sessionDefaults.connectTimeout.nanoseconds / 1_000_000)

    package init() {}

    /// Reads the `stomp` scope.
    init(reader: ConfigReader) throws {
        path = reader.string(forKey: "path", default: path)
        guard path.hasPrefix("/") else { throw SwitchboardConfiguration.Invalid(description: "stomp.path must start with '/', got '\(path)'") }
        let beat = reader.scoped(to: "heartbeat")
        heartBeat = STOMPHeartBeat(send: beat.int(forKey: "send-ms", default: heartBeat.send), receive: beat.int(forKey: "receive-ms", default: heartBeat.receive))
        try SwitchboardConfiguration.atLeast(0, ("stomp.heartbeat.send-ms", heartBeat.send), ("stomp.heartbeat.receive-ms", heartBeat.receive))
        heartBeatTolerance = beat.double(forKey: "tolerance", default: heartBeatTolerance)
        guard heartBeatTolerance >= 1 else { throw SwitchboardConfiguration.Invalid(description: "stomp.heartbeat.tolerance must be ≥ 1, got \(heartBeatTolerance)") }
        heartbeatResolutionMs = beat.int(forKey: "resolution-ms", default: heartbeatResolutionMs)
        try SwitchboardConfiguration.atLeast(10, ("stomp.heartbeat.resolution-ms", heartbeatResolutionMs))
        connectTimeoutMs = reader.int(forKey: "connect-timeout-ms", default: connectTimeoutMs)
        try SwitchboardConfiguration.atLeast(1, ("stomp.connect-timeout-ms", connectTimeoutMs))
    }

    func apply(to session: inout SessionConfiguration) {
        session.heartBeat = heartBeat
        session.heartBeatTolerance = heartBeatTolerance
        session.connectTimeout = .milliseconds(Int64(connectTimeoutMs))
    }
}

/// `limits.*`: frame sizes, per-session and per-connection limits.
package struct Limits: Sendable, Equatable {
    package var decoder = sessionDefaults.decoderLimits
    package var maxSubscriptions = sessionDefaults.maxSubscriptionsPerSession
    /// Outbound bytes queued for a connection before it is a slow consumer and is closed.
    package var maxPendingBytes = sessionDefaults.maxPendingOutboundBytes
    /// Outbound bytes not yet taken by the connections together, past which the slowest are
    /// closed (0: no cap). Default: half the memory the process may use.
    package var maxPendingBytesTotal = ProcessMemory.available / 2
    /// A replay the connection takes nothing of for this long ends the session (slow consumer).
    package var replayStallTimeoutMs = Int(sessionDefaults.replayStallTimeout.nanoseconds / 1_000_000)
    package var maxTransactionFrames = sessionDefaults.maxFramesPerTransaction
    /// Bytes held by one session's open transactions together.
    package var maxTransactionBytes = sessionDefaults.maxTransactionBytes
    package var maxConnections = 100_000
    package var maxConnectionsPerIP = 10_000
    /// Connections from one address still in their first request (TCP or TLS handshake, the
    /// upgrade or API request not yet in), closed at accept past it (0: no limit). By default
    /// ``maxConnectionsPerIP``: behind a proxy every connection comes from its address.
    package var maxPendingConnectionsPerIP = 10_000
    /// The per-address limits count an IPv6 client by this many leading bits of its address.
    package var ipv6PrefixLength = 64
    package var maxSessionsPerUser = sessionDefaults.maxSessionsPerUser
    /// Token buckets per connection (0: no limit).
    package var framesPerSecond = sessionDefaults.maxFramesPerSecond
    package var bytesPerSecond = sessionDefaults.maxBytesPerSecond

    package init() {}

    /// Reads the `limits` scope.
    init(reader: ConfigReader) throws {
        decoder.maxFrameBytes = reader.int(forKey: "max-frame-bytes", default: decoder.maxFrameBytes)
        decoder.maxHeaders = reader.int(forKey: "max-headers", default: decoder.maxHeaders)
        decoder.maxHeaderLineBytes = reader.int(forKey: "max-header-line-bytes", default: decoder.maxHeaderLineBytes)
        decoder.maxHeaderBytes = reader.int(forKey: "max-header-bytes", default: decoder.maxHeaderBytes)
        decoder.maxBodyBytes = reader.int(forKey: "max-body-bytes", default: decoder.maxFrameBytes)
        maxSubscriptions = reader.int(forKey: "max-subscriptions", default: maxSubscriptions)
        maxPendingBytes = reader.int(forKey: "max-pending-bytes", default: maxPendingBytes)
        maxPendingBytesTotal = reader.int(forKey: "max-pending-bytes-total", default: maxPendingBytesTotal)
        replayStallTimeoutMs = reader.int(forKey: "replay-stall-timeout-ms", default: replayStallTimeoutMs)
        maxTransactionFrames = reader.int(forKey: "max-transaction-frames", default: maxTransactionFrames)
        maxTransactionBytes = reader.int(forKey: "max-transaction-bytes", default: maxTransactionBytes)
        maxConnections = reader.int(forKey: "max-connections", default: maxConnections)
        maxConnectionsPerIP = reader.int(forKey: "max-connections-per-ip", default: maxConnectionsPerIP)
        maxPendingConnectionsPerIP = reader.int(forKey: "max-pending-connections-per-ip", default: maxConnectionsPerIP)
        ipv6PrefixLength = reader.int(forKey: "ipv6-prefix-length", default: ipv6PrefixLength)
        guard (1...128).contains(ipv6PrefixLength) else {
            throw SwitchboardConfiguration.Invalid(description: "limits.ipv6-prefix-length must be 1…128 (bits of an IPv6 address), got \(ipv6PrefixLength)")
        }
        maxSessionsPerUser = reader.int(forKey: "max-sessions-per-user", default: maxSessionsPerUser)
        framesPerSecond = reader.int(forKey: "frames-per-second", default: framesPerSecond)
        bytesPerSecond = reader.int(forKey: "bytes-per-second", default: bytesPerSecond)
        try SwitchboardConfiguration.atLeast(
            1, ("limits.max-frame-bytes", decoder.maxFrameBytes), ("limits.max-headers", decoder.maxHeaders),
            ("limits.max-header-line-bytes", decoder.maxHeaderLineBytes), ("limits.max-subscriptions", maxSubscriptions),
            ("limits.max-header-bytes", decoder.maxHeaderBytes), ("limits.max-body-bytes", decoder.maxBodyBytes),
            ("limits.max-pending-bytes", maxPendingBytes), ("limits.max-transaction-frames", maxTransactionFrames),
            ("limits.max-transaction-bytes", maxTransactionBytes),
            ("limits.max-connections", maxConnections), ("limits.max-connections-per-ip", maxConnectionsPerIP),
            ("limits.max-sessions-per-user", maxSessionsPerUser), ("limits.replay-stall-timeout-ms", replayStallTimeoutMs))
        try SwitchboardConfiguration.atLeast(
            0, ("limits.frames-per-second", framesPerSecond), ("limits.bytes-per-second", bytesPerSecond),
            ("limits.max-pending-bytes-total", maxPendingBytesTotal), ("limits.max-pending-connections-per-ip", maxPendingConnectionsPerIP))
    }

    func apply(to session: inout SessionConfiguration) {
        session.decoderLimits = decoder
        session.maxSubscriptionsPerSession = maxSubscriptions
        session.maxPendingOutboundBytes = maxPendingBytes
        session.replayStallTimeout = .milliseconds(Int64(replayStallTimeoutMs))
        session.maxFramesPerTransaction = maxTransactionFrames
        session.maxTransactionBytes = maxTransactionBytes
        session.maxSessionsPerUser = maxSessionsPerUser
        session.maxFramesPerSecond = framesPerSecond
        session.maxBytesPerSecond = bytesPerSecond
    }
}

/// `destinations.*`: which prefixes are broker, application and user destinations.
package struct DestinationSettings: Sendable, Equatable {
    package var brokerPrefixes = sessionDefaults.brokerPrefixes
    package var applicationPrefixes = sessionDefaults.applicationPrefixes
    /// `/user/...` subscriptions.
    package var userDestinations = sessionDefaults.userPrefix != nil
    package var userDestinationPrefixes = sessionDefaults.userDestinationPrefixes

    package init() {}

    /// Reads the `destinations` scope.
    init(reader: ConfigReader) throws {
        let brokerRead = reader.stringArray(forKey: "broker-prefixes", default: brokerPrefixes)
        brokerPrefixes = brokerRead.filter { !$0.isBlank }
        applicationPrefixes = reader.destinationPrefixes(forKey: "app-prefixes", default: applicationPrefixes)
        // Only blank entries (an empty variable): no broker destination and no default API key
        // scope, surely not meant. An explicit `[]` (`/app` in, `/user` replies out) stays.
        if brokerPrefixes.isEmpty && !brokerRead.isEmpty {
            throw SwitchboardConfiguration.Invalid(
                description: "destinations.broker-prefixes holds only blank entries (an empty variable?): name a prefix (e.g. /topic/), or [] in a file for none")
        }
        for p in brokerPrefixes + applicationPrefixes where !p.hasPrefix("/") {
            throw SwitchboardConfiguration.Invalid(description: "destination prefixes must start with '/', got '\(p)'")
        }
        for p in brokerPrefixes + applicationPrefixes where p.hasPrefix("/~") {
            throw SwitchboardConfiguration.Invalid(
                description: "destination prefixes must not start with '/~' (the gateway's own routing of user destinations), got '\(p)'")
        }
        userDestinations = reader.bool(forKey: "user-destinations", default: userDestinations)
        userDestinationPrefixes = reader.destinationPrefixes(forKey: "user-destination-prefixes", default: userDestinationPrefixes)
        try Self.checkPrefixes("destinations.user-destination-prefixes", userDestinationPrefixes)
    }

    /// Every entry starts with `/`: one without `/` matched no destination (empty entries are
    /// dropped when read, see `ConfigReader.destinationPrefixes`).
    static func checkPrefixes(_ key: String, _ prefixes: [String]) throws {
        if let bad = prefixes.first(where: { !$0.hasPrefix("/") }) {
            throw SwitchboardConfiguration.Invalid(description: "\(key): '\(bad)' must be a destination prefix starting with /")
        }
    }

    func apply(to session: inout SessionConfiguration) {
        session.brokerPrefixes = brokerPrefixes
        session.applicationPrefixes = applicationPrefixes
        if !userDestinations { session.userPrefix = nil }
        session.userDestinationPrefixes = userDestinationPrefixes
    }

    func isBroker(_ d: String) -> Bool { brokerPrefixes.contains { d.hasPrefix($0) } }
    func isApplication(_ d: String) -> Bool { applicationPrefixes.contains { d.hasPrefix($0) } }
}

extension ConfigReader {
    /// A list of destination prefixes without its empty entries: an empty environment variable
    /// (a template rendering an empty list) or a trailing comma gives an empty entry, which would
    /// match every destination.
    func destinationPrefixes(forKey key: ConfigKey, default fallback: [String]) -> [String] {
        stringArray(forKey: key, default: fallback).filter { !$0.isBlank }
    }
}

extension String {
    /// Empty or only whitespace: what a template renders for an unused setting.
    fileprivate var isBlank: Bool { allSatisfy(\.isWhitespace) }
}

/// `history.*`: the per-destination history that resuming subscriptions replay from.
package struct HistorySettings: Sendable, Equatable {
    package var enabled = true
    package var maxLength = 100
    package var ttlMs = 300_000
    package var maxDestinations = 10_000
    /// Bytes kept over every destination on the embedded broker (see ``DestinationHistory/Settings/maxBytes``).
    package var maxBytes = 256 * 1024 * 1024
    /// Destinations (as clients name them) starting with one of these keep no history.
    package var disabledPrefixes: [String] = []
    /// `history.windows.<name>.*`: other windows by destination prefix.
    package var windows: [Window] = []

    package struct Window: Sendable, Equatable {
        package var name: String
        package var prefix: String
        package var maxLength: Int
        package var ttlMs: Int
    }

    package init() {}

    /// Reads the `history` scope.
    init(reader: ConfigReader) throws {
        enabled = reader.bool(forKey: "enabled", default: enabled)
        maxLength = reader.int(forKey: "max-length", default: maxLength)
        ttlMs = reader.int(forKey: "ttl-ms", default: ttlMs)
        maxDestinations = reader.int(forKey: "max-destinations", default: maxDestinations)
        maxBytes = reader.int(forKey: "max-bytes", default: maxBytes)
        disabledPrefixes = reader.destinationPrefixes(forKey: "disabled-prefixes", default: disabledPrefixes)
        try DestinationSettings.checkPrefixes("history.disabled-prefixes", disabledPrefixes)
        try SwitchboardConfiguration.atLeast(
            1, ("history.max-length", maxLength), ("history.ttl-ms", ttlMs), ("history.max-destinations", maxDestinations),
            ("history.max-bytes", maxBytes))
        let windowsReader = reader.scoped(to: "windows")
        windows = try windowsReader.stringArray(forKey: "names", default: []).map { name in
            let window = windowsReader.scoped(to: ConfigKey([name]))
            let base = "history.windows.\(name)"
            guard let prefix = window.string(forKey: "prefix"), prefix.hasPrefix("/") else {
                throw SwitchboardConfiguration.Invalid(description: "\(base).prefix is required and must start with '/'")
            }
            let w = Window(
                name: name, prefix: prefix, maxLength: window.int(forKey: "max-length", default: maxLength),
                ttlMs: window.int(forKey: "ttl-ms", default: ttlMs))
            try SwitchboardConfiguration.atLeast(1, ("\(base).max-length", w.maxLength), ("\(base).ttl-ms", w.ttlMs))
            return w
        }
    }

    /// The history's own settings, or nil when history is off.
    var store: DestinationHistory.Settings? {
        guard enabled else { return nil }
        var settings = DestinationHistory.Settings()
        settings.maxLength = maxLength
        settings.ttl = .milliseconds(Int64(ttlMs))
        settings.maxDestinations = maxDestinations
        settings.maxBytes = maxBytes
        settings.disabledPrefixes = disabledPrefixes
        settings.windows = windows.map { .init(prefix: $0.prefix, maxLength: $0.maxLength, ttl: .milliseconds(Int64($0.ttlMs))) }
        return settings
    }
}

/// `server.*`: threads, write coalescing, busy mode, shutdown.
package struct ServerSettings: Sendable, Equatable {
    /// One per core, at most ``FanoutHub/maxShards`` (a bigger host started with none).
    package var threads = min(System.coreCount, FanoutHub.maxShards)
    /// Flush passes of one event loop closer together than this are merged (0: never; below
    /// saturation each batch is flushed at once, and busy mode widens the spacing).
    package var writeCoalesceMicros = 0
    /// The same spacing while the loop is saturated (`busyPercent`).
    package var busyWriteCoalesceMicros = 10_000
    /// CPU share of an event loop's thread (per cent) from which the loop is in busy mode; 0: never.
    package var busyPercent = 50
    package var shutdownGraceMs = 5_000
    /// On SIGTERM: how long readiness is false before sessions are told to reconnect.
    package var drainDelayMs = 1_000
    /// See ``FanoutHub/maxBacklogBytes``.
    package var maxFanoutBacklogBytes = 64 * 1024 * 1024
    /// See ``FanoutHub/admissionTimeout``.
    package var publishAdmissionTimeoutMs = 10_000

    package init() {}

    /// Reads the `server` scope; `legacyBusyPercent` is `http.nagle-when-busy-percent`.
    init(reader: ConfigReader, legacyBusyPercent: Int?) throws {
        threads = reader.int(forKey: "threads", default: threads)
        guard (1...FanoutHub.maxShards).contains(threads) else {
            throw SwitchboardConfiguration.Invalid(description: "server.threads must be 1…\(FanoutHub.maxShards), got \(threads)")
        }
        writeCoalesceMicros = reader.int(forKey: "write-coalesce-us", default: writeCoalesceMicros)
        busyWriteCoalesceMicros = reader.int(forKey: "write-coalesce-busy-us", default: busyWriteCoalesceMicros)
        busyPercent = reader.int(forKey: "busy-percent", default: legacyBusyPercent ?? busyPercent)
        for (key, value, range) in [
            ("server.write-coalesce-us", writeCoalesceMicros, 0...100_000),
            ("server.write-coalesce-busy-us", busyWriteCoalesceMicros, 0...100_000),
            ("server.busy-percent", busyPercent, 0...100),
        ] where !range.contains(value) {
            throw SwitchboardConfiguration.Invalid(description: "\(key) must be \(range.lowerBound)…\(range.upperBound), got \(value)")
        }
        shutdownGraceMs = reader.int(forKey: "shutdown-grace-ms", default: shutdownGraceMs)
        drainDelayMs = reader.int(forKey: "drain-delay-ms", default: drainDelayMs)
        maxFanoutBacklogBytes = reader.int(forKey: "max-fanout-backlog-bytes", default: maxFanoutBacklogBytes)
        publishAdmissionTimeoutMs = reader.int(forKey: "publish-admission-timeout-ms", default: publishAdmissionTimeoutMs)
        try SwitchboardConfiguration.atLeast(
            0, ("server.shutdown-grace-ms", shutdownGraceMs), ("server.drain-delay-ms", drainDelayMs),
            ("server.max-fanout-backlog-bytes", maxFanoutBacklogBytes))
        try SwitchboardConfiguration.atLeast(1, ("server.publish-admission-timeout-ms", publishAdmissionTimeoutMs))
    }
}

/// `console.*`.
package struct ConsoleSettings: Sendable, Equatable {
    package var enabled = true
    package var path = "/console"

    package init() {}

    /// Reads the `console` scope.
    init(reader: ConfigReader) throws {
        enabled = reader.bool(forKey: "enabled", default: enabled)
        path = reader.string(forKey: "path", default: path)
        guard path.hasPrefix("/"), path.count > 1 else { throw SwitchboardConfiguration.Invalid(description: "console.path must start with '/', got '\(path)'") }
        // The gateway's own GET paths: the router's duplicate trapped at start-up. Compared as
        // the router reads them (empty components dropped), patterns refused.
        let trimmed = "/" + path.split(separator: "/").joined(separator: "/")
        if path.contains(where: { "*:{}".contains($0) }) || ["/health", "/health/live", "/health/ready", "/metrics", "/api/presence"].contains(trimmed)
            || trimmed.hasPrefix("/api/users/")
        {
            throw SwitchboardConfiguration.Invalid(
                description:
                    "console.path must not be one of the gateway's own paths (/health, /health/live, /health/ready, /metrics, /api/presence, /api/users/…) or contain * : { }, got '\(path)'"
            )
        }
    }
}

/// `log.*`: the level, `log.levels.<subsystem>` over it, and the format.
package struct LogSettings: Sendable, Equatable {
    package enum Format: String, Sendable { case text, json }
    package var level: Logger.Level = .info
    package var format = Format.text
    /// Levels by subsystem (`server`, `session`, `http`, `redis`, `routes`).
    package var levels: [String: Logger.Level] = [:]

    package init() {}

    /// Reads the `log` scope.
    init(reader: ConfigReader) throws {
        func parsedLevel(_ key: String) throws -> Logger.Level? {
            guard let raw = reader.string(forKey: ConfigKey(key)) else { return nil }
            guard let parsed = Logger.Level(rawValue: raw) else {
                throw SwitchboardConfiguration.Invalid(description: "log.\(key) must be one of trace, debug, info, notice, warning, error, critical; got '\(raw)'")
            }
            return parsed
        }
        if let parsed = try parsedLevel("level") { level = parsed }
        for subsystem in ConfigKeyCatalog.logSubsystems {
            if let parsed = try parsedLevel("levels.\(subsystem)") { levels[subsystem] = parsed }
        }
        let formatName = reader.string(forKey: "format", default: "text")
        guard let parsed = Format(rawValue: formatName) else {
            throw SwitchboardConfiguration.Invalid(description: "log.format must be text or json, got '\(formatName)'")
        }
        format = parsed
    }
}

/// `auth.*`: JWT verification, anonymous sessions, access rules and API keys.
package struct AuthSettings: Sendable {
    /// JWT verification keys; none configured means no authentication.
    package var jwt = JWTKeySettings()
    /// Whether sessions without a token are accepted; default: yes without JWT keys, no with.
    package var allowAnonymous: Bool?
    /// Cookie holding a token at the handshake (the `access_token` query parameter works too).
    package var handshakeCookie = "access_token"
    package var subscribeRules: [String] = []
    package var sendRules: [String] = []
    /// Where `x-presence` join/leave notices may be asked for; empty: nowhere.
    package var presenceRules: [String] = []
    package var apiKeys: [APIKeyStore.Key] = []

    package init() {}

    /// Reads the `auth` scope; an API key's scopes default to `brokerPrefixes`.
    init(reader: ConfigReader, brokerPrefixes: [String]) throws {
        let jwtReader = reader.scoped(to: "jwt")
        jwt.hmacSecret = jwtReader.string(forKey: "hmac-secret", isSecret: true)
        jwt.publicKeyFiles = jwtReader.stringArray(forKey: "public-key-files", default: [])
        jwt.jwksFile = jwtReader.string(forKey: "jwks-file")
        // Blank values are unset: a template renders an unused setting as an empty variable.
        jwt.keptClaims = jwtReader.stringArray(forKey: "claims", default: []).filter { !$0.isBlank }
        jwt.audience = jwtReader.string(forKey: "audience").flatMap { $0.isBlank ? nil : $0 }
        jwt.issuer = jwtReader.string(forKey: "issuer").flatMap { $0.isBlank ? nil : $0 }
        jwt.leewaySeconds = jwtReader.int(forKey: "leeway-seconds", default: jwt.leewaySeconds)
        try SwitchboardConfiguration.atLeast(0, ("auth.jwt.leeway-seconds", jwt.leewaySeconds))
        allowAnonymous = reader.bool(forKey: "allow-anonymous")
        // Without a key nothing checks a token: "no anonymous clients" would let every client
        // in as anonymous (a misspelt key variable, dropped with a warning, got there).
        if allowAnonymous == false && jwt.isEmpty {
            throw SwitchboardConfiguration.Invalid(
                description: "auth.allow-anonymous=false needs a key to check tokens with: auth.jwt.hmac-secret, auth.jwt.public-key-files or auth.jwt.jwks-file")
        }
        // Token checks without a key to check with: every client would be let in as anonymous.
        if jwt.isEmpty, let set = [("audience", jwt.audience != nil), ("issuer", jwt.issuer != nil), ("claims", !jwt.keptClaims.isEmpty)].first(where: \.1) {
            throw SwitchboardConfiguration.Invalid(
                description: "auth.jwt.\(set.0) is set but no key checks tokens: set auth.jwt.hmac-secret, auth.jwt.public-key-files or auth.jwt.jwks-file")
        }
        handshakeCookie = reader.string(forKey: "handshake-cookie", default: handshakeCookie)
        subscribeRules = reader.stringArray(forKey: "rules.subscribe", default: [])
        sendRules = reader.stringArray(forKey: "rules.send", default: [])
        presenceRules = reader.stringArray(forKey: "rules.presence", default: [])
        do { _ = try AccessRules(subscribe: subscribeRules, send: sendRules, presence: presenceRules) } catch {
            throw SwitchboardConfiguration.Invalid(description: "auth.rules: \(error)")
        }
        let keysReader = reader.scoped(to: "api-keys")
        apiKeys = try keysReader.stringArray(forKey: "names", default: []).map { name in
            let key = keysReader.scoped(to: ConfigKey([name]))
            guard let hash = key.string(forKey: "sha256"), hash.count == 64, hash.allSatisfy(\.isHexDigit) else {
                throw SwitchboardConfiguration.Invalid(
                    description: "auth.api-keys.\(name).sha256 must be the 64-hex-digit SHA-256 of the key (switchboard --hash-api-key KEY prints it)")
            }
            let scopes = key.stringArray(forKey: "scopes", default: brokerPrefixes)
            // A scope is a destination prefix: an empty one (an empty entry of an environment
            // list) would allow every destination.
            if let bad = scopes.first(where: { !$0.hasPrefix("/") }) {
                throw SwitchboardConfiguration.Invalid(description: "auth.api-keys.\(name).scopes: '\(bad)' must be a destination prefix starting with /")
            }
            return APIKeyStore.Key(name: name, sha256: hash, scopes: scopes)
        }
    }
}
