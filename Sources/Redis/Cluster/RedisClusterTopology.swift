import NIOCore

/// One shard of a Redis Cluster: a primary, its replicas, and the slot ranges it serves.
public struct RedisClusterShard: Sendable, Hashable {
    public var primary: RedisServerAddress
    public var replicas: [RedisServerAddress]
    public var slots: [ClosedRange<Int>]

    public init(primary: RedisServerAddress, replicas: [RedisServerAddress] = [], slots: [ClosedRange<Int>]) {
        self.primary = primary
        self.replicas = replicas
        self.slots = slots
    }
}

/// The slot map of a Redis Cluster, read with `CLUSTER SHARDS` or `CLUSTER SLOTS`.
public struct RedisClusterTopology: Sendable, Hashable {
    /// The shards that serve at least one slot, ordered by their first slot.
    public private(set) var shards: [RedisClusterShard]
    /// For each slot, the index of its shard in ``shards`` (-1: no owner).
    private var owners: [Int16]
    /// Slots whose owner a `MOVED` redirect named after the map was read.
    private var movedSlots: [Int: RedisServerAddress] = [:]
    /// Every node the map lists but those marked failed, whatever its role, with slots or not
    /// (a node that is not here gets none of the cluster's messages); ``nodes`` are those to
    /// connect to.
    public private(set) var members: Set<RedisServerAddress>

    /// - Parameter members: every node the map lists (default: the shards' nodes).
    public init(shards: [RedisClusterShard], members: Set<RedisServerAddress> = []) {
        self.shards = shards.filter { !$0.slots.isEmpty }.sorted { ($0.slots.map(\.lowerBound).min() ?? 0) < ($1.slots.map(\.lowerBound).min() ?? 0) }
        var owners = [Int16](repeating: -1, count: HashSlot.count)
        for (index, shard) in self.shards.enumerated() {
            for range in shard.slots where range.lowerBound >= 0 && range.upperBound < HashSlot.count {
                for slot in range { owners[slot] = Int16(index) }
            }
        }
        self.owners = owners
        self.members = members.union(self.shards.flatMap { [$0.primary] + $0.replicas })
    }

    /// The primary serving `slot`, `nil` when no shard covers it.
    public func primary(for slot: HashSlot) -> RedisServerAddress? {
        if let moved = self.movedSlots[slot.rawValue] { return moved }
        let index = Int(self.owners[slot.rawValue])
        return index < 0 ? nil : self.shards[index].primary
    }

    /// Every primary, in shard order.
    public var primaries: [RedisServerAddress] { self.shards.map(\.primary) }

    /// Every node, primaries first.
    public var nodes: [RedisServerAddress] { self.primaries + self.shards.flatMap(\.replicas) }

    /// Whether every slot has an owner.
    public var coversAllSlots: Bool { !self.owners.contains(-1) }

    /// Records a `MOVED` redirect until the next map is read.
    public mutating func recordMoved(slot: HashSlot, to address: RedisServerAddress) {
        self.movedSlots[slot.rawValue] = address
    }

    /// The same slot assignment (ignoring recorded redirects).
    public func hasSameSlots(as other: RedisClusterTopology) -> Bool { self.shards == other.shards && self.movedSlots.isEmpty }
}

extension RedisClusterTopology: RESPTokenDecodable {
    /// Decodes a `CLUSTER SHARDS` reply (a list of maps with `slots` and `nodes`), or a
    /// `CLUSTER SLOTS` reply (a list of `[start, end, [host, port, id, …], replicas…]`).
    /// In `CLUSTER SHARDS`, the primary is the `master` node whose `health` is `online` (another
    /// `master` is a failed one not yet demoted); a node's address is its `endpoint`, else its `ip`.
    public init(fromRESP token: RESPToken) throws {
        try self.init(fromRESP: token, tls: false)
    }

