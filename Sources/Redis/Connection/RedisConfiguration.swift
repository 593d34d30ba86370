import NIOCore

/// Which RESP protocol version to negotiate.
public enum RedisProtocolPreference: Sendable, Hashable {
    /// Send `HELLO 3`; if the server answers with an error (other than an authentication error) fall back to
    /// RESP2 and authenticate with `AUTH` / `SELECT` separately.
    case resp3WithFallback
    /// Never send `HELLO`; use RESP2 with `AUTH` / `SELECT`.
    case resp2
}

/// Connection and client settings, usually created from a `redis://` URL.
public struct RedisConfiguration: Sendable, Hashable {
    public var host: String
    public var port: Int
    public var username: String?
    public var password: String?
    public var database: Int
    public var clientName: String?
    public var protocolPreference: RedisProtocolPreference
    /// Timeout for TCP connect plus handshake.
    public var connectTimeout: TimeAmount
    /// Per-command timeout. When it fires the command fails with ``RedisClientError/commandTimeout`` and the
    /// connection is closed (its reply stream is out of sync). Blocking commands get their block time added.
    public var commandTimeout: TimeAmount
    /// How often a connection that only receives (the subscriber connections, a sentinel
    /// watch) sends `PING` to find out it is still there (unanswered within
    /// ``commandTimeout``, it is closed and reconnected); zero: never.
    public var subscriberPingInterval: TimeAmount = .seconds(5)
    /// Limits applied to server replies.
    public var parserLimits: RESPParserLimits
    /// Reconnect backoff: the first retry waits about `minimum`, doubling up to `maximum`, with jitter.
    public var reconnectBackoffMinimum: TimeAmount
    public var reconnectBackoffMaximum: TimeAmount
    /// Default per-subscription buffer size for ``RedisSubscription``.
    public var subscriptionBufferSize: Int
    /// How long ``RedisClient/send(_:)`` holds a command while the command connection is down
    /// (reconnecting after a `CLIENT KILL`, a restart or a failover) before failing it with
    /// ``RedisClientError/notConnected``, together with every command held behind it (none is
    /// sent after an earlier one failed); held commands are written in order once it is back.
    /// `.zero`: fail at once.
    public var reconnectWait: TimeAmount = .seconds(1)
    /// At most this many commands are held (``reconnectWait``); more fail at once with
    /// ``RedisClientError/queueFull``.
    public var maximumWaitingCommands = 10_000
    /// Also keep one command connection per event loop of the group: a command sent from an
    /// event loop then goes out, and its reply comes back, on that loop, with no thread hop
    /// (the shared connection remains for other callers and while a loop's is down).
    /// Commands from one loop keep their order: they all use that loop's connection.
    public var commandConnectionPerEventLoop = false
    /// TLS for every connection; `nil`: plain TCP. A `rediss://` URL turns it on with the defaults
    /// (system trust roots, server name verified); set the CA and client certificate files here.
    public var tls: RedisTLSConfiguration?
    /// Find the primary through Redis Sentinel instead of ``host``/``port`` (`nil`: connect directly).
    public var sentinel: RedisSentinelConfiguration?
    /// Talk to a Redis Cluster discovered from these seed nodes (use ``RedisClusterClient``);
    /// ``host``/``port`` are ignored. Credentials, TLS and timeouts apply to every node.
    public var cluster: RedisClusterConfiguration?

    public init(
        host: String = "localhost",
        port: Int = 6379,
        username: String? = nil,
        password: String? = nil,
        database: Int = 0,
        clientName: String? = nil,
        protocolPreference: RedisProtocolPreference = .resp3WithFallback,
        connectTimeout: TimeAmount = .seconds(5),
        commandTimeout: TimeAmount = .seconds(10),
        parserLimits: RESPParserLimits = .init(),
        reconnectBackoffMinimum: TimeAmount = .milliseconds(100),
        reconnectBackoffMaximum: TimeAmount = .seconds(10),
        subscriptionBufferSize: Int = 1024,
        tls: RedisTLSConfiguration? = nil
    ) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.clientName = clientName
        self.protocolPreference = protocolPreference
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.parserLimits = parserLimits
        self.reconnectBackoffMinimum = reconnectBackoffMinimum
        self.reconnectBackoffMaximum = reconnectBackoffMaximum
        self.subscriptionBufferSize = subscriptionBufferSize
        self.tls = tls
    }

    /// Parses `redis[s]://[[user]:password@]host[:port][/db]`.
    ///
    /// User and password may be percent-encoded; `redis://:pass@host` sets only a password, and
    /// `redis://user:pass@host` an ACL user (sent with `HELLO 3 AUTH user pass`).
    /// IPv6 hosts are written in brackets (`redis://[::1]:6379`). `rediss://` turns on TLS with
    /// the default ``RedisTLSConfiguration`` (system trust roots, server name verified).
    /// Other settings keep their defaults.
    public init(url: String) throws {
        self.init()
        var rest = Substring(url)
        guard let colon = rest.firstIndex(of: ":"), rest[colon...].hasPrefix("://") else {
            throw RedisClientError.invalidConfiguration("missing scheme in '\(url)'")
        }
        let scheme = rest[..<colon].lowercased()
        switch scheme {
        case "redis": break
        case "rediss": self.tls = RedisTLSConfiguration()
        default: throw RedisClientError.invalidConfiguration("unsupported scheme '\(scheme)'")
        }
        rest = rest[colon...].dropFirst(3)
        if let query = rest.firstIndex(of: "?") { rest = rest[..<query] }
        var path: Substring = ""
        if let slash = rest.firstIndex(of: "/") {
            path = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
        }
        if let at = rest.lastIndex(of: "@") {
            let userInfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = userInfo.firstIndex(of: ":") {
                let user = try Self.percentDecode(userInfo[..<colon])
                self.username = user.isEmpty ? nil : user
                self.password = try Self.percentDecode(userInfo[userInfo.index(after: colon)...])
            } else if !userInfo.isEmpty {
                // `redis://password@host` is commonly used for a password-only URL.
                self.password = try Self.percentDecode(userInfo)
            }
        }
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw RedisClientError.invalidConfiguration("bad IPv6 host in '\(url)'") }
            self.host = String(rest[rest.index(after: rest.startIndex)..<close])
            rest = rest[rest.index(after: close)...]
            if rest.hasPrefix(":") {
                self.port = try Self.parsePort(rest.dropFirst(), url: url)
            } else if !rest.isEmpty {
                throw RedisClientError.invalidConfiguration("bad host in '\(url)'")
            }
        } else if let colon = rest.lastIndex(of: ":") {
            self.host = String(rest[..<colon])
            self.port = try Self.parsePort(rest[rest.index(after: colon)...], url: url)
        } else {
            self.host = String(rest)
        }
        if self.host.isEmpty { self.host = "localhost" }
        if !path.isEmpty {
            guard let db = Int(path), db >= 0 else { throw RedisClientError.invalidConfiguration("bad database '\(path)'") }
            self.database = db
        }
    }

    private static func parsePort(_ text: Substring, url: String) throws -> Int {
        guard let port = Int(text), (1...65535).contains(port) else {
            throw RedisClientError.invalidConfiguration("bad port in '\(url)'")
        }
        return port
    }

    private static func percentDecode(_ text: Substring) throws -> String {
        var bytes: [UInt8] = []
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let h = iterator.next(), let l = iterator.next(), let hi = hexValue(h), let lo = hexValue(l) else {
                    throw RedisClientError.invalidConfiguration("bad percent-encoding in URL")
                }
                bytes.append(hi << 4 | lo)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
