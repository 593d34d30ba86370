import NIOCore

/// `WAIT numreplicas timeout`: blocks the connection until the replicas acknowledged every
/// write it made, or until `timeout`; replies how many did.
public struct WAIT: RedisCommand, Hashable {
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
        encoder.encodeBulk(self.timeoutMilliseconds)
    }

    /// The timeout in whole milliseconds, rounded up and at least 1: `WAIT n 0` blocks until the
    /// replicas answer, however long that takes.
    var timeoutMilliseconds: Int {
        let (whole, part) = self.timeout.nanoseconds.quotientAndRemainder(dividingBy: 1_000_000)
        return Int(max(1, whole + (part > 0 ? 1 : 0)))
    }
}

/// A write that counts as done only once replicas have it: `command`, followed on the same
/// connection by a `WAIT replicas timeout`.
///
/// The connection writes one `WAIT` per flush behind all the replicated writes of that flush
/// (a `WAIT` covers every earlier write of its connection), so pipelined writes wait for their
/// replicas together: group commit. A write succeeds with `command`'s reply when at least
/// `replicas` replicas acknowledged it within `timeout`; otherwise it fails with
/// ``RedisClientError/notReplicated`` (the primary stored it, a failover may lose it). An error
/// reply to `command` fails it at once, as usual. `WAIT` holds its connection while it waits:
/// send these on connections of their own.
public struct ReplicatedWrite<Command: RedisCommand>: RedisCommand {
    public typealias Response = Command.Response
    public var command: Command
    public var wait: WAIT

    public init(_ command: Command, replicas: Int, timeout: TimeAmount) {
        self.command = command
        self.wait = WAIT(replicas: replicas, timeout: timeout)
    }

    public var keysAffected: [String] { self.command.keysAffected }
    public var replicaWait: WAIT? { self.wait }
    public var blockingTimeout: TimeAmount? { self.command.blockingTimeout }

    public func encode(into encoder: inout RESPCommandEncoder) {
        self.command.encode(into: &encoder)
    }
}
