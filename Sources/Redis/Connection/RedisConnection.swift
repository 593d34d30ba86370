import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// One TCP (or, with ``RedisConfiguration/tls``, TLS) connection to a Redis server.
///
/// Commands are pipelined: any number may be in flight, and replies are matched to commands in FIFO
/// order. The connection performs the `HELLO 3` handshake (falling back to RESP2 plus `AUTH`/`SELECT`
/// when the server rejects `HELLO`). When the connection closes, every pending command fails with
/// ``RedisClientError/connectionClosed``. A connection does not reconnect; ``RedisClient`` does that.
public final class RedisConnection: Sendable {
    /// The underlying NIO channel.
    public let channel: any Channel
    /// The negotiated protocol version: 3, or 2 after a fallback.
    public let protocolVersion: Int
    /// The configuration used to connect.
    public let configuration: RedisConfiguration

    /// Takes a command Redis never got (see ``onUnsent(_:)``).
    private let unsentHandler = NIOLockedValueBox<(@Sendable (RedisOutboundCommand) -> Bool)?>(nil)
    /// See ``hasWritesInTransit``.
    private let writesInTransit = Atomic<Int>(0)

    /// See ``isActive``: shared with the connection's ``RedisChannelHandler``.
    private let acceptance: CommandAcceptance

    package init(channel: any Channel, protocolVersion: Int, configuration: RedisConfiguration, acceptance: CommandAcceptance = CommandAcceptance()) {
        self.channel = channel
        self.protocolVersion = protocolVersion
        self.configuration = configuration
        self.acceptance = acceptance
    }

