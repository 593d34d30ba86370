import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOWebSocket
import Redis
import RedisServerTesting
import STOMPCodec
import SwitchboardCore
import SwitchboardRedis
import SwitchboardRoutes
import SwitchboardWire
import Testing

/// What `CONNECTED` and a SUBSCRIBE's `RECEIPT` mean with events on in Redis mode: the session's
/// `connected` (`subscribed`) fact is stored, against a real redis-server and real sockets.
/// `CLIENT PAUSE … WRITE` holds the gateway's `FCALL` back, so a frame that did not wait for
/// Redis would come while the stream is still empty.
@Suite("Lifecycle: CONNECTED after the fact is stored", .enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct LifecycleConnectTests {
    @Test func connectedComesOnceTheConnectedEventAndPresenceAreInRedis() async throws {
        let gw = try await LifecycleTestGateway.start()
        try await gw.pauseWrites(ms: 500)
        let c = try await gw.client()
        try c.send(.connect, ["accept-version": "1.2", "host": "localhost", "passcode": "alice"])
        let connected = try await c.next()
        try #require(connected.command == .connected, "\(connected)")
        let session = try #require(connected.headers["session"])
        // Read at once, not polled: CONNECTED came after the write.
        let events = try await gw.events().map { "\($0.type.rawValue) \($0.session ?? "-")" }
        #expect(events == ["connected \(session)", "user-online \(session)"])
        let alice = try await gw.presence(user: "alice")
        #expect(alice.online && alice.sessions.keys.contains(session))
        await gw.stop()
    }

    @Test func aSubscribeReceiptComesOnceTheSubscribedEventIsInRedis() async throws {
        let gw = try await LifecycleTestGateway.start()
        let c = try await gw.client()
        try c.send(.connect, ["accept-version": "1.2", "host": "localhost", "passcode": "bob"])
        #expect(try await c.next().command == .connected)
        try await gw.pauseWrites(ms: 500)
        try c.send(.subscribe, ["id": "0", "destination": "/topic/room", "receipt": "r1"])
        let receipt = try await c.next()
        #expect(receipt.command == .receipt && receipt.headers["receipt-id"] == "r1", "\(receipt)")
        let types = try await gw.events().map(\.type)
        #expect(types.suffix(2) == [.subscribed, .destinationOccupied])
        let room = try await LifecycleFunctions.call(DestinationPresenceQuery(prefix: "switchboard:", destination: "/topic/room", limit: 10), on: gw.admin)
            .get()
        #expect(room.subscribers == 1 && room.users == ["bob"])
        await gw.stop()
    }

    @Test func aConnectWhileRedisIsDownIsRefusedAndItsFactsFollowWhenRedisIsBack() async throws {
        let gw = try await LifecycleTestGateway.start()
        gw.server.kill()
        let c = try await gw.client()
        try c.send(.connect, ["accept-version": "1.2", "host": "localhost", "passcode": "carol"])
        let error = try await c.next()
        #expect(error.command == .error, "\(error)")
        let message = try #require(error.headers["message"])
        #expect(message.hasPrefix("presence could not be recorded: writing to Redis failed"), "\(message)")
        #expect(try await eventually { c.closed })
        // The facts stay queued and are retried: the refused session comes and goes, and
        // nobody is left online.
        try await gw.server.launch()
        let written = try await eventually(timeout: .seconds(20)) {
            (try? await gw.events().map(\.type)) == [.connected, .userOnline, .disconnected, .userOffline]
        }
        #expect(written)
        #expect(try await gw.events().last?.reason == .error)
        #expect(try await gw.presence(user: "carol").online == false)
        await gw.stop()
    }

    @Test func aConnectWhileRedisRestartsWaitsForItWithAWait() async throws {
        // A wait far longer than the restart, so that a slow machine cannot fail the test.
        let gw = try await LifecycleTestGateway.start(unreachableWait: .seconds(60))
        gw.server.kill()
        let c = try await gw.client()
        try c.send(.connect, ["accept-version": "1.2", "host": "localhost", "passcode": "erin"])
        // No answer while Redis is away (without the wait: the ERROR at once)...
        await #expect(throws: LifecycleTestClient.NoFrame.self) { try await c.next(timeout: .milliseconds(300)) }
        try await gw.server.launch()
        // ...then CONNECTED, once its fact is stored.
        let connected = try await c.next(timeout: .seconds(30))
        try #require(connected.command == .connected, "\(connected)")
        #expect(try await gw.events().map(\.type) == [.connected, .userOnline])
        #expect(try await gw.presence(user: "erin").online)
        await gw.stop()
    }

    @Test func aConnectPastTheWaitIsRefusedSayingSo() async throws {
        let gw = try await LifecycleTestGateway.start(unreachableWait: .milliseconds(300))
        gw.server.kill()
        let c = try await gw.client()
        let sent = ContinuousClock.now
        try c.send(.connect, ["accept-version": "1.2", "host": "localhost", "passcode": "frank"])
        let error = try await c.next()
        #expect(ContinuousClock.now - sent >= .milliseconds(300))
        #expect(error.command == .error, "\(error)")
        let message = try #require(error.headers["message"])
        #expect(message.contains("writing to Redis failed (redis unreachable for 300 ms"), "\(message)")
        #expect(try await eventually { c.closed })
        try await gw.server.launch()
        await gw.stop()
    }

    @Test func aSessionClosedWhileItsConnectWaitsIsRecordedAsGone() async throws {
        let gw = try await LifecycleTestGateway.start()
        try await gw.pauseWrites(ms: 300)
        let c = try await gw.client()
        try c.send(.connect, ["accept-version": "1.2", "host": "localhost", "passcode": "dave"])
        try await c.channel.close()
        let gone = try await eventually {
            (try? await gw.events().map(\.type)) == [.connected, .userOnline, .disconnected, .userOffline]
        }
        #expect(gone)
        #expect(try await gw.presence(user: "dave").online == false)
        await gw.stop()
    }

    @Test func aConnectStormIsAFewBatchesNotOneWritePerSession() async throws {
        let gw = try await LifecycleTestGateway.start()
        let sessions = 200
        _ = try await gw.admin.execute(RawCommand("CONFIG", "RESETSTAT"))
        // Held until every CONNECT was authenticated (its fact queued), however slowly a loaded
        // machine gets there: a 500 ms pause could end with CONNECTs still coming in, one write each.
        try await gw.pauseWrites(ms: 60_000)
        // Each CONNECT right after its connection opens: opening all 200 first took more than
        // the 10 s CONNECT timeout on a loaded machine (CI run 85), and the first ones got ERROR.
        var clients: [LifecycleTestClient] = []
        for n in 0..<sessions {
            let c = try await gw.client()
            try c.send(.connect, ["accept-version": "1.2", "host": "localhost", "passcode": "user\(n)"])
            clients.append(c)
        }
        #expect(try await eventually(timeout: .seconds(30)) { gw.services.userSessions.total == sessions })
        _ = try await gw.admin.execute(RawCommand("CLIENT", "UNPAUSE"))
        for c in clients {
            let frame = try await c.next(timeout: .seconds(30))
            #expect(frame.command == .connected, "\(frame)")
        }
        let events = try await gw.events()
        #expect(events.filter { $0.type == .connected }.count == sessions)
        let stats = "\(try await gw.admin.execute(RawCommand("INFO", "commandstats")))"
        let calls = try #require(Self.calls(of: "fcall", in: stats), "\(stats)")
        #expect(calls <= 20, "\(calls) FCALLs for \(sessions) CONNECTs")
        await gw.stop()
    }

    /// `calls` of `cmdstat_<command>` in `INFO commandstats`.
    static func calls(of command: String, in info: String) -> Int? {
        guard let line = info.split(whereSeparator: \.isNewline).first(where: { $0.hasPrefix("cmdstat_\(command):") }),
            let field = line.split(separator: ",").first(where: { $0.hasPrefix("cmdstat_\(command):calls=") })
        else { return nil }
        return Int(field.dropFirst("cmdstat_\(command):calls=".count))
    }
}

/// Takes any non-empty token as the user's name.
struct NameAuthenticator: SessionAuthenticator {
    func authenticate(token: String, on eventLoop: any EventLoop) -> EventLoopFuture<SessionIdentity> {
        eventLoop.makeSucceededFuture(SessionIdentity(user: token))
    }
}

/// A redis-server, a `RedisLifecycle` on one event loop, and STOMP sessions on real sockets
/// (the gateway's pipeline after the WebSocket handshake).
final class LifecycleTestGateway: @unchecked Sendable {
    let server: RedisServerProcess
    /// The test's own client.
    let admin: RedisClient
    let lifecycleClient: RedisClient
    let group: MultiThreadedEventLoopGroup
    let hub: FanoutHub
    let services: GatewayServices
    let listener: any Channel
    let port: Int

    private init(
        server: RedisServerProcess, admin: RedisClient, lifecycleClient: RedisClient, group: MultiThreadedEventLoopGroup, hub: FanoutHub,
        services: GatewayServices, listener: any Channel
    ) {
        self.services = services
        self.server = server
        self.admin = admin
        self.lifecycleClient = lifecycleClient
        self.group = group
        self.hub = hub
        self.listener = listener
        self.port = listener.localAddress!.port!
    }

    static func start(unreachableWait: TimeAmount = .zero) async throws -> LifecycleTestGateway {
        let server = try await RedisServerProcess.start()
        let admin = try await server.client()
        // Longer than a test's CLIENT PAUSE: a batch held by it is written when the pause ends,
        // however long a loaded machine takes to get there, not timed out.
        let lifecycleClient = try await server.client { $0.commandTimeout = .seconds(90) }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        var logger = Logger(label: "lifecycle-test")
        logger.logLevel = .critical
        let lifecycle = RedisLifecycle(
            client: lifecycleClient, settings: LifecycleStreamSettings(), instance: "gw1~test", loops: [loop], unreachableWait: unreachableWait,
            logger: logger)
        await lifecycle.start()
        let hub = FanoutHub(eventLoops: [loop])
        var configuration = SessionConfiguration()
        configuration.authenticator = NameAuthenticator()
        let services = GatewayServices(
            configuration: configuration, hub: hub, engine: InMemoryEngine(hub: hub), routes: RouteTable(), instanceID: "gw1",
            logger: logger, lifecycle: lifecycle)
        let listener = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(WebSocketFrameDecoder()), WebSocketSTOMPTransport(limits: configuration.decoderLimits),
                        STOMPSessionHandler(services: services),
                    ])
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return LifecycleTestGateway(
            server: server, admin: admin, lifecycleClient: lifecycleClient, group: group, hub: hub, services: services, listener: listener)
    }

    /// Holds every write command (the gateway's `FCALL`s) for `ms`.
    func pauseWrites(ms: Int) async throws {
        _ = try await admin.execute(RawCommand("CLIENT", "PAUSE", .integer(ms), "WRITE"))
    }

    func client() async throws -> LifecycleTestClient {
        let collector = LifecycleTestClient.Collector()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(WebSocketFrameDecoder()), WebSocketFrameEncoder(), collector,
                    ])
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        return LifecycleTestClient(channel: channel, collector: collector)
    }

    /// The events of the stream but its `presence-reset` (written before the first one).
    func events() async throws -> [LifecycleEvent] {
        let token = try await onAdmin { try await self.admin.execute(RawCommand("XRANGE", "switchboard:events", "-", "+")) }
        return try [RedisStreamEntry](fromRESP: token).compactMap(LifecycleEvent.init).filter { $0.type != .presenceReset }
    }

    func presence(user: String) async throws -> UserPresence {
        try await onAdmin { try await LifecycleFunctions.call(UserPresenceQuery(prefix: "switchboard:", user: user), on: self.admin).get() }
    }

    /// Runs `query` (a read) on the test's own client, which reconnects on its own schedule
    /// after the server restarted: while it is not connected yet (up to 10 s), the query waits
    /// for it. A query written on the old connection before the client saw it close (a loaded
    /// machine) fails as outcome unknown: read-only, it is asked again.
    private func onAdmin<T>(_ query: () async throws -> T) async throws -> T {
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            do {
                return try await query()
            } catch let error as RedisClientError
                where (error == .notConnected || error == .connectionClosed) && ContinuousClock.now < deadline
            {
                try await Task.sleep(for: .milliseconds(20))  // poll interval while reconnecting
            }
        }
    }

    /// Closes the sessions still open first (as the gateway's drain does), so that nothing is
    /// left for the event loop's shutdown.
    func stop() async {
        try? await listener.close()
        for shard in hub.shards { shard.closeAll(reason: "test over", waitForStep: false) }
        _ = try? await eventually { self.services.stats.connectionsOpen.load() == 0 }
        // Their last facts are written before the client goes.
        await (services.lifecycle as? RedisLifecycle)?.flush(timeout: .seconds(5))
        await lifecycleClient.shutdown()
        await admin.shutdown()
        for shard in hub.shards { shard.stop() }
        try? await group.shutdownGracefully()
        server.stop()
    }
}

