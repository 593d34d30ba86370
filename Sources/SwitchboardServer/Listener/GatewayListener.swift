import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import NIOPosix
import NIOSSL
import ServiceLifecycle
import SwitchboardAPIModel
import SwitchboardWire
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The gateway's listening socket, serving STOMP over WebSocket and the HTTP API on one port;
/// or, with ``Settings/acceptsSessions`` off, the HTTP API only (`http.api-port`, on loops of
/// its own).
///
/// Every accepted connection starts with ``FirstRequestRouter`` (after TLS, if configured).
/// WebSocket sessions stay plain NIO pipelines and never enter Swift concurrency; only HTTP
/// connections are handed to a task, where Hummingbird's responder serves them. At shutdown the
/// listening socket closes, connections are told to quiesce (idle HTTP connections close,
/// sessions were already closed by the drain), and `run()` returns once all are gone, or at
/// ``Settings/closeGrace``, when the listener closes what is left itself
/// (``AcceptedConnections``).
struct GatewayListener: Service {
    struct Settings: Sendable {
        var host: String
        var port: Int
        var backlog: Int
        var tcpNoDelay = true
        var handshakeTimeout: TimeAmount
        var maxWebSocketFrameBytes: Int
        var tls: NIOSSLContext?
        /// False: upgrades get a 404 (the API-only port, whose loops run no sessions).
        var acceptsSessions = true
        /// At shutdown, how long connections may take to close once told to; then the listener
        /// closes what is left (each logged with what it is) and cancels the connection tasks.
        var closeGrace: TimeAmount = .seconds(5)
    }

    /// What the listener's shutdown waits for, for its deadline and its log.
    final class ShutdownProgress: Sendable {
        /// Connection tasks (Hummingbird's) running.
        let tasks = Atomic<Int>(0)
        /// Every connection has closed.
        let closed = Atomic<Bool>(false)
        /// The deadline passed first.
        let forced = Atomic<Bool>(false)
        /// Connections the listener closed itself at the deadline.
        let closedAtDeadline = Atomic<Int>(0)
        /// A graceful shutdown began (listening sockets closing is expected from then on).
        let stopping = Atomic<Bool>(false)
        /// Listening sockets that closed by themselves (NIO closes one on an `accept` error it
        /// cannot recover from: `EPROTO`, `EPERM` from a firewall rule).
        let socketsLost = Atomic<Int>(0)
    }

    /// Every listening socket of the port closed by itself: nothing is accepted any more.
    struct ListeningSocketsLost: Error, CustomStringConvertible {
        var port: Int
        var description: String { "every listening socket of port \(port) closed by itself: the port accepts no connection any more" }
    }

    let settings: Settings
    let handshake: WebSocketHandshake
    let http: HTTPAPIChannel
    let pending: PendingHandshakes
    /// This port's plain-HTTP connections, against `http.max-connections`.
    let httpConnections: HTTPConnectionCount
    let group: any EventLoopGroup
    let onServerRunning: @Sendable (any Channel) async -> Void
    let logger: Logger

