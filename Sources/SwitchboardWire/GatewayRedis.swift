import NIOCore
import Redis

/// The Redis the gateway (and ``SwitchboardKit``'s publisher and consumer) talks to: one server
/// (directly or through Sentinel) or a Redis Cluster. It gives both one API, and says which
/// Pub/Sub form destinations use: channels (`PUBLISH`/`SUBSCRIBE`) on one server, shard
/// channels (`SPUBLISH`/`SSUBSCRIBE`, see ``RedisChannelNaming``) on a cluster.
public enum GatewayRedis: Sendable {
    case single(RedisClient)
    case cluster(RedisClusterClient)

    /// Whether this is a Redis Cluster (destinations use sharded Pub/Sub).
    public var isCluster: Bool {
        if case .cluster = self { return true }
        return false
    }

    /// The one-server client; nil on a cluster.
    public var singleClient: RedisClient? {
        if case .single(let client) = self { return client }
        return nil
    }

    /// The cluster client; nil on one server.
    public var clusterClient: RedisClusterClient? {
        if case .cluster(let client) = self { return client }
        return nil
    }

    /// The subscription kind of the gateway's own channels (destinations, instances, canary).
    public var gatewayChannelKind: RedisSubscriptionKind { isCluster ? .shardChannel : .channel }

    public func start() {
        switch self {
        case .single(let client): client.start()
        case .cluster(let client): client.start()
        }
    }

    public func shutdown() async {
        switch self {
        case .single(let client): await client.shutdown()
        case .cluster(let client): await client.shutdown()
        }
    }

    /// Pauses reading from the subscriber connections while `condition` holds (see
    /// ``SubscriberReadGate``); call ``refreshSubscriberReading()`` when it may have changed.
    package func pauseSubscriberReading(while condition: @escaping @Sendable () -> Bool) {
        switch self {
        case .single(let client): client.subscriberReading.pause(while: condition)
        case .cluster(let client): client.subscriberReading.pause(while: condition)
        }
    }

    /// Applies the condition of ``pauseSubscriberReading(while:)`` to the subscriber connections now.
    package func refreshSubscriberReading() {
        switch self {
        case .single(let client): client.refreshSubscriberReading()
        case .cluster(let client): client.refreshSubscriberReading()
        }
    }

    /// Times a subscriber connection stopped reading (``pauseSubscriberReading(while:)``).
    package var subscriberReadPauses: Int {
        switch self {
        case .single(let client): client.subscriberReading.pauses
        case .cluster(let client): client.subscriberReading.pauses
        }
    }

    /// Commands no longer wait for the command connection (``RedisClient/stopWaiting()``): at a
    /// graceful stop, before the HTTP connections close, so that a publish held for Redis gets
    /// its explicit refusal. A cluster's commands waiting for their node are bounded by
    /// ``RedisConfiguration/commandTimeout`` already.
    package func stopWaiting() {
        if case .single(let client) = self { client.stopWaiting() }
    }

    /// Commands waiting for the command connection to be back (``RedisConfiguration/reconnectWait``;
    /// a cluster's commands waiting for their node are not counted).
    package var waitingCommands: Int {
        switch self {
        case .single(let client): client.waitingCommands
        case .cluster: 0
        }
    }

    /// A command every new command connection runs first (on a cluster: on every primary).
    public func addConnectionSetup(_ arguments: [RedisArgument]) {
        switch self {
        case .single(let client): client.addConnectionSetup(arguments)
        case .cluster(let client): client.addConnectionSetup(arguments)
        }
    }

    /// Sends `command` (on a cluster, to the primary owning its keys' slot).
    public func send<Command: RedisCommand>(_ command: Command) -> EventLoopFuture<Command.Response> {
        switch self {
        case .single(let client): client.send(command)
        case .cluster(let client): client.send(command)
        }
    }

    public func execute<Command: RedisCommand>(_ command: Command) async throws -> Command.Response {
        switch self {
        case .single(let client): try await client.execute(command)
        case .cluster(let client): try await client.execute(command)
        }
    }

    /// Subscribes with a handler (see ``RedisClient/subscribe(to:kind:handler:)``); on a cluster,
    /// shard channels follow their slot.
    public func subscribe(
        to names: [String], kind: RedisSubscriptionKind, handler: @escaping @Sendable (RedisPubSubMessage) -> Void
    ) async throws -> RedisCallbackSubscription {
        switch self {
        case .single(let client): try await client.subscribe(to: names, kind: kind, handler: handler)
        case .cluster(let client): try await client.subscribe(to: names, kind: kind, handler: handler)
        }
    }

    /// Subscribes to a buffered message stream.
    public func subscribe(to names: [String], kind: RedisSubscriptionKind) async throws -> RedisSubscription {
        switch self {
        case .single(let client): try await client.subscribe(to: names, kind: kind)
        case .cluster(let client): try await client.subscribe(to: names, kind: kind)
        }
    }

    /// Runs `body` on a connection of its own (for blocking reads), closed afterwards: on a
    /// cluster, to the primary owning the slot of `keys`.
    public func withDedicatedConnection<T: Sendable>(forKeys keys: [String], _ body: (RedisConnection) async throws -> T) async throws -> T {
        switch self {
        case .single(let client): return try await client.withDedicatedConnection(body)
        case .cluster(let client):
            do {
                return try await client.withDedicatedConnection(forKeys: keys, body)
            } catch let error as RedisServerError where error.code == "MOVED" {
                // The slot moved: the next connection goes to its new owner.
                _ = try? await client.refreshTopology()
                throw error
            }
        }
    }

    /// Connections lost and re-established (on a cluster: command or subscriber connections to a
    /// node lost).
    public var reconnectCount: Int {
        switch self {
        case .single(let client): client.reconnectCount
        case .cluster(let client): client.connectionLossCount
        }
    }

    /// Changes after which what was created in Redis (consumer groups) should be checked again:
    /// reconnects (on a cluster: a lost connection, e.g. a failover; a resharding moves a stream
    /// together with its groups, so it does not count).
    public var generation: Int { reconnectCount }

    /// Calls `handler` when subscriptions were re-established after messages may have been
    /// missed: after the one-server subscriber connection reconnects (`nil`: every channel), or
    /// with the shard channels re-subscribed after a slot move or a failover.
    public func onSubscriptionsRestored(_ handler: @escaping @Sendable (_ shardChannels: [String]?) -> Void) {
        switch self {
        case .single(let client):
            client.addStateObserver { role, state in
                if role == .subscriptions, state == .connected { handler(nil) }
            }
        case .cluster(let client):
            client.addShardResubscribeObserver { handler($0) }
        }
    }
}

/// A command sent to the primary owning `keys` whatever its own keys (e.g. `FUNCTION LOAD` on the
/// node of the `FCALL` that found the function missing).
public struct KeyRoutedCommand<Command: RedisCommand>: RedisCommand {
    public typealias Response = Command.Response
    public var command: Command
    public var keys: [String]

    public init(_ command: Command, keys: [String]) {
        self.command = command
        self.keys = keys
    }

    public var keysAffected: [String] { keys }
    public var blockingTimeout: TimeAmount? { command.blockingTimeout }
    public func encode(into encoder: inout RESPCommandEncoder) { command.encode(into: &encoder) }
}
