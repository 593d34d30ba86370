import NIOCore

/// `WAIT numreplicas timeout`: blocks the connection until the replicas acknowledged every
/// write it made, or until `timeout`; replies how many did.
public struct WAIT: RedisCommand {
    public typealias Response = Int
    public var replicas: Int
    public var timeout: TimeAmount

    public init(replicas: Int, timeout: TimeAmount) {
        self.replicas = replicas
        self.timeout = timeout
    }

    public var blockingTimeout: TimeAmount? { self.timeout }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 3)
        encoder.encodeBulk("WAIT")
        encoder.encodeBulk(self.replicas)
        encoder.encodeBulk(Int(self.timeout.nanoseconds / 1_000_000))
    }
}

/// A write that counts as done only once replicas have it: `command`, then `WAIT replicas
/// timeout` right behind it on the same connection, as one unit (a redirect sends both again).
///
/// It succeeds with `command`'s reply when at least `replicas` replicas acknowledged the write
/// within `timeout`. Otherwise it fails with ``RedisClientError/notReplicated``: the primary
/// stored the write, but it may be lost in a failover. An error reply to `command` fails it
/// as usual. `WAIT` holds its connection while it waits: send these on connections of their own.
public struct ReplicatedWrite<Command: RedisCommand>: RedisCommand {
    public typealias Response = Command.Response
    public var command: Command
    public var wait: WAIT

    public init(_ command: Command, replicas: Int, timeout: TimeAmount) {
        self.command = command
        self.wait = WAIT(replicas: replicas, timeout: timeout)
    }

    public var keysAffected: [String] { self.command.keysAffected }
    public var awaitedReplicas: Int? { self.wait.replicas }
    public var blockingTimeout: TimeAmount? { (self.command.blockingTimeout ?? .zero) + self.wait.timeout }

    public func encode(into encoder: inout RESPCommandEncoder) {
        self.command.encode(into: &encoder)
        self.wait.encode(into: &encoder)
    }
}