    func run() async throws {
        // One element per HTTP connection waiting for its task; each is an open socket, so the
        // process's file limit bounds this stream.
        let (connections, arrivals) = AsyncStream.makeStream(of: NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>.self)
        let sockets = try await bindListeningSockets(arrivals: arrivals)
        await onServerRunning(sockets[0].channel)
        let logger = self.logger
        let http = self.http
        let progress = ShutdownProgress()
        // However it ends (cancelled too), a socket closing afterwards is no news.
        defer { progress.stopping.store(true, ordering: .relaxed) }
        // A listening socket closing outside a shutdown is logged; once every one has, the
        // listener fails (the process ends, and its supervisor starts it again): it ran on,
        // accepting nothing, and looked healthy.
        for socket in sockets {
            socket.channel.closeFuture.whenComplete { [settings] result in
                guard !progress.stopping.load(ordering: .relaxed) else { return }
                let lost = progress.socketsLost.add(1, ordering: .relaxed).newValue
                logger.error(
                    "listening socket closed by itself", metadata: ["port": "\(settings.port)", "open": "\(sockets.count - lost)", "result": "\(result)"])
                if lost == sockets.count { arrivals.finish() }
            }
        }
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { tasks in
                for await connection in connections {
                    tasks.addTask {
                        progress.tasks.add(1, ordering: .relaxed)
                        await http.handleHTTP(asyncChannel: connection, logger: logger)
                        progress.tasks.subtract(1, ordering: .relaxed)
                    }
                }
                if progress.forced.load(ordering: .relaxed) || progress.socketsLost.load(ordering: .relaxed) == sockets.count { tasks.cancelAll() }
            }
        } onGracefulShutdown: { [settings] in
            progress.stopping.store(true, ordering: .relaxed)
            let loop = sockets[0].channel.eventLoop
            let closed = sockets.map { $0.connections.quiesce(listeningSocket: $0.channel) }
            EventLoopFuture.andAllComplete(closed, on: loop).whenComplete { _ in
                progress.closed.store(true, ordering: .relaxed)
                arrivals.finish()
            }
            loop.scheduleTask(in: settings.closeGrace) {
                guard !progress.closed.load(ordering: .relaxed) else { return }
                progress.forced.store(true, ordering: .relaxed)
                let open = sockets.reduce(0) { $0 + $1.connections.count }
                logger.warning(
                    "listener: connections still open after the grace; closing them and cancelling their tasks",
                    metadata: ["port": "\(settings.port)", "connections": "\(open)", "tasks": "\(progress.tasks.load(ordering: .relaxed))"])
                for socket in sockets { progress.closedAtDeadline.add(socket.connections.closeRemaining(logger: logger), ordering: .relaxed) }
                arrivals.finish()
            }
        }
        if !progress.stopping.load(ordering: .relaxed), progress.socketsLost.load(ordering: .relaxed) == sockets.count {
            throw ListeningSocketsLost(port: settings.port)
        }
        logger.info(
            "listener stopped",
            metadata: [
                "port": "\(settings.port)",
                "connections": progress.forced.load(ordering: .relaxed)
                    ? "\(progress.closedAtDeadline.load(ordering: .relaxed)) closed by the listener after the grace" : "closed",
            ])
    }

    /// One listening socket per event loop, all on the same port (`SO_REUSEPORT` on Linux):
    /// the kernel spreads connections over the loops and each is accepted on the loop that
    /// serves it, without a hand-off between threads. A plain bind of the port first makes a
    /// port already in use (say, a second instance) an error, as without `SO_REUSEPORT`.
    private func bindListeningSockets(
        arrivals: AsyncStream<NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>>.Continuation
    ) async throws -> [(channel: any Channel, connections: AcceptedConnections)] {
        let loops = Array(group.makeIterator())
        #if os(Linux)
        let perLoop = loops.count > 1
        #else
        let perLoop = false
        #endif
        var port = settings.port
        if perLoop {
            let probe = try await makeBootstrap(group: loops[0], reusePort: false, arrivals: arrivals, connections: nil)
                .bind(host: settings.host, port: port).get()
            port = probe.localAddress?.port ?? port
            try await probe.close()
        }
        var sockets: [(channel: any Channel, connections: AcceptedConnections)] = []
        do {
            for loop in perLoop ? loops : [loops[0]] {
                let connections = AcceptedConnections()
                let channel = try await makeBootstrap(
                    group: perLoop ? loop : group, reusePort: perLoop, arrivals: arrivals, connections: connections
                )
                .bind(host: settings.host, port: port).get()
                port = channel.localAddress?.port ?? port
                sockets.append((channel, connections))
            }
        } catch {
            for socket in sockets { try? await socket.channel.close() }
            throw error
        }
        return sockets
    }

    private func makeBootstrap(
        group: any EventLoopGroup, reusePort: Bool,
        arrivals: AsyncStream<NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>>.Continuation,
        connections: AcceptedConnections?
    ) -> ServerBootstrap {
        var bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: Int32(settings.backlog))
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            // Accept up to 64 connections per wake-up (NIO's default is 4): a connect storm is
            // drained from the backlog in fewer loop iterations.
            .serverChannelOption(ChannelOptions.maxMessagesPerRead, value: 64)
            // NIO turns TCP_NODELAY on by default; accepted sockets inherit the listener's.
            .serverChannelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: settings.tcpNoDelay ? 1 : 0)
        #if os(Linux)
        if reusePort {
            bootstrap = bootstrap.serverChannelOption(
                ChannelOptions.Types.SocketOption(level: .socket, name: NIOBSDSocket.Option(rawValue: SO_REUSEPORT)), value: 1)
        }
        #endif
        return
            bootstrap
            .serverChannelInitializer { [logger] channel in
                channel.eventLoop.makeCompletedFuture {
                    // Out of file descriptors (EMFILE, ENFILE) or memory: accepting pauses
                    // instead of failing again at once on every loop.
                    try channel.pipeline.syncOperations.addHandler(AcceptPauseHandler(logger: logger))
                    if let connections { try channel.pipeline.syncOperations.addHandler(connections.makeHandler()) }
                }
            }
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { [settings, handshake, http, pending, httpConnections, logger] channel in
                // The probe of the port (no `connections`) serves nobody: a client that reached
                // it in its moment of life is closed and tries again.
                guard connections != nil else { return channel.eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel) }
                return channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let tls = settings.tls { try sync.addHandler(NIOSSLServerHandler(context: tls)) }
                    let timeout = HandshakeTimeoutHandler(timeout: settings.handshakeTimeout, registry: pending)
                    let router = FirstRequestRouter(
                        handshake: handshake, maxFrameSize: settings.maxWebSocketFrameBytes, timeout: timeout,
                        acceptsSessions: settings.acceptsSessions, httpConnections: httpConnections
                    ) { channel, position in
                        try http.configure(channel: channel, position: position, logger: logger) { channel in
                            // Shutting down: nobody will serve it.
                            if case .terminated = arrivals.yield(try http.wrap(channel)) {
                                channel.close(promise: nil)
                            }
                        }
                    }
                    try sync.addHandler(router)
                    // After the router, so it also sees the HTTP parser's errors.
                    try sync.addHandler(timeout)
                }
            }
    }
}