    /// As ``init(fromRESP:)``; with `tls`, a `CLUSTER SHARDS` node's `tls-port` is taken before
    /// its `port` (a node listening on both lists both, and `port` is the plain one).
    public init(fromRESP token: RESPToken, tls: Bool) throws {
        guard let entries = token.flattenedElements() else { throw RESPDecodeError(token: token, expected: "cluster slot map") }
        var shards: [RedisClusterShard] = []
        var members: Set<RedisServerAddress> = []
        for entry in entries {
            if case .map = entry.value {
                if let shard = try Self.decodeShard(entry, tls: tls, members: &members) { shards.append(shard) }
            } else if let shard = try Self.decodeSlotsEntry(entry) {
                // CLUSTER SLOTS lists one range per entry: merge ranges of one primary.
                if let index = shards.firstIndex(where: { $0.primary == shard.primary }) {
                    shards[index].slots += shard.slots
                } else {
                    shards.append(shard)
                }
            }
        }
        self.init(shards: shards, members: members)
    }

    private static func fields(_ token: RESPToken) throws -> [String: RESPToken] {
        guard let flat = token.flattenedElements(), flat.count % 2 == 0 else { throw RESPDecodeError(token: token, expected: "map") }
        var result: [String: RESPToken] = [:]
        for index in stride(from: 0, to: flat.count, by: 2) {
            result[try String(fromRESP: flat[index])] = flat[index + 1]
        }
        return result
    }

    private static func decodeShard(_ token: RESPToken, tls: Bool, members: inout Set<RedisServerAddress>) throws -> RedisClusterShard? {
        let shard = try self.fields(token)
        guard let slotsToken = shard["slots"], let nodesToken = shard["nodes"] else {
            throw RESPDecodeError(token: token, expected: "CLUSTER SHARDS entry")
        }
        let bounds = try [Int](fromRESP: slotsToken)
        guard bounds.count % 2 == 0 else { throw RESPDecodeError(token: slotsToken, expected: "slot ranges") }
        let ranges = stride(from: 0, to: bounds.count, by: 2).compactMap { bounds[$0] <= bounds[$0 + 1] ? bounds[$0]...bounds[$0 + 1] : nil }
        var primaries: [(address: RedisServerAddress, online: Bool)] = []
        var replicas: [RedisServerAddress] = []
        for nodeToken in try [RESPToken](fromRESP: nodesToken) {
            let node = try self.fields(nodeToken)
            let endpoint = try node["endpoint"].map { try String(fromRESP: $0) }
            let ip = try node["ip"].map { try String(fromRESP: $0) }
            let host = endpoint.flatMap { $0.isEmpty || $0 == "?" ? nil : $0 } ?? ip ?? ""
            let portToken = tls ? node["tls-port"] ?? node["port"] : node["port"] ?? node["tls-port"]
            guard let portToken, let port = try? Int(fromRESP: portToken), !host.isEmpty else { continue }
            let address = RedisServerAddress(host: host, port: port)
            let role = try node["role"].map { try String(fromRESP: $0) } ?? ""
            let health = try node["health"].map { try String(fromRESP: $0) } ?? "online"
            // A node the cluster marked failed (cut off by a partition, maybe still reachable)
            // gets none of its messages: not a member for a subscriber. A loading one is.
            if health != "failed" && health != "fail" { members.insert(address) }
            if role == "master" {
                primaries.append((address, health == "online"))
            } else if health == "online" {
                replicas.append(address)
            }
        }
        guard let primary = primaries.first(where: \.online)?.address ?? primaries.first?.address else { return nil }
        return RedisClusterShard(primary: primary, replicas: replicas, slots: ranges)
    }

    private static func decodeSlotsEntry(_ token: RESPToken) throws -> RedisClusterShard? {
        let parts = try [RESPToken](fromRESP: token)
        guard parts.count >= 3 else { throw RESPDecodeError(token: token, expected: "CLUSTER SLOTS entry") }
        let start = try Int(fromRESP: parts[0])
        let end = try Int(fromRESP: parts[1])
        func address(_ node: RESPToken) throws -> RedisServerAddress? {
            let fields = try [RESPToken](fromRESP: node)
            guard fields.count >= 2, let host = try? String(fromRESP: fields[0]), !host.isEmpty, host != "?" else { return nil }
            return RedisServerAddress(host: host, port: try Int(fromRESP: fields[1]))
        }
        guard start <= end, let primary = try address(parts[2]) else { return nil }
        return RedisClusterShard(primary: primary, replicas: try parts.dropFirst(3).compactMap(address), slots: [start...end])
    }
}
