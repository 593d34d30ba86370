import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Which of the client's long-lived connections an event refers to.
public enum RedisConnectionRole: Sendable, Hashable {
    /// The multiplexed connection used for ordinary (pipelined) commands.
    case commands
    /// The dedicated pub/sub connection.
    case subscriptions
}

/// The state of one of the client's long-lived connections.
public enum RedisConnectionState: Sendable, Hashable {
    case connecting
    case connected
    /// Lost or failed; a reconnect attempt follows after a backoff delay (unless shut down).
    case disconnected
    case shutdown
}

/// Exponential backoff with jitter for reconnect attempts.
public struct RedisBackoff: Sendable, Hashable {
    public var minimum: TimeAmount
    public var maximum: TimeAmount

    public init(minimum: TimeAmount, maximum: TimeAmount) {
        self.minimum = minimum
        self.maximum = max(minimum, maximum)
    }

    /// The delay before reconnect attempt `attempt` (0-based): `min(maximum, minimum * 2^attempt)`,
    /// of which a random half is jitter (the result lies in `[d/2, d]`).
    public func delay(attempt: Int, random: Double = Double.random(in: 0...1)) -> TimeAmount {
        let exponent = min(attempt, 32)
        let base = min(Double(self.maximum.nanoseconds), Double(self.minimum.nanoseconds) * Double(1 << exponent))
        return .nanoseconds(Int64(base / 2 + base / 2 * random))
    }
}

/// A long-lived Redis client owning one multiplexed command connection and one pub/sub connection
/// (and, with ``RedisConfiguration/commandConnectionPerEventLoop``, a command connection per
/// event loop).
///
/// Both connections reconnect by themselves with exponential backoff and jitter
/// (``RedisConfiguration/reconnectBackoffMinimum`` … ``RedisConfiguration/reconnectBackoffMaximum``);
/// active subscriptions are re-established automatically after the pub/sub connection reconnects.
/// Commands issued while the command connection is down wait for it, in order, for at most
/// ``RedisConfiguration/reconnectWait`` (then fail with ``RedisClientError/notConnected``; at most
/// ``RedisConfiguration/maximumWaitingCommands`` wait). Blocking reads (`XREAD BLOCK`) should use a
/// dedicated connection: ``withDedicatedConnection(_:)``.
///
/// ```swift
/// let client = RedisClient(configuration: try RedisConfiguration(url: "redis://:secret@localhost:6379/0"))
/// client.start()
/// try await client.waitUntilConnected(timeout: .seconds(5))
/// let pong = try await client.execute(PING())
/// await client.shutdown()
/// ```
public final class RedisClient: Sendable {
    /// Pauses reading from the subscriber connection while the application says so (see
    /// ``SubscriberReadGate``); ``refreshSubscriberReading()`` after the condition changed.
    package let subscriberReading = SubscriberReadGate()

    /// Applies ``subscriberReading``'s condition to the subscriber connection.
    package func refreshSubscriberReading() {
        if let connection = state.withLockedValue({ $0.subscriberConnection }) { subscriberReading.apply(to: connection) }
    }

    /// Called (from a background task, not the event loop) whenever a connection changes state.
    public typealias StateChangeHandler = @Sendable (RedisConnectionRole, RedisConnectionState) -> Void

    public let configuration: RedisConfiguration
    package let eventLoopGroup: any EventLoopGroup
    /// Loops outside ``eventLoopGroup`` that get a command connection of their own too (with
    /// ``RedisConfiguration/commandConnectionPerEventLoop``).
    let additionalCommandLoops: [any EventLoop]
    let logger: Logger
    let registry = SubscriptionRegistry()
    /// With Sentinel: one resolver for every connection (it asks first the sentinel that
    /// answered last).
    let sentinelResolver: SentinelResolver?
    private let onStateChange: StateChangeHandler?
    private let enableSubscriptions: Bool

