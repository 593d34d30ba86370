import NIOCore

/// `CLUSTER SHARDS` (Redis 7+): the cluster's shards with their slot ranges and nodes.
public struct CLUSTERSHARDS: RedisCommand {
    public typealias Response = RedisClusterTopology

    public init() {}

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeCommand("CLUSTER", "SHARDS")
    }
}

/// `CLUSTER SLOTS` (deprecated since Redis 7, the fallback for older servers): slot ranges with
/// their primary and replicas.
public struct CLUSTERSLOTS: RedisCommand {
    public typealias Response = RedisClusterTopology

    public init() {}

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeCommand("CLUSTER", "SLOTS")
    }
}

/// `ASKING`: the next command on this connection may address a slot being imported (after an
/// `ASK` redirect).
public struct ASKING: RedisCommand {
    public typealias Response = RedisOK

    public init() {}

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeCommand("ASKING")
    }
}

/// `FCALL function numkeys [key ...] [arg ...]`; routed in a cluster by its keys. The reply is
/// returned undecoded.
public struct FCALL: RedisCommand {
    public typealias Response = RESPToken
    /// The function's name, its keys (all in one slot in a cluster) and its other arguments.
    public var function: String, keys: [String], arguments: [RedisArgument]

    public init(function: String, keys: [String] = [], arguments: [RedisArgument] = []) {
        (self.function, self.keys, self.arguments) = (function, keys, arguments)
    }

    public var keysAffected: [String] { self.keys }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 3 + self.keys.count + self.arguments.count)
        for argument in ["FCALL", self.function] { encoder.encodeBulk(argument) }
        encoder.encodeBulk(self.keys.count)
        for key in self.keys { encoder.encodeBulk(key) }
        for argument in self.arguments { encoder.encodeBulk(argument) }
    }
}
