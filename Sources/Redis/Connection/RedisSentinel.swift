import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Where to find the primary through Redis Sentinel: the sentinels to ask and the name of the
/// monitored group (``RedisConfiguration/sentinel``).
///
/// With it, ``RedisConfiguration/host`` and ``RedisConfiguration/port`` are not used: every
/// connection asks the sentinels for the primary's address (``SentinelResolver``) and checks with
/// `ROLE` that the server it reached is a primary. The user, password, database, client name and TLS
/// of the ``RedisConfiguration`` apply to the primary; TLS also to the sentinels.
public struct RedisSentinelConfiguration: Sendable, Hashable {
    /// The sentinels, asked in order until one knows the primary.
    public var nodes: [RedisServerAddress]
    /// The name of the monitored primary (`sentinel monitor <name> …`).
    public var masterName: String
    /// The sentinels' own ACL user and password (`requirepass` of the sentinel), if any.
    public var username: String?
    public var password: String?

    public init(nodes: [RedisServerAddress], masterName: String, username: String? = nil, password: String? = nil) {
        self.nodes = nodes
        self.masterName = masterName
        self.username = username
        self.password = password
    }

    /// Parses `host:port`, `[v6]:port` or `host` (port 26379).
    public static func parseNode(_ text: String) throws -> RedisServerAddress {
        var host = Substring(text).drop { $0 == " " }
        var port = 26379
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { throw RedisClientError.invalidConfiguration("bad sentinel address '\(text)'") }
            let rest = host[host.index(after: close)...]
            host = host[host.index(after: host.startIndex)..<close]
            if !rest.isEmpty {
                guard rest.hasPrefix(":"), let parsed = Int(rest.dropFirst()) else {
                    throw RedisClientError.invalidConfiguration("bad sentinel address '\(text)'")
                }
                port = parsed
            }
        } else if let colon = host.lastIndex(of: ":") {
            guard let parsed = Int(host[host.index(after: colon)...]) else {
                throw RedisClientError.invalidConfiguration("bad sentinel address '\(text)'")
            }
            port = parsed
            host = host[..<colon]
        }
        guard !host.isEmpty, (1...65535).contains(port) else { throw RedisClientError.invalidConfiguration("bad sentinel address '\(text)'") }
        return RedisServerAddress(host: String(host), port: port)
    }
}

/// Finds the current primary of a ``RedisSentinelConfiguration``: asks each sentinel in turn
/// (`SENTINEL GET-MASTER-ADDR-BY-NAME`) and returns the first address one knows.
public struct SentinelResolver: Sendable {
    public let configuration: RedisConfiguration
    public let sentinel: RedisSentinelConfiguration
    /// The index of the sentinel that answered last: asked first next time (shared by copies).
    /// Always from the first, a sentinel gone without a reset (its node lost power) cost every
    /// reconnect of every connection its connect timeout, for as long as it stayed away.
    private let preferred = NIOLockedValueBox(0)

    /// - Precondition: `configuration.sentinel` is set.
    public init(configuration: RedisConfiguration) {
        precondition(configuration.sentinel != nil, "SentinelResolver needs RedisConfiguration.sentinel")
        self.configuration = configuration
        self.sentinel = configuration.sentinel!
    }

    /// The configuration used to talk to the sentinel at `node`: its own credentials, database 0,
    /// RESP with fallback, and the client's TLS and timeouts.
    public func sentinelConfiguration(for node: RedisServerAddress) -> RedisConfiguration {
        var result = self.configuration
        result.sentinel = nil
        result.host = node.host
        result.port = node.port
        result.username = self.sentinel.username
        result.password = self.sentinel.password
        result.database = 0
        result.commandConnectionPerEventLoop = false
        return result
    }

    /// The configuration for connecting to the primary at `address`.
    public func primaryConfiguration(_ address: RedisServerAddress) -> RedisConfiguration {
        var result = self.configuration
        result.host = address.host
        result.port = address.port
        return result
    }

    /// The sentinels in the order they are asked: the one that answered last first, then the
    /// others in the configured order after it.
    public var askingOrder: [RedisServerAddress] {
        let nodes = self.sentinel.nodes
        guard !nodes.isEmpty else { return [] }
        let first = self.preferred.withLockedValue { $0 } % nodes.count
        return Array(nodes[first...] + nodes[..<first])
    }