    struct State {
        var started = false
        var isShutdown = false
        var commandConnection: RedisConnection?
        /// With ``RedisConfiguration/commandConnectionPerEventLoop``: each loop's own.
        var loopConnections: [ObjectIdentifier: RedisConnection] = [:]
        /// Per loop: its commands sent on the shared connection while its own was down and not
        /// answered yet. Its own connection is used again only once they are: commands sent
        /// later must not overtake them on the other connection.
        var fallbacksInFlight: [ObjectIdentifier: Int] = [:]
        /// Commands a drain took from the queue and wrote on the shared connection, not answered
        /// yet (``FallbackCount/Drained``; not a blocking command, whose reply may take long).
        /// While any is (or ``drainedOnOwn``), no loop's command goes on another connection than
        /// theirs (the shared one, as a loop's fallback; or it waits): a client whose session
        /// ended on one loop may reconnect on another, and its new commands must not overtake
        /// the old ones that waited.
        var drainedOnShared = 0
        /// The same on a loop's own connection, and which loop's (one at a time: the shared
        /// connection is down, and only that loop's commands waited); `nil`: none.
        var drainedOnOwn: (loop: ObjectIdentifier, count: Int)?
        /// Commands waiting, in order, for the shared command connection (see
        /// ``RedisClient/send(_:)``): present (perhaps empty) from the first one until the
        /// connection that came back wrote them all, so later commands queue behind them.
        var waiting: CircularBuffer<WaitingCommand>?
        /// How many of ``waiting``'s first commands are ones a connection could not write
        /// (``RedisClient/holdUnsent(_:from:)``): they wait ahead of the rest.
        var unsentAhead = 0
        /// Shared command connections that closed with writes still on their way to their loop
        /// (``RedisClient/transitPending(_:)``).
        var closedShared: [RedisConnection] = []
        /// The shared connection a drain of ``waiting`` is scheduled on (one at a time).
        var drainScheduled: ObjectIdentifier?
        /// Per loop: its own connection that has a write of what the loop holds scheduled.
        var loopDrainsScheduled: [ObjectIdentifier: ObjectIdentifier] = [:]
        var waitingIDs: UInt64 = 0
        /// The last ``CommandPlace/ticket`` given: the order commands were taken in.
        var tickets: UInt64 = 0
        /// ``tickets`` when a held command was last refused (its wait ran out): a command taken
        /// until then that a connection hands back later fails too (it may have been sent after
        /// the refused one: a gap).
        var refusedThrough: UInt64 = 0
        /// ``RedisClient/stopWaiting()`` was called: commands no longer wait for a connection.
        var waitingStopped = false
        /// Per loop (with ``RedisConfiguration/commandConnectionPerEventLoop``): how many of
        /// ``waiting`` it sent; its own connection is not used while they wait.
        var waitingFromLoop: [ObjectIdentifier: Int] = [:]
        var subscriberConnection: RedisConnection?
        var states: [RedisConnectionRole: RedisConnectionState] = [:]
        var reconnects = 0
        /// Those of the command connection.
        var commandReconnects = 0
        /// The last connect failure of each role since it was last connected.
        var lastErrors: [RedisConnectionRole: String] = [:]
        var tasks: [Task<Void, Never>] = []
        var observers: [StateChangeHandler] = []
        var setup: [[RedisArgument]] = []
        /// With Sentinel: the primary the last connection reached, and the `+switch-master` watch.
        var primary: RedisServerAddress?
        var sentinelConnection: RedisConnection?
        /// With Sentinel: the open dedicated connections, closed too when the primary moves.
        var dedicatedConnections: [ObjectIdentifier: RedisConnection] = [:]
        /// Bumped on `+switch-master`, and when the command connection is back: waiting
        /// reconnect loops retry at once.
        var switchGeneration = 0
    }

    let state = NIOLockedValueBox(State())

    /// - Parameters:
    ///   - additionalCommandLoops: with ``RedisConfiguration/commandConnectionPerEventLoop``,
    ///     loops of another group that get a command connection of their own as well (e.g. a
    ///     server's loops for API requests); commands sent from them stay on them.
    ///   - enableSubscriptions: open the pub/sub connection (default `true`).
    ///   - onStateChange: observes connection state changes (readiness, metrics).
    public init(
        configuration: RedisConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        additionalCommandLoops: [any EventLoop] = [],
        logger: Logger = Logger(label: "RedisClient"),
        enableSubscriptions: Bool = true,
        onStateChange: StateChangeHandler? = nil
    ) {
        self.configuration = configuration
        self.eventLoopGroup = eventLoopGroup
        self.additionalCommandLoops = additionalCommandLoops
        self.logger = logger
        self.sentinelResolver = configuration.sentinel == nil ? nil : SentinelResolver(configuration: configuration)
        self.enableSubscriptions = enableSubscriptions
        self.onStateChange = onStateChange
    }

