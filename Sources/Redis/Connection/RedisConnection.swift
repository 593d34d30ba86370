import Logging
import NIOCore
import NIOPosix
import NIOSSL

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

    package init(channel: any Channel, protocolVersion: Int, configuration: RedisConfiguration) {
        self.channel = channel
        self.protocolVersion = protocolVersion
        self.configuration = configuration
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
            return RedisConnection(channel: channel, protocolVersion: version, configuration: configuration)
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

    /// Sends `command` and returns the undecoded reply.
    public func sendRaw<Command: RedisCommand>(_ command: Command) -> EventLoopFuture<RESPToken> {
        var encoder = RESPCommandEncoder(buffer: self.channel.allocator.buffer(capacity: 64))
        command.encode(into: &encoder)
        return self.write(
            RedisOutboundCommand(
                bytes: encoder.buffer,
                kind: command.replicaWait.map { .replicatedWrite($0) } ?? .command,
                promise: self.channel.eventLoop.makePromise(),
                blockingTimeout: command.blockingTimeout
            ))
    }

    /// Executes `command` and returns its typed reply.
    public func execute<Command: RedisCommand>(_ command: Command) async throws -> Command.Response {
        try await self.send(command).get()
    }

    /// Sends a subscription management command; completes once the server confirmed every name.
    ///
    /// Published messages are delivered to the `pushHandler` given to ``connect(configuration:eventLoopGroup:logger:pushHandler:)``.
    public func subscriptionCommand(_ command: SubscriptionCommand) -> EventLoopFuture<Void> {
        var encoder = RESPCommandEncoder(buffer: self.channel.allocator.buffer(capacity: 64))
        command.encode(into: &encoder)
        return self.write(
            RedisOutboundCommand(
                bytes: encoder.buffer,
                kind: .subscription(confirmation: command.confirmationKind, remaining: command.names.count),
                promise: self.channel.eventLoop.makePromise()
            )
        ).map { _ in () }
    }

    private func write(_ command: RedisOutboundCommand) -> EventLoopFuture<RESPToken> {
        let promise = command.promise
        // Not flushed here: the handler flushes once per loop tick (pipelining across callers).
        self.channel.write(command).whenFailure { error in
            // Only reached if the handler never saw the command (pipeline torn down) or the write failed.
            promise.fail(error is ChannelError ? RedisClientError.connectionClosed : error)
        }
        return promise.futureResult
    }

    /// Whether the connection is still open.
    public var isActive: Bool { self.channel.isActive }

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
