import NIOCore
import STOMPCodec
import SwitchboardCore
import SwitchboardRoutes
import SwitchboardWire
import Testing

/// A ``PendingRoute`` that declares it keeps order, so the session pipelines SENDs to it.
final class OrderedPendingRoute: AppRoute, @unchecked Sendable {
    let inner = PendingRoute()
    var description: String { "ordered pending test route" }
    var keepsOrderWhenPipelined: Bool { true }
    var calls: [(message: AppMessage, promise: EventLoopPromise<[RouteReply]>)] { inner.calls }

    func handle(_ message: AppMessage, on eventLoop: any EventLoop) -> EventLoopFuture<[RouteReply]> {
        inner.handle(message, on: eventLoop)
    }
}

@Suite("Session: pipelined SENDs")
struct SessionPipelineTests {
    /// A gateway routing `/app/**` to `route`, and one connected client.
    func connected(_ route: any AppRoute, maxPipelined: Int = 128) throws -> (TestGateway, TestClient) {
        var config = SessionConfiguration()
        config.maxPipelinedSends = maxPipelined
        let gw = TestGateway(configuration: config, routes: try routes("/app/**", route))
        let c = try gw.client()
        try c.connect()
        return (gw, c)
    }

    @Test("SENDs to an order-keeping route go out without waiting; receipts come back in frame order")
    func receiptsInOrder() throws {
        let route = OrderedPendingRoute()
        let (gw, c) = try connected(route)
        defer { gw.shutdown() }
        for i in 1...3 { try c.send(.send, ["destination": "/app/in", "receipt": "r\(i)"], body: "\(i)") }
        try #require(route.calls.count == 3, "all three handed over before any confirmation")
        #expect(route.calls.map { String(buffer: $0.message.body) } == ["1", "2", "3"])
        route.calls[2].promise.succeed([])
        route.calls[1].promise.succeed([])
        #expect(try c.read().isEmpty, "no receipt overtakes an unconfirmed earlier SEND")
        route.calls[0].promise.succeed([])
        #expect(try c.frames().map { $0.headers["receipt-id"] } == ["r1", "r2", "r3"])
    }

    @Test("a failed SEND: receipts before it, then ERROR naming it, nothing after")
    func failureInOrder() throws {
        let route = OrderedPendingRoute()
        let (gw, c) = try connected(route)
        defer { gw.shutdown() }
        for i in 1...3 { try c.send(.send, ["destination": "/app/in", "receipt": "r\(i)"], body: "\(i)") }
        route.calls[2].promise.succeed([])
        route.calls[1].promise.fail(RouteError(.webhookRejected, "stream full"))
        #expect(try c.read().isEmpty)
        route.calls[0].promise.succeed([])
        let out = try c.read()
        try #require(out.count == 3, "\(out)")
        #expect(out[0].frame?.headers["receipt-id"] == "r1")
        let error = try expectErrorThenClose(Array(out.dropFirst()))
        #expect(error.headers["receipt-id"] == "r2")
        #expect(error.headers["message"]?.contains("stream full") == true)
    }

    @Test("other frames wait for the pipeline to empty: a SUBSCRIBE receipt never overtakes a SEND's")
    func barrier() throws {
        let route = OrderedPendingRoute()
        let (gw, c) = try connected(route)
        defer { gw.shutdown() }
        try c.send(.send, ["destination": "/app/in", "receipt": "s1"], body: "x")
        try c.subscribe("/topic/t", receipt: "sub")
        try c.send(.send, ["destination": "/app/in", "receipt": "s2"], body: "y")
        #expect(route.calls.count == 1, "the SEND after the SUBSCRIBE waits behind it")
        route.calls[0].promise.succeed([])
        #expect(try c.frames().map { $0.headers["receipt-id"] } == ["s1", "sub"])
        try #require(route.calls.count == 2)
        route.calls[1].promise.succeed([])
        #expect(try c.frames().map { $0.headers["receipt-id"] } == ["s2"])
    }

    @Test("a refused SEND behind pipelined ones gets its ERROR after their receipts")
    func refusedAfterReceipts() throws {
        let route = OrderedPendingRoute()
        let (gw, c) = try connected(route)
        defer { gw.shutdown() }
        try c.send(.send, ["destination": "/app/in", "receipt": "ok"], body: "x")
        try c.send(.send, ["destination": "/topic/*", "receipt": "bad"], body: "y")
        #expect(try c.read().isEmpty)
        route.calls[0].promise.succeed([])
        let out = try c.read()
        try #require(out.count == 3, "\(out)")
        #expect(out[0].frame?.headers["receipt-id"] == "ok")
        #expect(try expectErrorThenClose(Array(out.dropFirst())).headers["receipt-id"] == "bad")
    }

    @Test("at most maxPipelinedSends are unconfirmed; the rest queue until one is answered")
    func window() throws {
        let route = OrderedPendingRoute()
        let (gw, c) = try connected(route, maxPipelined: 2)
        defer { gw.shutdown() }
        for i in 1...4 { try c.send(.send, ["destination": "/app/in", "receipt": "r\(i)"], body: "\(i)") }
        #expect(route.calls.count == 2)
        route.calls[0].promise.succeed([])
        #expect(try c.frames().map { $0.headers["receipt-id"] } == ["r1"])
        #expect(route.calls.count == 3)
        route.calls[1].promise.succeed([])
        route.calls[2].promise.succeed([])
        #expect(try c.frames().map { $0.headers["receipt-id"] } == ["r2", "r3"])
        try #require(route.calls.count == 4)
        route.calls[3].promise.succeed([])
        #expect(try c.frames().map { $0.headers["receipt-id"] } == ["r4"])
    }

    @Test("routes that do not keep order (webhooks) are still called one at a time")
    func serialRoutes() throws {
        let route = PendingRoute()
        let (gw, c) = try connected(route)
        defer { gw.shutdown() }
        try c.send(.send, ["destination": "/app/in", "receipt": "r1"], body: "1")
        try c.send(.send, ["destination": "/app/in", "receipt": "r2"], body: "2")
        #expect(route.calls.count == 1)
        route.calls[0].promise.succeed([])
        #expect(try c.frames().map { $0.headers["receipt-id"] } == ["r1"])
        try #require(route.calls.count == 2)
        route.calls[1].promise.succeed([])
        #expect(try c.frames().map { $0.headers["receipt-id"] } == ["r2"])
    }
}