    /// Connects and completes the handshake.
    ///
    /// - Parameters:
    ///   - pushHandler: invoked on the connection's event loop for every pub/sub message received.
    ///   - serverUnsubscribeHandler: invoked on the event loop when the server ends a subscription by
    ///     itself (e.g. `sunsubscribe` when a cluster slot migrates away).
    /// - Throws: ``RedisClientError/connectTimeout``, ``RedisServerError`` (e.g. `WRONGPASS`),
    ///   ``RedisClientError/tlsConfiguration``, ``RedisClientError/tlsHandshakeFailed``, or an I/O error.
    public static func connect(
        configuration: RedisConfiguration,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "RedisClient"),
        pushHandler: (@Sendable (RedisPubSubMessage) -> Void)? = nil,
        serverUnsubscribeHandler: (@Sendable (RedisSubscriptionKind, String) -> Void)? = nil
    ) async throws -> RedisConnection {
        // Built per connection: a reconnect reads rotated certificate files.
        let sslContext = try configuration.tls?.makeSSLContext()
        let eventLoop = eventLoopGroup.next()
        let handshakePromise = eventLoop.makePromise(of: Int.self)
        let acceptance = CommandAcceptance()
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(configuration.connectTimeout)
            .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let sslContext, let tls = configuration.tls {
                        let sni = tls.sniHostname(host: configuration.host)
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: sslContext, serverHostname: sni))
                    }
                    try channel.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(RESPTokenDecoder(limits: configuration.parserLimits)),
                        RedisChannelHandler(
                            configuration: configuration,
                            handshakePromise: handshakePromise,
                            pushHandler: pushHandler,
                            serverUnsubscribeHandler: serverUnsubscribeHandler,
                            acceptance: acceptance,
                            logger: logger
                        ),
                    ])
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: configuration.host, port: configuration.port).get()
        } catch {
            let mapped: any Error =
                (error as? ChannelError) == .connectTimeout(configuration.connectTimeout)
                ? RedisClientError.connectTimeout : error
            handshakePromise.fail(mapped)
            throw mapped
        }
        do {
            let version = try await handshakePromise.futureResult.get()
            return RedisConnection(channel: channel, protocolVersion: version, configuration: configuration, acceptance: acceptance)
        } catch {
            try? await channel.close()
            throw Self.describe(error, configuration: configuration)
        }
    }

    /// With TLS, a failure during the handshake becomes ``RedisClientError/tlsHandshakeFailed``
    /// with its likely cause. A server that requires client certificates may just close the
    /// connection after the TLS handshake (TLS 1.3), before answering `HELLO`.
    private static func describe(_ error: any Error, configuration: RedisConfiguration) -> any Error {
        guard let tls = configuration.tls else { return error }
        if let clientError = error as? RedisClientError, clientError == .connectionClosed {
            return RedisClientError.tlsHandshakeFailed(
                "TLS with \(configuration.host):\(configuration.port) failed: the server closed the connection during the handshake;"
                    + " does it require a client certificate (certificateFile, privateKeyFile)?")
        }
        if let clientError = error as? RedisClientError, clientError == .connectTimeout {
            return RedisClientError(
                .connectTimeout,
                detail: "no TLS handshake with \(configuration.host):\(configuration.port) within the connect timeout; does the port speak TLS?")
        }
        return RedisTLSConfiguration.describeFailure(error, host: configuration.host, port: configuration.port, configuration: tls)
    }

    /// Closed because the server answered a write `READONLY` (see ``CommandAcceptance/closedAsDemoted``).
    package var closedAsDemoted: Bool { self.acceptance.closedAsDemoted }

    /// Until the connection closes, checks every `interval` that its peer is there: a
    /// connection that only receives (a subscriber, a sentinel watch) writes nothing else, so a
    /// peer gone without a FIN or a reset (a power loss, a partition, a replaced VM) was never
    /// noticed: the connection looked up and delivered nothing.
    ///
    /// Anything that arrived within the interval is proof enough. Otherwise, unless `skip`
    /// says so (a subscriber whose reads are held back: a reply would make it read the
    /// messages held), it sends `PING` and waits up to the command timeout for anything to
    /// arrive: the reply, an error reply (`-LOADING`, `-BUSY`, `-NOPERM`: the server is
    /// there), a message queued ahead of it. Nothing at all: it closes the connection, and its
    /// owner reconnects. The `PING` has no deadline of its own (a command's would close the
    /// connection when its reply waits behind many messages), and its reply, whatever its shape
    /// (RESP2 answers `[pong, ""]` in subscribe mode), is not decoded.
    package func keepChecked(every interval: TimeAmount, skip: @escaping @Sendable () -> Bool = { false }) -> Task<Void, Never> {
        let acceptance = self.acceptance
        let timeout = self.configuration.commandTimeout
        return Task {
            while !Task.isCancelled, self.isActive {
                try? await Task.sleep(for: .nanoseconds(interval.nanoseconds))
                guard !Task.isCancelled, self.isActive else { return }
                let sent = NIODeadline.now()
                if sent - acceptance.lastInbound < interval || skip() { continue }
                _ = self.sendRaw(HealthCheck())
                while NIODeadline.now() - sent < timeout, acceptance.lastInbound <= sent, !Task.isCancelled, self.isActive {
                    try? await Task.sleep(for: .milliseconds(20))
                }
                guard !Task.isCancelled, self.isActive else { return }
                if acceptance.lastInbound <= sent {
                    await self.close()
                    return
                }
            }
        }
    }

    /// `PING` without a deadline (see ``keepChecked(every:skip:)``).
    private struct HealthCheck: RedisCommand {
        typealias Response = RESPToken
        var blockingTimeout: TimeAmount? { .zero }
        func encode(into encoder: inout RESPCommandEncoder) { encoder.encodeArray(count: 1); encoder.encodeBulk("PING") }
    }

    /// Stops reading pushes (pub/sub messages) while `paused`; replies owed to commands are read
    /// all the same. Runs on the connection's loop; the future says whether that changed.
    package func setReadsPaused(_ paused: Bool) -> EventLoopFuture<Bool> {
        let channel = self.channel
        return channel.eventLoop.submit {
            (try? channel.pipeline.syncOperations.handler(type: RedisChannelHandler.self))?.setReadsPaused(paused) ?? false
        }
    }

    /// Sends `command` without awaiting; the future completes on the connection's event loop with the typed reply.
    ///
    /// Fails with ``RedisServerError`` for error replies, ``RESPDecodeError`` for unexpected reply shapes,
    /// ``RedisClientError/commandTimeout`` or ``RedisClientError/connectionClosed``.
    public func send<Command: RedisCommand>(_ command: Command) -> EventLoopFuture<Command.Response> {
        self.sendRaw(command).flatMapThrowing { try Command.Response(fromRESP: $0) }
    }

    /// ``send(_:)`` for `origin`'s event loop (see ``RedisOutboundCommand/origin``), at its
    /// `place` among the client's commands; `counted`: the caller
    /// counted it in transit (``beginTransit()``), and its count ends once the write reached the
    /// connection's loop.
    package func send<Command: RedisCommand>(
        _ command: Command, origin: FallbackCount?, place: CommandPlace, counted: Bool = false
    ) -> EventLoopFuture<Command.Response> {
        self.sendRaw(command, origin: origin, place: place, counted: counted).flatMapThrowing { try Command.Response(fromRESP: $0) }
    }

    /// Sends `command` and returns the undecoded reply.
    public func sendRaw<Command: RedisCommand>(_ command: Command) -> EventLoopFuture<RESPToken> {
        self.sendRaw(command, origin: nil, place: CommandPlace(), counted: false)
    }

    private func sendRaw<Command: RedisCommand>(_ command: Command, origin: FallbackCount?, place: CommandPlace, counted: Bool) -> EventLoopFuture<RESPToken> {
        self.write(self.outbound(command, origin: origin, place: place), counted: counted)
    }

    private func outbound<Command: RedisCommand>(_ command: Command, origin: FallbackCount? = nil, place: CommandPlace = CommandPlace()) -> RedisOutboundCommand {
        var encoder = RESPCommandEncoder(buffer: self.channel.allocator.buffer(capacity: 64))
        command.encode(into: &encoder)
        return RedisOutboundCommand(
            bytes: encoder.buffer,
            kind: command.replicaWait.map { .replicatedWrite($0) } ?? .command,
            promise: self.channel.eventLoop.makePromise(),
            blockingTimeout: command.blockingTimeout,
            origin: origin,
            place: place
        )
    }

    /// `ASKING`, then `command`, written in one step on the connection's loop: no other
    /// caller's command comes between them (it would take the one-shot flag, and `command` be
    /// redirected back). Returns both replies.
    package func sendRawAsking<Command: RedisCommand>(_ command: Command) -> (asking: EventLoopFuture<RESPToken>, reply: EventLoopFuture<RESPToken>) {
        let asking = self.outbound(ASKING())
        let reply = self.outbound(command)
        let loop = self.channel.eventLoop
        if loop.inEventLoop {
            self.writeOnLoop(asking)
            self.writeOnLoop(reply)
        } else {
            loop.execute {
                self.writeOnLoop(asking)
                self.writeOnLoop(reply)
            }
        }
        return (asking.promise.futureResult, reply.promise.futureResult)
    }

    /// Executes `command` and returns its typed reply.
    public func execute<Command: RedisCommand>(_ command: Command) async throws -> Command.Response {
        try await self.send(command).get()
    }

    /// Sends a subscription management command; completes once the server confirmed every name.
    ///
    /// Published messages are delivered to the `pushHandler` given to ``connect(configuration:eventLoopGroup:logger:pushHandler:)``.
    ///
    /// Always written through the loop's task queue, also when called on the loop: the
    /// subscription registry sends under its lock, and its commands must reach Redis in that
    /// order (an UNSUBSCRIBE written at once on the loop overtook a SUBSCRIBE queued before it
    /// from another thread: the server kept a subscription nobody wanted, or lost one).
    public func subscriptionCommand(_ command: SubscriptionCommand) -> EventLoopFuture<Void> {
        var encoder = RESPCommandEncoder(buffer: self.channel.allocator.buffer(capacity: 64))
        command.encode(into: &encoder)
        let outbound = RedisOutboundCommand(
            bytes: encoder.buffer,
            kind: .subscription(confirmation: command.confirmationKind, names: command.names),
            promise: self.channel.eventLoop.makePromise()
        )
        self.channel.eventLoop.execute { self.writeOnLoop(outbound) }
        return outbound.promise.futureResult.map { _ in () }
    }

    private func write(_ command: RedisOutboundCommand, counted: Bool = false) -> EventLoopFuture<RESPToken> {
        let loop = self.channel.eventLoop
        if loop.inEventLoop {
            self.writeOnLoop(command)
            if counted { self.endTransit() }
        } else if counted {
            loop.execute {
                self.writeOnLoop(command)
                self.endTransit()
            }
        } else {
            loop.execute { self.writeOnLoop(command) }
        }
        return command.promise.futureResult
    }

    private func writeOnLoop(_ command: RedisOutboundCommand) {
        // Not flushed here: the handler flushes once per loop tick (pipelining across callers).
        // A refused write fails at once: handed over (onUnsent) before the transit ends.
        self.channel.write(command).whenFailure { error in self.writeFailed(command, error) }
    }

    /// Whether counted writes (``beginTransit()``) have not reached the connection's loop yet
    /// (each may still be refused there, and handed to ``onUnsent(_:)``).
    package var hasWritesInTransit: Bool { self.writesInTransit.load(ordering: .acquiring) > 0 }

    /// Counts a write about to be handed over, from the moment the caller chose this connection
    /// (``RedisClient`` does it under its lock, then sends with `counted: true`): the count
    /// ends once the write reached the connection's loop (and was refused there, if it was).
    package func beginTransit() { self.writesInTransit.add(1, ordering: .relaxed) }

    private func endTransit() { self.writesInTransit.subtract(1, ordering: .releasing) }

    /// Sends `command` again (its promise, as it was), e.g. one ``onUnsent(_:)`` took from
    /// another connection.
    package func resend(_ command: RedisOutboundCommand) -> EventLoopFuture<RESPToken> {
        self.write(command)
    }

    /// `handler` is given each command this connection could not write at all, so Redis never got
    /// it (the connection closed with it still queued, e.g. `EPIPE` after a `CLIENT KILL`, or
    /// before it was written); `true` when it took the command (to send it again, and complete
    /// its promise then). Otherwise, and without a handler, the command fails with
    /// ``RedisClientError/notConnected`` ("not sent"). A command Redis may have got fails with
    /// ``RedisClientError/connectionClosed`` as before (outcome unknown).
    package func onUnsent(_ handler: @escaping @Sendable (RedisOutboundCommand) -> Bool) {
        self.unsentHandler.withLockedValue { $0 = handler }
    }

    /// The write of `command` failed; on the connection's loop. It was not written at all when
    /// the handler refused it (the connection was closing), when the handler withdraws it (NIO
    /// failed it still queued), or when it never reached the handler (the channel closed).
    private func writeFailed(_ command: RedisOutboundCommand, _ error: any Error) {
        let unsent: Bool
        let handler = try? self.channel.pipeline.syncOperations.handler(type: RedisChannelHandler.self)
        if (error as? RedisClientError) == .notConnected {
            unsent = true  // refused by the handler: not written
        } else if let handler {
            // With TLS one encrypted buffer carries many commands (a flush), and its write can
            // fail with whole records of the first ones already sent: none counts as unsent.
            unsent = self.configuration.tls == nil && handler.withdraw(command.promise)
        } else {
            unsent = (error as? ChannelError) == .ioOnClosedChannel  // never reached the handler
        }
        guard unsent else {
            // Failed with the rest already (a timeout, a protocol error), or outcome unknown:
            // Redis may have got it.
            command.promise.fail(error is RedisClientError ? error : RedisClientError(.connectionClosed, detail: "\(error)"))
            return
        }
        if let handler = self.unsentHandler.withLockedValue({ $0 }), handler(command) { return }
        let reason = (error as? RedisClientError).flatMap(\.detail) ?? "the connection closed before the command was written (\(error)); not sent"
        command.promise.fail(RedisClientError(.notConnected, detail: reason))
    }

    /// Whether the connection is still open, and takes commands (a TLS connection that is
    /// closing stays open for a moment, refusing them).
    public var isActive: Bool { self.acceptance.isOpen && self.channel.isActive }

    /// Whether it owes replies: a command sent after those on another connection could run
    /// before them.
    package var owesReplies: Bool { self.acceptance.owesReplies }

    /// Completes when the connection has closed.
    public var closeFuture: EventLoopFuture<Void> { self.channel.closeFuture }

    /// Closes the connection; pending commands fail with ``RedisClientError/connectionClosed``.
    public func close() async {
        try? await self.channel.close()
    }
}

extension RedisConnection {
    /// Runs `body` with this connection, then closes it (also when `body` throws).
    func closing<T: Sendable>(after body: (RedisConnection) async throws -> T) async throws -> T {
        do {
            let result = try await body(self)
            await self.close()
            return result
        } catch {
            await self.close()
            throw error
        }
    }
}
