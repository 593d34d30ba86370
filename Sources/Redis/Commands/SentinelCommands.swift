import NIOCore

/// The address of a Redis server, as a sentinel reports it.
public struct RedisServerAddress: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String { self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)" }
}

extension RedisServerAddress: RESPTokenDecodable {
    /// Decodes the `[host, port]` pair of `SENTINEL get-master-addr-by-name`.
    public init(fromRESP token: RESPToken) throws {
        let parts = try [String](fromRESP: token)
        guard parts.count == 2, let port = Int(parts[1]) else {
            throw RESPDecodeError(token: token, expected: "[host, port]")
        }
        self.init(host: parts[0], port: port)
    }
}

/// `SENTINEL GET-MASTER-ADDR-BY-NAME name`, sent to a sentinel: the current primary of the
/// monitored group `name`, or `nil` when the sentinel does not know it.
public struct SENTINEL_GET_MASTER_ADDR_BY_NAME: RedisCommand {
    public typealias Response = RedisServerAddress?
    public var masterName: String

    public init(masterName: String) { self.masterName = masterName }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 3)
        encoder.encodeBulk("SENTINEL")
        encoder.encodeBulk("GET-MASTER-ADDR-BY-NAME")
        encoder.encodeBulk(self.masterName)
    }
}

/// The reply of `ROLE`: which part the server plays in replication.
public enum RedisRole: Sendable, Hashable, RESPTokenDecodable {
    case primary
    /// A replica, and the primary it replicates from.
    case replica(primary: RedisServerAddress)
    case sentinel

    public init(fromRESP token: RESPToken) throws {
        guard case .array(let items) = token.value, let first = items.first(where: { _ in true }) else {
            throw RESPDecodeError(token: token, expected: "ROLE reply")
        }
        let fields = Swift.Array(items)
        switch try String(fromRESP: first) {
        case "master": self = .primary
        case "slave", "replica":
            guard fields.count >= 3 else { throw RESPDecodeError(token: token, expected: "ROLE replica reply") }
            self = .replica(primary: RedisServerAddress(host: try String(fromRESP: fields[1]), port: try Int(fromRESP: fields[2])))
        case "sentinel": self = .sentinel
        default: throw RESPDecodeError(token: token, expected: "ROLE reply")
        }
    }
}

/// `ROLE`: whether the server is a primary, a replica (of which primary) or a sentinel.
public struct ROLE: RedisCommand {
    public typealias Response = RedisRole

    public init() {}

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 1)
        encoder.encodeBulk("ROLE")
    }
}