    /// The sentinel after the one at `index` is asked first from now on, unless another was
    /// preferred meanwhile (connections that all asked the same stale sentinel move on by one,
    /// not by as many as they are).
    func preferNext(after index: Int) {
        let count = self.sentinel.nodes.count
        guard count > 1 else { return }
        self.preferred.withLockedValue { if $0 % count == index { $0 = (index + 1) % count } }
    }

    /// Asks the sentinels, in ``askingOrder``, for the primary's address.
    /// - Throws: ``RedisClientError/noPrimary`` when none knows it (each sentinel's failure in the detail).
    public func resolvePrimary(eventLoopGroup: any EventLoopGroup, logger: Logger) async throws -> RedisServerAddress {
        try await self.resolve(eventLoopGroup: eventLoopGroup, logger: logger).address
    }

    /// ``resolvePrimary(eventLoopGroup:logger:)``, and the index of the sentinel that answered.
    func resolve(eventLoopGroup: any EventLoopGroup, logger: Logger) async throws -> (address: RedisServerAddress, sentinel: Int) {
        var failures: [String] = []
        let nodes = self.sentinel.nodes
        for node in self.askingOrder {
            do {
                // Closed before returning (not in a task of its own that could outlive the caller's event loops).
                let answer = try await RedisConnection.connect(
                    configuration: self.sentinelConfiguration(for: node), eventLoopGroup: eventLoopGroup, logger: logger
                ).closing { try await $0.execute(SENTINEL_GET_MASTER_ADDR_BY_NAME(masterName: self.sentinel.masterName)) }
                if let address = answer {
                    let index = nodes.firstIndex(of: node) ?? 0
                    self.preferred.withLockedValue { $0 = index }
                    return (address, index)
                }
                failures.append("\(node): does not know master '\(self.sentinel.masterName)'")
            } catch {
                failures.append("\(node): \(error)")
            }
        }
        throw RedisClientError(
            .noPrimary, detail: "no sentinel knows the primary of '\(self.sentinel.masterName)': " + failures.joined(separator: "; "))
    }

    /// Connects to the current primary: resolves it, connects, and checks with `ROLE` that the server
    /// is a primary (right after a failover a sentinel may still name the old one).
    /// - Throws: ``RedisClientError/noPrimary``, ``RedisClientError/notPrimary`` or a connect error.
    public func connectToPrimary(
        eventLoopGroup: any EventLoopGroup, logger: Logger, pushHandler: (@Sendable (RedisPubSubMessage) -> Void)? = nil
    ) async throws -> RedisConnection {
        let (address, sentinel) = try await self.resolve(eventLoopGroup: eventLoopGroup, logger: logger)
        let connection: RedisConnection
        do {
            connection = try await RedisConnection.connect(
                configuration: self.primaryConfiguration(address), eventLoopGroup: eventLoopGroup, logger: logger, pushHandler: pushHandler)
        } catch {
            // The sentinel may be behind (cut off from the others, it still names a primary
            // that is gone): the next one is asked first next time. Preferred because it
            // answered last, it was otherwise asked first again at every attempt, for good.
            self.preferNext(after: sentinel)
            throw error
        }
        do {
            let role = try await connection.execute(ROLE())
            guard role == .primary else {
                // The sentinel that named it is behind: the next one is asked first next time.
                self.preferNext(after: sentinel)
                throw RedisClientError(.notPrimary, detail: "\(address) is not a primary (ROLE: \(role))")
            }
            return connection
        } catch {
            await connection.close()
            throw error
        }
    }

    /// Parses a `+switch-master` message (`<name> <old-ip> <old-port> <new-ip> <new-port>`): the new
    /// primary, when it is about this configuration's master name.
    public func newPrimary(fromSwitchMaster payload: String) -> RedisServerAddress? {
        let parts = payload.split(separator: " ")
        guard parts.count == 5, parts[0] == self.sentinel.masterName, let port = Int(parts[4]) else { return nil }
        return RedisServerAddress(host: String(parts[3]), port: port)
    }
}
