import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A client of a Redis Cluster, modelled on valkey-swift's `ValkeyClusterClient`.
///
/// It reads the slot map from the seed nodes of ``RedisConfiguration/cluster`` (`CLUSTER SHARDS`,
/// or `CLUSTER SLOTS` on servers before Redis 7) and sends each command to the primary that owns
/// the slot of its ``RedisCommand/keysAffected`` (commands without keys go to any primary), over
/// one pipelined command connection per primary, opened on first use. `MOVED` and `ASK` redirects
/// are followed, `TRYAGAIN`/`CLUSTERDOWN` and unreachable nodes retried after re-reading the map,
/// up to ``RedisClusterConfiguration/maximumRedirects`` (decisions: ``ClusterRequestStateMachine``).
/// The map is read again on every `MOVED`, lost connection and server-side unsubscribe, and every
/// ``RedisClusterConfiguration/topologyRefreshInterval``.
///
/// Sharded Pub/Sub (`subscribe(to:kind: .shardChannel)`) keeps one subscriber connection per node
/// that owns subscribed slots; when a slot moves or its primary fails over, the channels are
/// subscribed again on the new owner (see ``ShardedSubscriptionPlan``). Channel and pattern
/// subscriptions use one connection to any node (the cluster forwards `PUBLISH` to every node).
///
/// Credentials, TLS and timeouts of the ``RedisConfiguration`` apply to every node; the database
/// must be 0 (the only one a cluster has).
public final class RedisClusterClient: Sendable {
    public let configuration: RedisConfiguration
    let cluster: RedisClusterConfiguration
    let eventLoopGroup: any EventLoopGroup
    let logger: Logger
    /// Sinks and reference counts of sharded subscriptions (never attached: ``reconcile()`` sends).
    /// Pauses reading from the subscriber connections while the application says so (see
    /// ``SubscriberReadGate``); ``refreshSubscriberReading()`` after the condition changed.
    package let subscriberReading = SubscriberReadGate()

    /// Applies ``subscriberReading``'s condition to every subscriber connection.
    package func refreshSubscriberReading() {
        let connections = state.withLockedValue { Array($0.subscriberConnections.values) + [$0.classicConnection].compactMap { $0 } }
        for connection in connections { subscriberReading.apply(to: connection) }
    }

    let shardRegistry = SubscriptionRegistry()
    /// Channel and pattern subscriptions, attached to the classic subscriber connection.
    let classicRegistry = SubscriptionRegistry()

    struct State {
        var started = false
        var isShutdown = false
        var topology: RedisClusterTopology?
        var commandConnections: [RedisServerAddress: Task<RedisConnection, any Error>] = [:]
        var pending: [RedisServerAddress: Int] = [:]
        var refresh: Task<RedisClusterTopology, any Error>?
        var tasks: [Task<Void, Never>] = []
        var refreshRequested = false
        /// Sharded subscriptions: each node's subscriber connection and confirmed channels.
        var subscriberConnections: [RedisServerAddress: RedisConnection] = [:]
        var subscribed: [RedisServerAddress: Set<String>] = [:]
        var subscriptionsPending = false
        var reconcileTask: Task<Void, Never>?
        var reconcileRequests = 0
        /// The requests the last finished pass covered (those made before it started).
        var reconciledThrough = 0
        /// Callers of ``reconcileSubscriptions()`` waiting for a pass that covers their request.
        var reconcileWaiters: [(request: Int, continuation: CheckedContinuation<Void, Never>)] = []
        var classicConnection: RedisConnection?
        /// The node ``classicConnection`` is open to.
        var classicNode: RedisServerAddress?
        var topologyRefreshes = 0
        var setup: [[RedisArgument]] = []
        /// Shard channels confirmed on some node before: subscribing them again is a re-subscription.
        var everSubscribed: Set<String> = []
        var resubscribeObservers: [@Sendable ([String]) -> Void] = []
        var connectionLosses = 0
        /// Command connections open and set up, for ``send(_:)``'s direct path.
        var readyConnections: [RedisServerAddress: RedisConnection] = [:]
        /// ``send(_:)``s waiting, in order, for their node's command connection (a key is present
        /// while it opens and while the queue is written on it).
        var queuedSends: [RedisServerAddress: [QueuedSend]] = [:]
        /// The order of ``send(_:)``'s commands per slot, through redirects.
        var order = SlotOrderStateMachine<DetouredSend>()
        /// The tasks running a slot's detour (awaited by ``shutdown()``).
        var detourRunners: [Int: Task<Void, Never>] = [:]
        var slotMapChanges = 0
    }