    /// Adds an observer of connection state changes (called like `onStateChange`, after it).
    public func addStateObserver(_ observer: @escaping StateChangeHandler) {
        self.state.withLockedValue { $0.observers.append(observer) }
    }

    /// Starts connecting (in the background). Calling it more than once has no effect.
    public func start() {
        let roles: [RedisConnectionRole] = self.enableSubscriptions ? [.commands, .subscriptions] : [.commands]
        self.state.withLockedValue { state in
            guard !state.started, !state.isShutdown else { return }
            state.started = true
            for role in roles {
                state.tasks.append(Task { await self.connectionLoop(role: role) })
            }
            if self.configuration.commandConnectionPerEventLoop {
                for loop in Array(self.eventLoopGroup.makeIterator()) + self.additionalCommandLoops {
                    state.tasks.append(Task { await self.loopConnectionLoop(loop) })
                }
            }
            if self.configuration.sentinel != nil {
                state.tasks.append(Task { await self.sentinelWatchLoop(self.sentinelResolver!) })
            }
        }
    }

    /// Closes both connections, stops reconnecting and finishes all subscriptions.
    public func shutdown() async {
        let (tasks, connections) = self.state.withLockedValue { state in
            state.isShutdown = true
            let result = (
                state.tasks,
                [state.commandConnection, state.subscriberConnection, state.sentinelConnection].compactMap { $0 } + Array(state.loopConnections.values)
            )
            state.sentinelConnection = nil
            state.tasks = []
            state.commandConnection = nil
            state.loopConnections = [:]
            state.subscriberConnection = nil
            return result
        }
        self.failWaiting(RedisClientError.shutdown)
        for task in tasks { task.cancel() }
        for connection in connections { await connection.close() }
        for task in tasks { await task.value }
        self.registry.finishAll()
    }

    /// The current state of a connection.
    public func connectionState(_ role: RedisConnectionRole) -> RedisConnectionState {
        self.state.withLockedValue { $0.states[role] ?? .disconnected }
    }

    /// Why the last attempt to connect `role` failed, while it is not connected (e.g.
    /// `WRONGPASS …`, or a TLS handshake failure with its likely cause); `nil` once connected.
    public func lastConnectError(_ role: RedisConnectionRole) -> String? {
        self.state.withLockedValue { $0.lastErrors[role] }
    }

    /// How many times a connection was re-established after having been connected before.
    public var reconnectCount: Int { self.state.withLockedValue { $0.reconnects } }
    /// Reconnects of the command connection alone (the subscriber's are left out: Redis drops a
    /// subscriber that reads too slowly, with the server and the commands fine).
    public var commandReconnectCount: Int { self.state.withLockedValue { $0.commandReconnects } }