/// A STOMP client over a WebSocket connection (no handshake: the server's pipeline starts
/// after it), collecting the frames it reads.
final class LifecycleTestClient: Sendable {
    final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = WebSocketFrame
        let state = NIOLockedValueBox<(frames: [STOMPFrame], closed: Bool)>(([], false))

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let frame = unwrapInboundIn(data)
            guard frame.opcode == .text else { return }
            var data = frame.data
            var decoder = STOMPFrameDecoder()
            var frames: [STOMPFrame] = []
            while let f = try? decoder.decodeFrame(&data) { frames.append(f) }
            state.withLockedValue { $0.frames += frames }
        }

        func channelInactive(context: ChannelHandlerContext) {
            state.withLockedValue { $0.closed = true }
        }
    }

    let channel: any Channel
    let collector: Collector

    init(channel: any Channel, collector: Collector) {
        self.channel = channel
        self.collector = collector
    }

    var closed: Bool { collector.state.withLockedValue { $0.closed } }

    func send(_ command: STOMPCommand, _ headers: STOMPHeaders) throws {
        let bytes = STOMPFrameEncoder.encode(STOMPFrame(command, headers: headers), escapeHeaders: true)
        channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: bytes), promise: nil)
    }

    struct NoFrame: Error {}

    /// The next frame read (waits for it).
    func next(timeout: Duration = .seconds(10)) async throws -> STOMPFrame {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            let frame: STOMPFrame? = collector.state.withLockedValue { $0.frames.isEmpty ? nil : $0.frames.removeFirst() }
            if let frame { return frame }
            try await Task.sleep(for: .milliseconds(5))
        }
        throw NoFrame()
    }
}
