import NIOCore

/// An error reply sent by the server (`-ERR ...` or a RESP3 bulk error).
public struct RedisServerError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The full error message, e.g. `BUSYGROUP Consumer Group name already exists`.
    public var message: String

    public init(message: String) { self.message = message }

    /// The error code: the first word of the message (`ERR`, `WRONGTYPE`, `BUSYGROUP`, `NOAUTH`, ...).
    public var code: String {
        String(self.message.prefix { $0 != " " })
    }

    /// `true` for `XGROUP CREATE` on an existing group.
    public var isBusyGroup: Bool { self.code == "BUSYGROUP" }
    /// `true` when a stream or its consumer group does not exist (`XREADGROUP`, `XAUTOCLAIM`, …).
    public var isNoGroup: Bool { self.code == "NOGROUP" }
    /// `true` for authentication failures (`NOAUTH`, `WRONGPASS`).
    public var isAuthenticationError: Bool { self.code == "NOAUTH" || self.code == "WRONGPASS" }
    /// `true` when an ACL forbids the command, a key or a channel (`NOPERM`).
    public var isPermissionDenied: Bool { self.code == "NOPERM" }
    /// `true` for `EVALSHA` with an unknown script.
    public var isNoScript: Bool { self.code == "NOSCRIPT" }
    /// `true` for a command on a key that does not exist where that is an error (`XINFO STREAM`).
    public var isNoSuchKey: Bool { self.message.hasPrefix("ERR no such key") }
    /// The server is a replica now (`READONLY`): a write did not run.
    public var isReadOnly: Bool { self.code == "READONLY" }

    public var description: String { "RedisServerError(\(self.message))" }
}

/// Client-side errors.
public struct RedisClientError: Error, Hashable, Sendable, CustomStringConvertible {
    enum Base: Hashable, Sendable {
        case notConnected
        case connectionClosed
        case commandTimeout
        case connectTimeout
        case protocolViolation
        case unsolicitedReply
        case tlsConfiguration
        case tlsHandshakeFailed
        case invalidConfiguration
        case shutdown
        case noPrimary
        case notPrimary
        case notCluster
        case clusterUnavailable
        case crossSlot
        case tooManyRedirects
        case queueFull
        case notReplicated
    }

    let base: Base
    /// Additional human readable detail.
    public var detail: String?

    init(_ base: Base, detail: String? = nil) {
        self.base = base
        self.detail = detail
    }

    /// The client has no established connection right now (it may be reconnecting). Commands are not queued.
    public static let notConnected = RedisClientError(.notConnected)
    /// The connection closed before the reply arrived.
    public static let connectionClosed = RedisClientError(.connectionClosed)
    /// No reply arrived within the command timeout; the connection was closed because the reply stream is out of sync.
    public static let commandTimeout = RedisClientError(.commandTimeout)
    /// Connecting (TCP connect plus handshake) took longer than the connect timeout.
    public static let connectTimeout = RedisClientError(.connectTimeout)
    /// The server sent something that violates the protocol (e.g. a reply without a pending command).
    public static let protocolViolation = RedisClientError(.protocolViolation)
    /// A reply arrived while no command was pending.
    public static let unsolicitedReply = RedisClientError(.unsolicitedReply)
    /// The TLS settings cannot be used: a certificate without its key, or a file that cannot be read
    /// (the detail names the setting and the file).
    public static let tlsConfiguration = RedisClientError(.tlsConfiguration)
    /// The TLS handshake failed, or the server dropped the connection during it: an untrusted
    /// certificate (wrong CA), a certificate for another name, a client certificate the server
    /// requires but did not get, or a port without TLS. The detail gives the likely cause.
    public static let tlsHandshakeFailed = RedisClientError(.tlsHandshakeFailed)
    /// The configuration (typically the URL) is invalid.
    public static let invalidConfiguration = RedisClientError(.invalidConfiguration)
    /// The client was shut down.
    public static let shutdown = RedisClientError(.shutdown)
    /// With Sentinel: no sentinel could name the primary (all unreachable, or none knows the master name).
    public static let noPrimary = RedisClientError(.noPrimary)
    /// With Sentinel: the server a sentinel named is not a primary (`ROLE`), e.g. during a failover.
    public static let notPrimary = RedisClientError(.notPrimary)

    /// With Redis Cluster: a seed node answered, but has cluster support disabled (a standalone server).
    public static let notCluster = RedisClientError(.notCluster)
    /// With Redis Cluster: no node could be reached to read the slot map, or no node serves a slot
    /// (the detail names each node's failure).
    public static let clusterUnavailable = RedisClientError(.clusterUnavailable)
    /// With Redis Cluster: the keys of one command (or one `SSUBSCRIBE`) hash to different slots.
    public static let crossSlot = RedisClientError(.crossSlot)
    /// With Redis Cluster: a command was redirected (`MOVED`/`ASK`) or retried more often than
    /// ``RedisClusterConfiguration/maximumRedirects`` allows.
    public static let tooManyRedirects = RedisClientError(.tooManyRedirects)
    /// With Redis Cluster: a node already has ``RedisClusterConfiguration/maximumPendingCommandsPerNode``
    /// commands in flight; the command was not sent (fail fast, nothing is queued).
    public static let queueFull = RedisClientError(.queueFull)
    /// A ``ReplicatedWrite`` was stored on the primary, but fewer replicas than required
    /// acknowledged it within its timeout: a failover may lose it.
    public static let notReplicated = RedisClientError(.notReplicated)

    static func invalidConfiguration(_ detail: String) -> RedisClientError {
        RedisClientError(.invalidConfiguration, detail: detail)
    }

    static func tlsConfiguration(_ detail: String) -> RedisClientError {
        RedisClientError(.tlsConfiguration, detail: detail)
    }

    /// ``connectTimeout`` with a detail saying what was waited for.
    package static func connectTimeout(_ detail: String) -> RedisClientError {
        RedisClientError(.connectTimeout, detail: detail)
    }

    static func tlsHandshakeFailed(_ detail: String) -> RedisClientError {
        RedisClientError(.tlsHandshakeFailed, detail: detail)
    }

    public static func == (lhs: RedisClientError, rhs: RedisClientError) -> Bool { lhs.base == rhs.base }
    public func hash(into hasher: inout Hasher) { hasher.combine(self.base) }

    public var description: String {
        if let detail { return "RedisClientError.\(self.base): \(detail)" }
        return "RedisClientError.\(self.base)"
    }
}