/// HTTP/1.1 connections of the API: publish requests are answered on the event loop by
/// ``HTTPPublishHandler``; the first other request starts a task where Hummingbird's
/// responder serves the connection from then on.
struct HTTPAPIChannel: HTTPChannelHandler {
    struct Value: ServerChildChannelValue {
        let asyncChannel: NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>
        var channel: any Channel { asyncChannel.channel }
    }

    let responder: HTTPChannelHandler.Responder
    let secure: Bool
    let idleTimeout: TimeAmount
    /// How long reading one request may take, plus its body's allowance (`http.handshake-timeout-ms`).
    var requestTimeout: TimeAmount?
    /// At shutdown, how long a connection waits for the answers it owes before it is closed.
    var shutdownGrace: TimeAmount = .seconds(5)
    let publisher: NotificationPublisher
    let dates: HTTPDateCache
    /// `GET /health/ready`'s answer, served by the publish handler; nil: by the router.
    var readiness: ReadinessCheck?
    let metrics = HTTPRouteMetrics()

    /// Installs NIO's HTTP/1.1 server handlers at `position` (malformed requests get a 400 and
    /// the connection closes) and the publish fast path, which keeps the connection's state and
    /// installs Hummingbird's HTTP-types codec and calls `openTask` when the connection first
    /// needs the router.
    func configure(
        channel: any Channel, position: ChannelPipeline.SynchronousOperations.Position,
        logger: Logger, codecInstalled: Bool = false, openTask: @escaping (any Channel) throws -> Void
    ) throws {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderFieldSize = FirstRequestRouter.maxHeaderFieldBytes
        limits.maxHeaderListSize = FirstRequestRouter.maxHeaderListBytes
        limits.maxHeaderFieldCount = FirstRequestRouter.maxHeaderFields
        let sync = channel.pipeline.syncOperations
        try sync.configureHTTPServerPipeline(
            // Malformed HTTP is answered by HTTPPublishHandler: JSON, in order with the answers owed.
            position: position, withPipeliningAssistance: false, withErrorHandling: false,
            withOutboundHeaderValidation: false, withEncoderConfiguration: .init(),
            withDecoderLimitConfiguration: limits)
        var answerReadiness: (@Sendable () -> (status: HTTPResponse.Status, body: ReadinessAnswer))?
        if let readiness { answerReadiness = { readiness.answer() } }
        try sync.addHandler(
            HTTPPublishHandler(
                publisher: publisher, dates: dates, metrics: metrics, secure: secure, idleTimeout: idleTimeout, requestTimeout: requestTimeout,
                shutdownGrace: shutdownGrace, codecInstalled: codecInstalled, readiness: answerReadiness, openTask: openTask))
    }

    /// The connection as the router's task reads it (handlers added last, after the HTTP-types
    /// codec).
    func wrap(_ channel: any Channel) throws -> NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart> {
        try NIOAsyncChannel(wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true))
    }

    /// A connection served by the router from the start (`ServerChildChannel`; the listener
    /// itself uses ``configure(channel:position:logger:codecInstalled:openTask:)``).
    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            try configure(channel: channel, position: .last, logger: logger, codecInstalled: true) { _ in }
            try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: secure))
            return Value(asyncChannel: try wrap(channel))
        }
    }

    func handle(value: Value, logger: Logger) async {
        await handleHTTP(asyncChannel: value.asyncChannel, logger: logger)
    }

    /// What Hummingbird's `Application` does per request: build the context, respond (an
    /// unexpected error is a 500), add `Date` and `Server`, write.
    static func responder<R: HTTPResponder>(_ router: R, serverName: String, dates: HTTPDateCache, logger: Logger) -> HTTPChannelHandler.Responder
    where R.Context == BasicRequestContext {
        { request, writer, channel in
            let context = BasicRequestContext(source: .init(channel: channel, logger: logger))
            var response: Response
            do {
                response = try await router.respond(to: request, context: context)
            } catch let error as HTTPParserError {
                throw error
            } catch {
                logger.debug("unrecognised error", metadata: ["error": "\(error)"])
                response = Response(status: .internalServerError, body: .init())
            }
            response.headers[.date] = dates.now
            response.headers[.server] = serverName
            try await writer.write(response: response.head, body: response.body)
        }
    }
}

/// The `Date` response header (RFC 9110 §6.6.1), formatted once per second.
final class HTTPDateCache: Sendable {
    private let cached = Mutex<(second: Int, text: String)>((-1, ""))

    var now: String {
        let second = time(nil)
        return cached.withLock { c in
            if c.second != second { c = (second, Self.format(second)) }
            return c.text
        }
    }

    static func format(_ seconds: Int) -> String {
        var t = time_t(seconds)
        var parts = tm()
        gmtime_r(&t, &parts)
        let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return "\(days[Int(parts.tm_wday)]), \(two(parts.tm_mday)) \(months[Int(parts.tm_mon)]) \(1900 + parts.tm_year) "
            + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) GMT"
    }
}