    let state = NIOLockedValueBox(State())
    /// Tasks of its own, ended by ``shutdown()``.
    let background = BackgroundTasks()

    /// - Throws: ``RedisClientError/invalidConfiguration`` without seed nodes, or with a database
    ///   other than 0.
    public init(
        configuration: RedisConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "RedisClusterClient")
    ) throws {
        guard let cluster = configuration.cluster, !cluster.nodes.isEmpty else {
            throw RedisClientError.invalidConfiguration("a cluster client needs RedisConfiguration.cluster with at least one seed node")
        }
        guard configuration.database == 0 else {
            throw RedisClientError.invalidConfiguration("Redis Cluster has only database 0 (configured: \(configuration.database))")
        }
        guard configuration.sentinel == nil else {
            throw RedisClientError.invalidConfiguration("cluster and sentinel are mutually exclusive")
        }
        self.configuration = configuration
        self.cluster = cluster
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        // The sharded registry's "sender" asks for a reconcile pass and completes after it.
        _ = self.shardRegistry.attach { [weak self] _ in
            let promise = eventLoopGroup.any().makePromise(of: Void.self)
            guard let self else {
                promise.succeed()
                return promise.futureResult
            }
            let started = self.background.run {
                await self.reconcileSubscriptions()
                promise.succeed()
            }
            if !started { promise.succeed() }
            return promise.futureResult
        }
    }

    /// Starts the background work (periodic map refresh, subscription upkeep). Commands may be sent
    /// before; they read the map on first use.
    public func start() {
        self.state.withLockedValue { state in
            guard !state.started, !state.isShutdown else { return }
            state.started = true
            state.tasks.append(Task { await self.maintenanceLoop() })
            state.tasks.append(Task { await self.classicSubscriberLoop() })
        }
    }

    /// Closes every connection and finishes all subscriptions.
    public func shutdown() async {
        let (tasks, connections, commands) = self.state.withLockedValue { state in
            state.isShutdown = true
            let result = (
                state.tasks + (state.reconcileTask.map { [$0] } ?? []),
                Array(state.subscriberConnections.values) + (state.classicConnection.map { [$0] } ?? []),
                Array(state.commandConnections.values)
            )
            state.tasks = []
            state.commandConnections = [:]
            state.readyConnections = [:]
            state.subscriberConnections = [:]
            state.subscribed = [:]
            state.classicConnection = nil
            return result
        }
        for task in tasks { task.cancel() }
        for connection in connections { await connection.close() }
        // Connection attempts in flight end (bounded by the connect timeout) before the caller
        // may shut its event loops down.
        for task in commands { try? await task.value.close() }
        for task in tasks { await task.value }
        // A slot-map read in flight (it stops before its next node).
        _ = try? await self.state.withLockedValue({ $0.refresh })?.value
        // Its own tasks (openings, reconciles, closings) complete their promises before the loops
        // go; an opening that failed hands its queue to the detours. Detoured sends fail now (the
        // client is shut down), not after their timeout: their promises are completed while the
        // caller's event loops still run.
        await self.background.close(within: .seconds(3), logger: self.logger)
        // Until no new one is left: one may have started while the others were awaited (a
        // finished runner can stay recorded, so those awaited are remembered).
        var awaited = Set<Task<Void, Never>>()
        while true {
            let runners = self.state.withLockedValue { $0.detourRunners.values.filter { !awaited.contains($0) } }
            if runners.isEmpty { break }
            for runner in runners {
                await runner.value
                awaited.insert(runner)
            }
        }
        self.shardRegistry.finishAll()
        self.classicRegistry.finishAll()
    }

    /// Adds a command that every command connection (one per primary) runs once connected, before
    /// anything else is sent on it (e.g. `FUNCTION LOAD REPLACE`: functions are per node, so each
    /// primary, and a replica promoted later, gets them before the first `FCALL`). An error reply is
    /// logged, not fatal.
    /// A command equal to one added before is not added again (one per publisher or consumer
    /// sharing the client would otherwise run at every reconnect).
    public func addConnectionSetup(_ arguments: [RedisArgument]) {
        self.state.withLockedValue { state in
            if !state.setup.contains(arguments) { state.setup.append(arguments) }
        }
    }

    /// Opens a connection that the caller owns (and must close) to the primary owning the slot of
    /// `keys` (any primary without keys), e.g. for a blocking `XREADGROUP` on one stream. It does not
    /// follow a later move of the slot: a `MOVED` reply tells the caller to open a new one.
    public func makeDedicatedConnection(forKeys keys: [String]) async throws -> RedisConnection {
        try await self.connect(to: try await self.node(for: try HashSlot(keys: keys)))
    }

    /// The slot map last read; `nil` before the first.
    public var topology: RedisClusterTopology? { self.state.withLockedValue { $0.topology } }

    /// How many times the slot map was read.
    public var topologyRefreshCount: Int { self.state.withLockedValue { $0.topologyRefreshes } }

    /// ``send(_:)``s that left the direct way (redirected, or their node unreachable) and waited
    /// in their slot's detour, in all.
    public var detouredSendCount: Int { self.state.withLockedValue { $0.order.detouredCount } }

    // MARK: Commands

    /// Executes `command` on the primary owning its keys' slot, following redirects.
    /// - Throws: ``RedisClientError/crossSlot`` for keys in different slots, ``RedisServerError``,
    ///   ``RedisClientError/tooManyRedirects``, ``RedisClientError/queueFull``, connection errors.
    public func execute<Command: RedisCommand>(_ command: Command) async throws -> Command.Response {
        try Command.Response(fromRESP: try await self.executeRaw(command))
    }

    /// Executes `command` and returns the undecoded reply.
    public func executeRaw<Command: RedisCommand>(_ command: Command) async throws -> RESPToken {
        try await self.executeRaw(command, deadline: .now() + self.configuration.commandTimeout).reply
    }

    /// Executes `command`, retrying until `deadline`, and says where it ran: its node, and whether
    /// it needed `ASKING` there (an `ASK` redirect).
    func executeRaw<Command: RedisCommand>(
        _ command: Command, deadline: NIODeadline
    ) async throws -> (reply: RESPToken, node: RedisServerAddress, asking: Bool) {
        let slot = try HashSlot(keys: command.keysAffected)
        var machine = ClusterRequestStateMachine(maximumAttempts: self.cluster.maximumRedirects, retryDelay: self.cluster.retryDelay, deadline: deadline)
        var node = try await self.node(for: slot)
        var asking = false
        while true {
            guard !self.state.withLockedValue({ $0.isShutdown }) else { throw RedisClientError.shutdown }
            let failure: ClusterRequestStateMachine.Failure
            do {
                return (try await self.send(command, to: node, asking: asking, deadline: deadline), node, asking)
            } catch let error as ClusterSendError {
                failure = error.failure
            } catch {
                failure = .other(error)
            }
            switch machine.failed(failure, from: node) {
            case .follow(let target, let isAsk, let moved):
                if let moved {
                    self.state.withLockedValue { $0.topology?.recordMoved(slot: moved, to: target) }
                    self.requestRefresh()
                }
                node = target
                asking = isAsk
            case .retryAfterRefresh(let delay):
                _ = try? await self.refreshTopology()
                try await Task.sleep(for: .nanoseconds(delay.nanoseconds))
                node = try await self.node(for: slot)
                asking = false
            case .fail(let error, let refresh):
                if refresh { self.requestRefresh() }
                throw error
            }
        }
    }

    /// Sends `commands` as pipelines, one per node, each in the given order (commands for one slot
    /// keep their relative order); redirected commands are then retried one by one, in order.
    /// Returns one result per command.
    public func pipeline(_ commands: [any RedisCommand]) async -> [Result<RESPToken, any Error>] {
        var results = [Result<RESPToken, any Error>?](repeating: nil, count: commands.count)
        var byNode: [RedisServerAddress: [Int]] = [:]
        for (index, command) in commands.enumerated() {
            do {
                byNode[try await self.node(for: try HashSlot(keys: command.keysAffected)), default: []].append(index)
            } catch {
                results[index] = .failure(error)
            }
        }
        await withTaskGroup(of: [(Int, Result<RESPToken, any Error>)].self) { group in
            for (node, indices) in byNode {
                group.addTask {
                    do {
                        let connection = try await self.commandConnection(to: node)
                        try self.admit(indices.count, to: node)
                        defer { self.release(indices.count, from: node) }
                        let futures = indices.map { connection.sendRaw(commands[$0]) }
                        var out: [(Int, Result<RESPToken, any Error>)] = []
                        for (index, future) in zip(indices, futures) {
                            do { out.append((index, .success(try await future.get()))) } catch { out.append((index, .failure(error))) }
                        }
                        return out
                    } catch {
                        return indices.map { ($0, .failure(error)) }
                    }
                }
            }
            for await part in group { for (index, result) in part { results[index] = result } }
        }
        for index in results.indices {
            guard case .failure(let error) = results[index] else { continue }
            let redirected = (error as? RedisServerError)?.isClusterRefusal ?? false
            if redirected || error is ChannelError || (error as? RedisClientError) == .notConnected {
                do {
                    results[index] = .success(try await self.executeRaw(commands[index]))
                } catch {
                    results[index] = .failure(error)
                }
            }
        }
        return results.map { $0 ?? .failure(RedisClientError.notConnected) }
    }

    struct ClusterSendError: Error {
        var failure: ClusterRequestStateMachine.Failure
    }

    /// One attempt on one node, with `ASKING` first after an `ASK` redirect.
    private func send<Command: RedisCommand>(
        _ command: Command, to node: RedisServerAddress, asking: Bool, deadline: NIODeadline = .distantFuture
    ) async throws -> RESPToken {
        let connection: RedisConnection
        do {
            connection = try await self.commandConnection(to: node)
        } catch {
            throw ClusterSendError(failure: .unreachable(error))
        }
        // Connecting, a refresh of the map or a retry's wait may have taken the rest of the
        // command timeout: a command is never sent after it.
        guard NIODeadline.now() < deadline else {
            throw RedisClientError(.clusterUnavailable, detail: "the command timeout passed while connecting to \(node); not sent")
        }
        do {
            try self.admit(1, to: node)
        } catch {
            throw ClusterSendError(failure: .other(error))
        }
        defer { self.release(1, from: node) }
        let (askingReply, reply): (EventLoopFuture<RESPToken>?, EventLoopFuture<RESPToken>) =
            asking ? connection.sendRawAsking(command) : (nil, connection.sendRaw(command))
        do {
            _ = try await askingReply?.get()
            return try await reply.get()
        } catch let error as RedisServerError {
            throw ClusterSendError(failure: .server(error))
        } catch let error as RedisClientError where error == .connectionClosed || error == .commandTimeout {
            throw ClusterSendError(failure: .connectionLost(error))
        } catch {
            throw ClusterSendError(failure: .connectionLost(error))
        }
    }

    /// Counts `count` commands in flight on `node`, or throws ``RedisClientError/queueFull`` when
    /// that would pass ``RedisClusterConfiguration/maximumPendingCommandsPerNode``.
    func admit(_ count: Int, to node: RedisServerAddress) throws {
        let limit = self.cluster.maximumPendingCommandsPerNode
        let admitted = self.state.withLockedValue { state -> Bool in
            guard state.pending[node, default: 0] + count <= limit else { return false }
            state.pending[node, default: 0] += count
            return true
        }
        guard admitted else { throw RedisClientError(.queueFull, detail: "\(node) has \(limit) commands in flight") }
    }

    func release(_ count: Int, from node: RedisServerAddress) {
        self.state.withLockedValue { $0.pending[node, default: count] -= count }
    }

    /// The owner of `slot` (any primary for `nil`), reading the map first if there is none.
    func node(for slot: HashSlot?) async throws -> RedisServerAddress {
        var topology = self.state.withLockedValue { $0.topology }
        if topology == nil { topology = try await self.refreshTopology() }
        guard let topology else { throw RedisClientError.clusterUnavailable }
        if let slot {
            guard let owner = topology.primary(for: slot) else {
                self.requestRefresh()
                throw RedisClientError(.clusterUnavailable, detail: "no node serves slot \(slot)")
            }
            return owner
        }
        guard let any = topology.primaries.randomElement() else { throw RedisClientError(.clusterUnavailable, detail: "no primaries") }
        return any
    }

    /// The command connection to `node`, opened on first use (concurrent callers share one attempt);
    /// when it closes, the map is re-read.
    func commandConnection(to node: RedisServerAddress) async throws -> RedisConnection {
        for _ in 0..<2 {
            let task = try self.state.withLockedValue { state -> Task<RedisConnection, any Error> in
                guard !state.isShutdown else { throw RedisClientError.shutdown }
                if let existing = state.commandConnections[node] { return existing }
                let task = Task {
                    let connection = try await self.connect(to: node)
                    for arguments in self.state.withLockedValue({ $0.setup }) {
                        do {
                            _ = try await connection.execute(RawCommand(arguments: arguments))
                        } catch let error as RedisServerError {
                            self.logger.warning("redis connection setup command failed", metadata: ["node": "\(node)", "error": "\(error)"])
                        }
                    }
                    // A node that drops its connection may have failed over: re-read the map.
                    let shutdown = self.state.withLockedValue { state -> Bool in
                        if !state.isShutdown { state.readyConnections[node] = connection }
                        return state.isShutdown
                    }
                    if shutdown {
                        await connection.close()
                        throw RedisClientError.shutdown
                    }
                    connection.closeFuture.whenComplete { [weak self] _ in
                        guard let self else { return }
                        let shutdown = self.state.withLockedValue { state -> Bool in
                            if state.readyConnections[node] === connection { state.readyConnections[node] = nil }
                            return state.isShutdown
                        }
                        guard !shutdown else { return }
                        self.state.withLockedValue { $0.connectionLosses += 1 }
                        self.requestRefresh()
                    }
                    return connection
                }
                state.commandConnections[node] = task
                return task
            }
            do {
                let connection = try await task.value
                if connection.isActive { return connection }
            } catch {
                self.state.withLockedValue { state in
                    if state.commandConnections[node] == task { state.commandConnections[node] = nil }
                }
                throw error
            }
            self.state.withLockedValue { state in
                if state.commandConnections[node] == task { state.commandConnections[node] = nil }
            }
        }
        throw RedisClientError.notConnected
    }

    /// Connects to `node` with the client's credentials, TLS and timeouts.
    func connect(
        to node: RedisServerAddress,
        pushHandler: (@Sendable (RedisPubSubMessage) -> Void)? = nil,
        serverUnsubscribeHandler: (@Sendable (RedisSubscriptionKind, String) -> Void)? = nil
    ) async throws -> RedisConnection {
        var configuration = self.configuration
        configuration.cluster = nil
        configuration.host = node.host
        configuration.port = node.port
        return try await RedisConnection.connect(
            configuration: configuration, eventLoopGroup: self.eventLoopGroup, logger: self.logger, pushHandler: pushHandler,
            serverUnsubscribeHandler: serverUnsubscribeHandler)
    }

    // MARK: Topology

    /// Reads the slot map now (concurrent callers share one read) from the nodes of the last map,
    /// then the seed nodes, the first that answers.
    /// - Throws: ``RedisClientError/notCluster`` when a node has cluster support disabled,
    ///   ``RedisClientError/clusterUnavailable`` (with each node's failure) when none answers.
    @discardableResult
    public func refreshTopology() async throws -> RedisClusterTopology {
        let task = self.state.withLockedValue { state -> Task<RedisClusterTopology, any Error> in
            if let running = state.refresh { return running }
            let task = Task { try await self.readTopology() }
            state.refresh = task
            return task
        }
        defer { self.state.withLockedValue { state in if state.refresh == task { state.refresh = nil } } }
        return try await task.value
    }

    private func readTopology() async throws -> RedisClusterTopology {
        let known = self.state.withLockedValue { $0.topology?.nodes ?? [] }
        var candidates: [RedisServerAddress] = []
        for node in known.shuffled() + self.cluster.nodes where !candidates.contains(node) { candidates.append(node) }
        var failures: [String] = []
        for node in candidates {
            // Shut down meanwhile: the caller's event loops may go next.
            if self.state.withLockedValue({ $0.isShutdown }) { throw RedisClientError.shutdown }
            do {
                // Closed before going on (not in a task of its own that could outlive the caller's event loops).
                let tls = self.configuration.tls != nil
                let topology = try await self.connect(to: node).closing { connection in
                    do {
                        return try RedisClusterTopology(fromRESP: try await connection.sendRaw(CLUSTERSHARDS()).get(), tls: tls)
                    } catch let error as RedisServerError where error.message.lowercased().contains("unknown subcommand") {
                        return try await connection.execute(CLUSTERSLOTS())
                    }
                }
                guard !topology.shards.isEmpty else {
                    failures.append("\(node): no slots assigned")
                    continue
                }
                self.install(topology)
                return topology
            } catch let error as RedisServerError where error.message.contains("cluster support disabled") {
                throw RedisClientError(.notCluster, detail: "\(node) is not a cluster node (\(error.message)); configure it as a single server")
            } catch {
                failures.append("\(node): \(error)")
            }
        }
        throw RedisClientError(.clusterUnavailable, detail: "cannot read the slot map: " + failures.joined(separator: "; "))
    }

    /// Closes a command connection to a node that is no longer a primary, in a task that
    /// ``shutdown()`` waits for.
    ///
    /// It takes no new commands, and is closed once it owes no replies (at most a command
    /// timeout later): closed at once, the commands in flight on it failed as "outcome unknown"
    /// (`connectionClosed`) where the node would have answered them, `MOVED` most often, and
    /// they would have been redirected.
    private func closeStale(_ connection: Task<RedisConnection, any Error>) {
        let timeout = self.configuration.commandTimeout
        let started = self.background.run {
            guard let connection = try? await connection.value else { return }
            let deadline = NIODeadline.now() + timeout
            while connection.owesReplies, connection.isActive, NIODeadline.now() < deadline, !self.state.withLockedValue({ $0.isShutdown }) {
                try? await Task.sleep(for: .milliseconds(5))
            }
            await connection.close()
        }
        // Shut down meanwhile: ``shutdown()`` closed the connections it still had.
        if !started { connection.cancel() }
    }

    /// Installs a newly read map: closes command connections to nodes that are no longer primaries
    /// and brings the sharded subscriptions in line.
    private func install(_ topology: RedisClusterTopology) {
        let (stale, changed) = self.state.withLockedValue { state -> ([Task<RedisConnection, any Error>], Bool) in
            let changed = state.topology.map { !$0.hasSameSlots(as: topology) } ?? true
            if changed, state.topology != nil { state.slotMapChanges += 1 }
            state.topology = topology
            state.topologyRefreshes += 1
            let primaries = Set(topology.primaries)
            let stale = state.commandConnections.filter { !primaries.contains($0.key) }
            for node in stale.keys {
                state.commandConnections[node] = nil
                state.readyConnections[node] = nil
            }
            return (Array(stale.values), changed)
        }
        for task in stale { self.closeStale(task) }
        self.leaveClassicNodeIfGone(topology)
        if changed {
            self.logger.info("redis cluster slot map", metadata: ["primaries": "\(topology.primaries)"])
            self.wakeMaintenance(subscriptions: true)
        }
    }

    /// The classic subscriber's node is no longer in the map (removed from the cluster: `CLUSTER
    /// FORGET`, a reset): it no longer gets the cluster's messages, yet the connection stays up.
    /// Closed, the subscriber loop connects to a node of the map and subscribes again (a
    /// re-subscription, so the gap is read from history).
    private func leaveClassicNodeIfGone(_ topology: RedisClusterTopology) {
        // Members, not ``RedisClusterTopology/nodes``: a replica failing or loading is still in the cluster.
        let members = topology.members
        guard !members.isEmpty else { return }
        let left = self.state.withLockedValue { state -> (RedisServerAddress, RedisConnection)? in
            guard let node = state.classicNode, let connection = state.classicConnection, !members.contains(node) else { return nil }
            return (node, connection)
        }
        guard let (node, connection) = left else { return }
        self.logger.warning("redis cluster: the node of the channel subscriptions left the cluster; moving them", metadata: ["node": "\(node)"])
        // Not run once shut down: ``shutdown()`` closes it then.
        _ = self.background.run { await connection.close() }
    }

    /// Asks the background loop to read the map soon.
    func requestRefresh() {
        self.wakeMaintenance(subscriptions: false, refresh: true)
    }

    func wakeMaintenance(subscriptions: Bool, refresh: Bool = false) {
        self.state.withLockedValue { state in
            if subscriptions { state.subscriptionsPending = true }
            if refresh { state.refreshRequested = true }
        }
    }
}

extension RedisClusterClient {
    /// Runs `body` with a connection to the primary owning the slot of `keys` (see
    /// ``makeDedicatedConnection(forKeys:)``), closed afterwards.
    public func withDedicatedConnection<T: Sendable>(forKeys keys: [String], _ body: (RedisConnection) async throws -> T) async throws -> T {
        try await self.makeDedicatedConnection(forKeys: keys).closing(after: body)
    }

    /// Adds an observer called with the shard channels that were subscribed again after they
    /// had been lost (their slot moved, or their node's subscriber connection closed): messages
    /// published on them in between were not received (the gateway repairs them from history).
    public func addShardResubscribeObserver(_ observer: @escaping @Sendable ([String]) -> Void) {
        self.state.withLockedValue { $0.resubscribeObservers.append(observer) }
    }

    /// How many command or subscriber connections to a node were lost (not closed by the client).
    public var connectionLossCount: Int { self.state.withLockedValue { $0.connectionLosses } }

    /// How many times a newly read slot map assigned slots differently from the one before.
    public var slotMapChangeCount: Int { self.state.withLockedValue { $0.slotMapChanges } }
}
