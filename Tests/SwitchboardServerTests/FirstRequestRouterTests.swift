import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOWebSocket
import STOMPCodec
import SwitchboardCore
import SwitchboardRoutes
import SwitchboardWire
import Testing

@testable import SwitchboardServer

/// Collects what reaches the HTTP side after the router hands a connection over.
final class HTTPSideRecorder: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    var received = ByteBuffer()
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var b = unwrapInboundIn(data)
        received.writeBuffer(&b)
    }
}

/// One connection's pipeline as the listener builds it, on an embedded channel.
final class RouterHarness {
    let channel = EmbeddedChannel()
    let hub = FanoutHub()
    let limiter: ConnectionLimiter
    let admission = ConnectionAdmission()
    let pending = PendingHandshakes()
    var http: HTTPSideRecorder?
    let timeout: HandshakeTimeoutHandler

    init(maxConnections: Int = 100, origins: [String] = [], sharing limiter: ConnectionLimiter? = nil, acceptsSessions: Bool = true) throws {
        self.limiter = limiter ?? ConnectionLimiter(maxTotal: maxConnections, maxPerAddress: maxConnections)
        let services = GatewayServices(
            configuration: SessionConfiguration(), hub: hub, engine: InMemoryEngine(hub: hub),
            routes: RouteTable(), instanceID: "t", logger: Logger(label: "test"))
        let handshake = WebSocketHandshake(
            services: services, stompPath: "/stomp", admission: admission, limiter: self.limiter,
            allowedOrigins: origins, handshakeCookie: "sb_token")
        let timeout = HandshakeTimeoutHandler(timeout: .seconds(10), registry: pending)
        self.timeout = timeout
        let router = FirstRequestRouter(
            handshake: handshake, maxFrameSize: 64 * 1024, timeout: timeout, acceptsSessions: acceptsSessions
        ) { [unowned self] channel, position in
            let recorder = HTTPSideRecorder()
            try channel.pipeline.syncOperations.addHandler(recorder, position: position)
            self.http = recorder
        }
        try channel.pipeline.syncOperations.addHandler(router)
        try channel.pipeline.syncOperations.addHandler(timeout)
        try channel.connect(to: SocketAddress(ipAddress: "10.0.0.1", port: 4000)).wait()
    }

    func write(_ text: String, byteAtATime: Bool = false) throws {
        if byteAtATime {
            for byte in text.utf8 { try channel.writeInbound(ByteBuffer(bytes: [byte])) }
        } else {
            try channel.writeInbound(ByteBuffer(string: text))
        }
    }

    func outboundText() throws -> String {
        var all = ByteBuffer()
        while var b = try channel.readOutbound(as: ByteBuffer.self) { all.writeBuffer(&b) }
        return String(buffer: all)
    }

    func has<H: ChannelHandler>(_ type: H.Type) -> Bool { (try? channel.pipeline.syncOperations.handler(type: type)) != nil }

    static func upgrade(path: String = "/stomp", extra: String = "", version: String = "13", key: String = "dGhlIHNhbXBsZSBub25jZQ==") -> String {
        "GET \(path) HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: \(key)\r\n"
            + "Sec-WebSocket-Version: \(version)\r\n\(extra)\r\n"
    }

    /// A masked client text frame.
    static func clientFrame(_ text: String) -> ByteBuffer {
        let payload = Array(text.utf8)
        precondition(payload.count < 126)
        let mask: [UInt8] = [1, 2, 3, 4]
        var b = ByteBuffer(bytes: [0x81, 0x80 | UInt8(payload.count)] + mask)
        b.writeBytes(payload.enumerated().map { $0.element ^ mask[$0.offset % 4] })
        return b
    }
}