    /// Waits until every enabled connection is connected, as ``connectionState(_:)`` reports it
    /// (so a caller that then sees another state knows the connection changed since). Throws
    /// ``RedisClientError/connectTimeout`` otherwise, whose detail gives each connection's state
    /// and last connect error.
    public func waitUntilConnected(timeout: Duration) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while true {
            let ready = self.state.withLockedValue { state in
                state.commandConnection != nil && state.states[.commands] == .connected
                    && (!self.enableSubscriptions || (state.subscriberConnection != nil && state.states[.subscriptions] == .connected))
            }
            if ready { return }
            guard clock.now < deadline else { throw RedisClientError(.connectTimeout, detail: self.connectionSummary()) }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Each enabled connection's state and last connect error, for a timeout's detail.
    private func connectionSummary() -> String {
        let roles: [RedisConnectionRole] = self.enableSubscriptions ? [.commands, .subscriptions] : [.commands]
        return self.state.withLockedValue { state in
            "not connected within the wait: "
                + roles.map { role in
                    "\(role) \(state.states[role] ?? .disconnected)" + (state.lastErrors[role].map { " (last error: \($0))" } ?? "")
                }.joined(separator: ", ") + ", reconnects \(state.reconnects)"
        }
    }

    // MARK: Commands

    /// Executes `command` on the multiplexed connection.
    /// - Throws: ``RedisClientError/notConnected`` when disconnected for longer than
    ///   ``RedisConfiguration/reconnectWait``.
    public func execute<Command: RedisCommand>(_ command: Command) async throws -> Command.Response {
        try await self.send(command).get()
    }

    /// Opens a new connection that the caller owns (and must close), e.g. for blocking `XREAD`/`XREADGROUP`.
    /// With Sentinel, it goes to the current primary, and is closed when a sentinel announces another.
    public func makeDedicatedConnection() async throws -> RedisConnection {
        let connection = try await self.openConnection(eventLoopGroup: self.eventLoopGroup)
        if self.configuration.sentinel != nil {
            let key = ObjectIdentifier(connection)
            self.state.withLockedValue { $0.dedicatedConnections[key] = connection }
            connection.closeFuture.whenComplete { _ in self.state.withLockedValue { _ = $0.dedicatedConnections.removeValue(forKey: key) } }
        }
        return connection
    }

    /// Connects to the configured server, or with ``RedisConfiguration/sentinel`` to the primary the
    /// sentinels name (checked with `ROLE`).
    func openConnection(
        eventLoopGroup: any EventLoopGroup, pushHandler: (@Sendable (RedisPubSubMessage) -> Void)? = nil
    ) async throws -> RedisConnection {
        guard self.configuration.sentinel != nil else {
            return try await RedisConnection.connect(
                configuration: self.configuration, eventLoopGroup: eventLoopGroup, logger: self.logger, pushHandler: pushHandler)
        }
        let connection = try await self.sentinelResolver!.connectToPrimary(
            eventLoopGroup: eventLoopGroup, logger: self.logger, pushHandler: pushHandler)
        let address = RedisServerAddress(host: connection.configuration.host, port: connection.configuration.port)
        let changed = self.state.withLockedValue { state -> Bool in
            defer { state.primary = address }
            return state.primary != address
        }
        if changed { self.logger.info("redis primary (from sentinel)", metadata: ["address": "\(address)"]) }
        return connection
    }

    /// With Sentinel: the primary the client last connected to.
    public var primaryAddress: RedisServerAddress? { self.state.withLockedValue { $0.primary } }

    /// Runs `body` with a dedicated connection that is closed afterwards.
    public func withDedicatedConnection<T: Sendable>(_ body: (RedisConnection) async throws -> T) async throws -> T {
        try await self.makeDedicatedConnection().closing(after: body)
    }

    // MARK: Subscriptions

    /// Subscribes to `names` and returns a buffered message stream (see ``RedisSubscription`` for the
    /// drop-oldest buffering policy). Completes once the server confirmed, or immediately when the
    /// subscriber connection is down (the subscription becomes active on reconnect).
    public func subscribe(to names: [String], kind: RedisSubscriptionKind = .channel, bufferSize: Int? = nil) async throws -> RedisSubscription {
        precondition(!names.isEmpty, "subscribe needs at least one name")
        let dropped = NIOLockedValueBox(0)
        let (stream, continuation) = AsyncStream.makeStream(
            of: RedisPubSubMessage.self,
            bufferingPolicy: .bufferingNewest(max(1, bufferSize ?? self.configuration.subscriptionBufferSize))
        )
        let (id, confirmation) = try self.registry.add(names: names, kind: kind, sink: .stream(continuation, dropped))
        let subscription = RedisSubscription(
            names: names, kind: kind, stream: stream, continuation: continuation, dropped: dropped, id: id, registry: self.registry
        )
        try await self.awaitConfirmation(confirmation, id: id, names: names, kind: kind)
        return subscription
    }

    /// Subscribes with a handler invoked on the subscriber connection's event loop for each message
    /// (no buffering, no extra hop). Use it for fan-out; the handler must not block.
    public func subscribe(
        to names: [String],
        kind: RedisSubscriptionKind = .channel,
        handler: @escaping @Sendable (RedisPubSubMessage) -> Void
    ) async throws -> RedisCallbackSubscription {
        precondition(!names.isEmpty, "subscribe needs at least one name")
        let (id, confirmation) = try self.registry.add(names: names, kind: kind, sink: .callback(handler))
        try await self.awaitConfirmation(confirmation, id: id, names: names, kind: kind)
        return RedisCallbackSubscription(names: names, kind: kind, id: id, registry: self.registry)
    }

    /// Runs `body` with a subscription that is unsubscribed when `body` returns or throws.
    public func withSubscription<T: Sendable>(
        to names: [String],
        kind: RedisSubscriptionKind = .channel,
        bufferSize: Int? = nil,
        _ body: (RedisSubscription) async throws -> T
    ) async throws -> T {
        let subscription = try await self.subscribe(to: names, kind: kind, bufferSize: bufferSize)
        do {
            let result = try await body(subscription)
            await subscription.unsubscribe()
            return result
        } catch {
            await subscription.unsubscribe()
            throw error
        }
    }

    private func awaitConfirmation(_ confirmation: EventLoopFuture<Void>?, id: UInt64, names: [String], kind: RedisSubscriptionKind) async throws {
        do {
            try await confirmation?.get()
        } catch let error as RedisServerError {
            // The server rejected the subscription: forget it.
            self.registry.remove(id: id, names: names, kind: kind)
            throw error
        } catch {
            // Connection trouble: keep the subscription; it is re-established after reconnecting.
            self.logger.debug("subscription not confirmed; will resubscribe on reconnect", metadata: ["error": "\(error)"])
        }
    }

    /// While the subscriber connection is up: every `reconnectBackoffMaximum`, subscribes again
    /// the names Redis refused on the last re-subscribe (``SubscriptionRegistry/retryRefused()``);
    /// once some are, the state observers are told `.connected` again, as after a reconnect (the
    /// gateway then reads what its destinations missed from their history).
    private func retryRefusedSubscriptions() -> Task<Void, Never> {
        self.registry.retryRefused(every: self.configuration.reconnectBackoffMaximum) { [weak self] keys in
            guard let self, !self.state.withLockedValue({ $0.isShutdown }) else { return }
            self.logger.notice("redis accepted subscriptions it had refused", metadata: ["names": "\(keys.map(\.name))"])
            for observer in self.state.withLockedValue({ $0.observers }) { observer(.subscriptions, .connected) }
        }
    }

    // MARK: Connection management

    private func setState(_ role: RedisConnectionRole, _ newState: RedisConnectionState) {
        let changed = self.state.withLockedValue { state -> Bool in
            if state.isShutdown && newState != .shutdown { return false }
            guard state.states[role] != newState else { return false }
            state.states[role] = newState
            return true
        }
        guard changed else { return }
        self.onStateChange?(role, newState)
        for observer in self.state.withLockedValue({ $0.observers }) { observer(role, newState) }
    }

    /// Keeps `loop`'s own command connection open (reconnecting with backoff). Its state is
    /// not reported: the shared command connection stands for the role, and takes over while
    /// this one is down.
    private func loopConnectionLoop(_ loop: any EventLoop) async {
        let backoff = RedisBackoff(minimum: self.configuration.reconnectBackoffMinimum, maximum: self.configuration.reconnectBackoffMaximum)
        let key = ObjectIdentifier(loop)
        var attempt = 0
        while !Task.isCancelled {
            var since = self.switchGeneration
            do {
                let connection = try await self.openConnection(eventLoopGroup: loop)
                do {
                    try await self.runSetup(on: connection)
                } catch {
                    await connection.close()
                    throw error
                }
                // After the setup: its own commands fail on this connection, not wait for another.
                connection.onUnsent { [weak self] command in self?.holdUnsent(command, from: command.origin?.loop ?? key) ?? false }
                let (accepted, holds) = self.state.withLockedValue { state -> (Bool, Bool) in
                    guard !state.isShutdown else { return (false, false) }
                    state.loopConnections[key] = connection
                    return (true, state.waiting != nil && state.waitingFromLoop[key, default: 0] > 0)
                }
                guard accepted else {
                    await connection.close()
                    break
                }
                if holds { self.writeLoopsWaiting(key, on: connection) }
                attempt = 0
                try? await connection.closeFuture.get()
                since = self.switchGeneration
                self.state.withLockedValue { state in
                    if state.loopConnections[key] === connection { state.loopConnections[key] = nil }
                }
            } catch {
                self.logger.debug("redis loop connection failed", metadata: ["error": "\(error)"])
            }
            if Task.isCancelled || self.state.withLockedValue({ $0.isShutdown }) { break }
            let delay = backoff.delay(attempt: attempt)
            attempt += 1
            await self.backoffSleep(delay, hurried: true, since: since)
        }
    }

    private func connectionLoop(role: RedisConnectionRole) async {
        let backoff = RedisBackoff(minimum: self.configuration.reconnectBackoffMinimum, maximum: self.configuration.reconnectBackoffMaximum)
        var attempt = 0
        var connectedBefore = false
        while !Task.isCancelled {
            var since = self.switchGeneration
            self.setState(role, .connecting)
            do {
                let registry = self.registry
                var pushHandler: (@Sendable (RedisPubSubMessage) -> Void)? = nil
                if role == .subscriptions {
                    pushHandler = { @Sendable message in registry.deliver(message) }
                }
                let connection = try await self.openConnection(eventLoopGroup: self.eventLoopGroup, pushHandler: pushHandler)
                if role == .commands {
                    do {
                        try await self.runSetup(on: connection)
                    } catch {
                        await connection.close()
                        throw error
                    }
                    connection.onUnsent { [weak self] command in self?.holdUnsent(command, from: command.origin?.loop) ?? false }
                }
                if role == .subscriptions {
                    let logger = self.logger
                    let confirmations = registry.attach({ [connection] in connection.subscriptionCommand($0) }) { kind, names, error in
                        logger.error(
                            "Redis refused to subscribe again to names it no longer allows: their subscribers get nothing until it does (retried while connected)",
                            metadata: ["kind": "\(kind)", "names": "\(names)", "error": "\(error)"])
                    }
                    do {
                        for confirmation in confirmations { try await confirmation.get() }
                    } catch {
                        await connection.close()
                        throw error
                    }
                }
                var drain = false
                let accepted = self.state.withLockedValue { state -> Bool in
                    guard !state.isShutdown else { return false }
                    switch role {
                    case .commands:
                        state.commandConnection = connection
                        if state.waiting != nil { drain = true }
                        // The server is back: the other connections' reconnect loops (the
                        // subscriber's above all: what is published before it is back has to be
                        // read from history, within its window) try again at once.
                        state.switchGeneration += 1
                    case .subscriptions: state.subscriberConnection = connection
                    }
                    if connectedBefore {
                        state.reconnects += 1
                        if role == .commands { state.commandReconnects += 1 }
                    }
                    return true
                }
                guard accepted else {
                    await connection.close()
                    break
                }
                if role == .subscriptions { self.subscriberReading.apply(to: connection) }
                if drain { self.writeWaiting(on: connection) }
                connectedBefore = true
                attempt = 0
                self.state.withLockedValue { $0.lastErrors[role] = nil }
                self.logger.info("redis connected", metadata: ["role": "\(role)", "resp": "\(connection.protocolVersion)"])
                self.setState(role, .connected)
                let retrier = role == .subscriptions ? self.retryRefusedSubscriptions() : nil
                let gate = self.subscriberReading
                let interval = self.configuration.subscriberPingInterval
                let checker = role == .subscriptions && interval > .zero ? connection.keepChecked(every: interval, skip: { gate.isPausing }) : nil
                try? await connection.closeFuture.get()
                since = self.switchGeneration
                retrier?.cancel()
                checker?.cancel()
                let ownBack = self.state.withLockedValue { state -> [(ObjectIdentifier, RedisConnection)] in
                    switch role {
                    case .commands:
                        if state.commandConnection === connection {
                            state.commandConnection = nil
                            if connection.hasWritesInTransit { state.closedShared.append(connection) }
                        }
                        // Loops whose own connection is up write what they hold there now.
                        return state.waitingFromLoop.keys.compactMap { key in
                            state.loopConnections[key].flatMap { $0.isActive ? (key, $0) : nil }
                        }
                    case .subscriptions:
                        if state.subscriberConnection === connection { state.subscriberConnection = nil }
                        return []
                    }
                }
                for (key, own) in ownBack { self.writeLoopsWaiting(key, on: own) }
                if role == .subscriptions { registry.detach() }
                // Closed by ``shutdown()``: expected, not a loss.
                let closedByShutdown = Task.isCancelled || self.state.withLockedValue { $0.isShutdown }
                self.logger.log(level: closedByShutdown ? .debug : .warning, "redis connection lost", metadata: ["role": "\(role)"])
            } catch {
                if role == .subscriptions { self.registry.detach() }
                // A new reason is logged as an error (a wrong password or CA does not fix itself);
                // the same one again, on every backoff retry, only at debug level.
                let reason = "\(error)"
                let isNew = self.state.withLockedValue { state in
                    defer { state.lastErrors[role] = reason }
                    return state.lastErrors[role] != reason
                }
                self.logger.log(
                    level: isNew ? .error : .debug, "redis connect failed", metadata: ["role": "\(role)", "error": "\(reason)"])
            }
            if Task.isCancelled || self.state.withLockedValue({ $0.isShutdown }) { break }
            self.setState(role, .disconnected)
            let delay = backoff.delay(attempt: attempt)
            attempt += 1
            await self.backoffSleep(delay, hurried: role == .commands, since: since)
        }
        self.setState(role, .shutdown)
    }
}