@Suite struct FirstRequestRouterTests {
    /// A health check gets a reserve place past `http.max-connections` only with its request
    /// line complete: `Connection: close` is inserted after it. A `HEAD /health` padded with
    /// spaces past the router's wait (the parser allows them before the version) kept its place
    /// open for further requests.
    @Test func onlyACompleteHealthCheckLineIsAHealthCheck() {
        #expect(FirstRequestRouter.isHealthCheck(ByteBuffer(string: "HEAD /health/live HTTP/1.1\r\n")))
        #expect(FirstRequestRouter.isHealthCheck(ByteBuffer(string: "GET /health?x=1 HTTP/1.1\n")))
        #expect(!FirstRequestRouter.isHealthCheck(ByteBuffer(string: "HEAD /health" + String(repeating: " ", count: 17_000))))
        #expect(!FirstRequestRouter.isHealthCheck(ByteBuffer(string: "POST /health HTTP/1.1\r\n")))
        #expect(!FirstRequestRouter.isHealthCheck(ByteBuffer(string: "HEAD /healthy HTTP/1.1\r\n")))
    }

    /// Holds a close back, as TLS does while it waits for the client's `close_notify` (up to
    /// a second): the channel stays open, and bytes still come up the pipeline.
    final class DeferredClose: ChannelOutboundHandler {
        typealias OutboundIn = Any
        func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) { promise?.succeed() }
    }

    /// An upgrade finished after the handshake timeout fired, while the close is held back
    /// (TLS): it was accepted, the session's handlers went in behind the expired timeout
    /// handler, and the first WebSocket frame trapped in it (the process died). The connection
    /// takes nothing more once its first request timed out.
    @Test func anUpgradeFinishedAfterTheTimeoutIsNotAccepted() throws {
        let h = try RouterHarness()
        try h.channel.pipeline.syncOperations.addHandler(DeferredClose(), position: .first)
        let upgrade = RouterHarness.upgrade()
        try h.write(String(upgrade.prefix(20)))
        h.timeout.expire()
        #expect(h.channel.isActive, "the close is held back")
        // The rest of the head, and a masked ping.
        try h.write(String(upgrade.dropFirst(20)))
        try h.channel.writeInbound(ByteBuffer(bytes: [0x89, 0x81, 1, 2, 3, 4, UInt8(ascii: "x") ^ 1]))
        #expect(try h.outboundText() == "")
        #expect(!h.has(STOMPSessionHandler.self))
        _ = try? h.channel.finish()
    }

    @Test func upgradeByteByByteAnswers101AndLeavesOnlyTheSession() throws {
        let h = try RouterHarness()
        try h.write(RouterHarness.upgrade(extra: "Sec-WebSocket-Protocol: v11.stomp, v12.stomp\r\n"), byteAtATime: true)
        #expect(
            try h.outboundText() == "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
                + "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: v12.stomp\r\n\r\n")
        #expect(!h.has(FirstRequestRouter.self))
        #expect(!h.has(HandshakeTimeoutHandler.self))
        #expect(h.has(STOMPSessionHandler.self))
        #expect(h.http == nil)
        #expect(h.pending.count == 0)
        _ = try? h.channel.finish()
    }

    @Test func bytesAfterTheHeadReachTheSession() throws {
        let h = try RouterHarness()
        var bytes = ByteBuffer(string: RouterHarness.upgrade())
        var connect = RouterHarness.clientFrame("CONNECT\naccept-version:1.2\nhost:x\n\n\u{0}")
        bytes.writeBuffer(&connect)
        try h.channel.writeInbound(bytes)
        let text = try h.outboundText()
        #expect(text.hasPrefix("HTTP/1.1 101 Switching Protocols\r\n"))
        #expect(text.contains("CONNECTED\nversion:1.2\n"), "the CONNECT sent with the head was answered: \(text)")
        _ = try? h.channel.finish()
    }

    /// An upgrade whose head breaks the HTTP parser's limits goes to the parser, which refuses
    /// it; before, a head completed within one read was upgraded whatever its size.
    @Test(arguments: [
        RouterHarness.upgrade(extra: "X-Big: " + String(repeating: "v", count: 17 * 1024) + "\r\n"),
        RouterHarness.upgrade(extra: (0..<120).map { "X-H\($0): v\r\n" }.joined()),
        RouterHarness.upgrade(extra: (0..<5).map { "X-H\($0): " + String(repeating: "v", count: 15 * 1024) + "\r\n" }.joined()),
    ])
    func anUpgradeBeyondTheHeaderLimitsIsNotUpgraded(request: String) throws {
        let h = try RouterHarness()
        try h.write(request)
        #expect(!h.has(STOMPSessionHandler.self))
        #expect(h.http != nil, "handed to the HTTP side")
        #expect(!(try h.outboundText()).hasPrefix("HTTP/1.1 101"))
    }

    /// The session writes from the frame decoder's context, past the handlers between (see
    /// ``STOMPSessionHandler/writer``): that is right only while they are inbound-only.
    @Test func theSessionWritesPastInboundOnlyHandlers() throws {
        let h = try RouterHarness()
        try h.write(RouterHarness.upgrade())
        _ = try h.outboundText()
        let sync = h.channel.pipeline.syncOperations
        let session = try sync.handler(type: STOMPSessionHandler.self)
        let decoder = try sync.context(handlerType: ByteToMessageHandler<WebSocketFrameDecoder>.self)
        #expect(session.writer === decoder)
        let transport = try sync.handler(type: WebSocketSTOMPTransport.self)
        #expect(!(transport is any _ChannelOutboundHandler))
        #expect(!(decoder.handler is any _ChannelOutboundHandler))
        // NIO's description has one line per handler: "<inbound type> ↓↑ <outbound type> [<name>]".
        func handlers() -> (String, [(inbound: String, outbound: String?)]) {
            let description = h.channel.pipeline.debugDescription
            return (
                description,
                description.split(separator: "\n").dropFirst(2).map { line in
                    let sides = line.split(separator: "↓↑", maxSplits: 1).map { $0.drop { $0 == " " } }
                    return (inbound: String(sides[0]), outbound: sides.count > 1 && !sides[1].hasPrefix("[") ? String(sides[1]) : nil)
                }
            )
        }
        // Before CONNECT the input limit comes first (toward the socket: the session's writes
        // pass it, untouched); it leaves once the CONNECT frame is read.
        var (description, list) = handlers()
        #expect(list.first?.inbound.hasPrefix("PreConnectInputLimit") == true, "\(description)")
        try h.channel.writeInbound(RouterHarness.clientFrame("CONNECT\naccept-version:1.2\nhost:x\n\n\u{0}"))
        #expect(try h.outboundText().contains("CONNECTED\nversion:1.2\n"))
        // Then nothing else between: the decoder, the transport, the session, in this order.
        (description, list) = handlers()
        #expect(list.count == 3, "\(description)")
        #expect(zip(list, ["ByteToMessageHandler", "WebSocketSTOMPTransport", "STOMPSessionHandler"]).allSatisfy { $0.inbound.hasPrefix($1) }, "\(description)")
        #expect(list.prefix(2).allSatisfy { $0.outbound == nil }, "\(description)")
        #expect(list.last?.outbound?.hasPrefix("STOMPSessionHandler") == true, "\(description)")
        _ = try? h.channel.finish()
    }

    @Test(arguments: [
        (RouterHarness.upgrade(path: "/ws"), "400 Bad Request", #""field":"path""#),
        (RouterHarness.upgrade(version: "8"), "426 Upgrade Required", #""field":"Sec-WebSocket-Version""#),
        (RouterHarness.upgrade(key: "short"), "400 Bad Request", #""field":"Sec-WebSocket-Key""#),
        (RouterHarness.upgrade(extra: "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"), "400 Bad Request", #""field":"Sec-WebSocket-Key""#),
        (RouterHarness.upgrade(extra: "Sec-WebSocket-Protocol: mqtt\r\n"), "400 Bad Request", #""field":"Sec-WebSocket-Protocol""#),
        (RouterHarness.upgrade(extra: "Origin: https://evil.example\r\n"), "403 Forbidden", #""field":"Origin""#),
        // RFC 9112 §3.2: exactly one Host.
        (RouterHarness.upgrade(extra: "host: y\r\n"), "400 Bad Request", #""field":"Host""#),
        (RouterHarness.upgrade().replacing("Host: x\r\n", with: ""), "400 Bad Request", #""field":"Host""#),
    ])
    func refusalsAreJSONNamingTheFieldAndClose(request: String, status: String, field: String) throws {
        let h = try RouterHarness(origins: ["https://app.example"])
        try h.write(request)
        let text = try h.outboundText()
        #expect(text.hasPrefix("HTTP/1.1 \(status)\r\n"), "\(text)")
        #expect(text.contains("Content-Type: application/json\r\n"))
        #expect(text.hasSuffix("}") && text.contains(field), "\(text)")
        if status.hasPrefix("426") {
            // RFC 9110 §15.5.22: a 426 names the protocol to upgrade to.
            #expect(text.contains("Sec-WebSocket-Version: 13\r\n") && text.contains("Upgrade: websocket\r\n") && text.contains("Connection: Upgrade, close\r\n"))
        }
        #expect(!h.channel.isActive)
        #expect(!h.has(STOMPSessionHandler.self))
    }

    @Test func limiterReservationIsReleasedWhenTheSessionCloses() throws {
        let first = try RouterHarness(maxConnections: 1)
        try first.write(RouterHarness.upgrade())
        #expect(try first.outboundText().hasPrefix("HTTP/1.1 101"))
        let second = try RouterHarness(sharing: first.limiter)
        try second.write(RouterHarness.upgrade())
        #expect(try second.outboundText().hasPrefix("HTTP/1.1 429 Too Many Requests\r\n"))
        _ = try? first.channel.finish()
        let third = try RouterHarness(sharing: first.limiter)
        try third.write(RouterHarness.upgrade())
        #expect(try third.outboundText().hasPrefix("HTTP/1.1 101"), "the first session's close released its reservation")
        _ = try? third.channel.finish()
    }

    @Test func drainingRefusesWith503() throws {
        let h = try RouterHarness()
        h.admission.stopAdmitting()
        try h.write(RouterHarness.upgrade())
        #expect(try h.outboundText().hasPrefix("HTTP/1.1 503 Service Unavailable\r\n"))
    }

    @Test func apiOnlyPortRefusesUpgradesWith404AndServesHTTP() throws {
        let h = try RouterHarness(acceptsSessions: false)
        try h.write(RouterHarness.upgrade())
        let answer = try h.outboundText()
        #expect(answer.hasPrefix("HTTP/1.1 404 Not Found\r\n"))
        #expect(answer.contains("\"field\":\"path\"") && answer.contains("http.api-port"))
        #expect(h.hub.shards.isEmpty, "no session was set up")
        let plain = try RouterHarness(acceptsSessions: false)
        try plain.write("POST /api/notification HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        #expect(String(buffer: try #require(plain.http).received).hasSuffix("hi"))
        _ = try? plain.channel.finish()
    }

    @Test func plainHTTPGetsEveryByteUnchanged() throws {
        let h = try RouterHarness()
        let request = "POST /api/notification HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        try h.write(request, byteAtATime: true)
        let recorder = try #require(h.http)
        #expect(String(buffer: recorder.received) == request)
        #expect(!h.has(FirstRequestRouter.self))
        #expect(h.has(HandshakeTimeoutHandler.self), "the HTTP parser's head stops the clock, not the router")
        #expect(try h.outboundText() == "")
        _ = try? h.channel.finish()
    }

    @Test func bytesThatCannotStartAGETGoToTheHTTPParserAtOnce() throws {
        for garbage in ["\u{0}\u{1}\u{2}", "PO", "HELLO", "GEX"] {
            let h = try RouterHarness()
            try h.write(garbage)
            #expect(String(buffer: try #require(h.http, "\(garbage)").received) == garbage)
        }
        let partial = try RouterHarness()
        try partial.write("GE")
        #expect(partial.http == nil, "still a possible upgrade")
    }

    /// A head whose lines end in bare LFs has no CRLFCRLF: it waited, unanswered, for the
    /// handshake timeout. It goes to the HTTP parser at its first bare LF, byte by byte too.
    @Test func aHeadWithBareLFsGoesToTheHTTPParser() throws {
        let request = "GET /health HTTP/1.1\nHost: x\n\n"
        for byteAtATime in [false, true] {
            let h = try RouterHarness()
            try h.write(request, byteAtATime: byteAtATime)
            let recorder = try #require(h.http, "byte at a time: \(byteAtATime)")
            #expect(String(buffer: recorder.received) == request)
            _ = try? h.channel.finish()
        }
        let crlf = try RouterHarness()
        try crlf.write("GET /health HTTP/1.1\r\nHost: x\r", byteAtATime: true)
        #expect(crlf.http == nil, "CRLF lines, split anywhere: still a possible upgrade")
        _ = try? crlf.channel.finish()
    }

    @Test func handshakeClockStopsAtTheHTTPParsersHead() throws {
        let pending = PendingHandshakes()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(HandshakeTimeoutHandler(timeout: .seconds(10), registry: pending))
        #expect(pending.count == 1)
        try channel.writeInbound(HTTPServerRequestPart.head(.init(version: .http1_1, method: .GET, uri: "/health")))
        #expect(pending.count == 0)
        #expect((try? channel.pipeline.syncOperations.handler(type: HandshakeTimeoutHandler.self)) == nil)
        #expect(try channel.readInbound(as: HTTPServerRequestPart.self) != nil, "the head is passed on")
        _ = try? channel.finish()
    }

    /// Connections in their first request counted against no limit: one address opening
    /// thousands and sending nothing (or stalling in TLS) held the process's descriptors until
    /// their deadline. Past `limits.max-pending-connections-per-ip` one is closed at accept.
    @Test func connectionsInTheirFirstRequestAreBoundedPerAddress() throws {
        let pending = PendingHandshakes(maxPerAddress: 2)
        let loop = EmbeddedEventLoop()
        func open(_ ip: String) throws -> EmbeddedChannel {
            let channel = EmbeddedChannel(loop: loop)
            try channel.connect(to: SocketAddress(ipAddress: ip, port: 4000)).wait()
            try channel.pipeline.syncOperations.addHandler(HandshakeTimeoutHandler(timeout: .seconds(10), registry: pending))
            return channel
        }
        let (a, b, c) = (try open("10.0.0.1"), try open("10.0.0.1"), try open("10.0.0.1"))
        #expect(a.isActive && b.isActive)
        #expect(!c.isActive, "a third from the same address, before the others' first request")
        #expect(pending.refused.load(ordering: .relaxed) == 1)
        #expect(try open("10.0.0.2").isActive, "another address")
        // Through its first request, a connection no longer counts; closed neither.
        try a.writeInbound(HTTPServerRequestPart.head(.init(version: .http1_1, method: .GET, uri: "/health")))
        #expect(try open("10.0.0.1").isActive)
        try b.close().wait()
        loop.run()  // (the pipeline's handlers are removed after the close)
        #expect(try open("10.0.0.1").isActive)
        #expect(!(try open("10.0.0.1").isActive))
        #expect(pending.refused.load(ordering: .relaxed) == 2)
    }

    /// The drain closed every connection still in its first request, the API port's too, while
    /// backends may go on publishing there until the API listener stops.
    @Test func theDrainSparesTheAPIPortsConnectionsInTheirFirstRequest() throws {
        let sessionLoop = EmbeddedEventLoop()
        let apiLoop = EmbeddedEventLoop()
        let pending = PendingHandshakes(eventLoops: [sessionLoop, apiLoop])
        func open(on loop: EmbeddedEventLoop) throws -> EmbeddedChannel {
            let channel = EmbeddedChannel(loop: loop)
            try channel.connect(to: SocketAddress(ipAddress: "10.0.0.1", port: 4000)).wait()
            try channel.pipeline.syncOperations.addHandler(HandshakeTimeoutHandler(timeout: .seconds(10), registry: pending))
            return channel
        }
        let (session, api) = (try open(on: sessionLoop), try open(on: apiLoop))
        pending.closeAll(sparing: [apiLoop])
        sessionLoop.run()
        apiLoop.run()
        #expect(!session.isActive)
        #expect(api.isActive)
        pending.closeAll()
        apiLoop.run()
        #expect(!api.isActive)
    }

    @Test func aSilentConnectionIsClosedAtItsDeadlineByTheLoopsOneTimer() throws {
        let pending = PendingHandshakes()
        let loop = EmbeddedEventLoop()
        let silent = EmbeddedChannel(loop: loop)
        let answered = EmbeddedChannel(loop: loop)
        try silent.pipeline.syncOperations.addHandler(HandshakeTimeoutHandler(timeout: .seconds(10), registry: pending))
        loop.advanceTime(by: .seconds(5))
        let late = EmbeddedChannel(loop: loop)
        for channel in [silent, answered, late] { try channel.connect(to: SocketAddress(ipAddress: "10.0.0.1", port: 4000)).wait() }
        try answered.pipeline.syncOperations.addHandler(HandshakeTimeoutHandler(timeout: .seconds(10), registry: pending))
        try late.pipeline.syncOperations.addHandler(HandshakeTimeoutHandler(timeout: .seconds(10), registry: pending))
        try answered.writeInbound(HTTPServerRequestPart.head(.init(version: .http1_1, method: .GET, uri: "/health")))
        #expect(pending.count == 2)
        loop.advanceTime(by: .milliseconds(4_999))
        #expect(silent.isActive)
        loop.advanceTime(by: .milliseconds(1))
        #expect(!silent.isActive, "closed at its deadline")
        #expect(late.isActive && answered.isActive)
        #expect(pending.count == 1)
        loop.advanceTime(by: .seconds(5))
        #expect(!late.isActive, "the timer was set again for the next deadline")
        #expect(answered.isActive, "its head arrived in time")
        #expect(pending.count == 0)
        _ = try? answered.finish()
    }

    @Test func shutdownClosesTheConnectionsStillInTheirFirstRequest() throws {
        let pending = PendingHandshakes()
        let loop = EmbeddedEventLoop()
        let channels = (0..<100).map { _ in EmbeddedChannel(loop: loop) }
        for channel in channels {
            try channel.connect(to: SocketAddress(ipAddress: "10.0.0.1", port: 4000)).wait()
            try channel.pipeline.syncOperations.addHandler(HandshakeTimeoutHandler(timeout: .seconds(10), registry: pending))
        }
        // A connection that goes away on its own leaves the count.
        try channels[0].close().wait()
        loop.run()
        #expect(pending.count == 99)
        pending.closeAll()
        loop.run()
        #expect(channels.allSatisfy { !$0.isActive })
        #expect(pending.count == 0)
    }

    @Test func overLongHeadGoesToTheHTTPParserWithTheClockRunning() throws {
        let h = try RouterHarness()
        let filler = String(repeating: "a", count: 1000)
        var sent = "GET / HTTP/1.1\r\n"
        try h.write(sent)
        while h.http == nil {
            let line = "X: \(filler)\r\n"
            sent += line
            try h.write(line)
            #expect(sent.utf8.count <= FirstRequestRouter.maxHeadBytes + 1100)
        }
        #expect(String(buffer: h.http!.received) == sent)
        #expect(h.has(HandshakeTimeoutHandler.self))
        _ = try? h.channel.finish()
    }
}
