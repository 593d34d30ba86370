import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import STOMPCodec
import SwitchboardCore
import SwitchboardRoutes
import SwitchboardWire
import Testing

/// Answers at once with fixed replies, or fails.
struct StaticRoute: AppRoute {
    var replies: [RouteReply] = []
    var error: RouteError?
    var description: String { "static test route" }

    func handle(_ message: AppMessage, on eventLoop: any EventLoop) -> EventLoopFuture<[RouteReply]> {
        if let error { return eventLoop.makeFailedFuture(error) }
        return eventLoop.makeSucceededFuture(replies)
    }
}

/// Holds every call until the test completes it. Used on one embedded loop only.
final class PendingRoute: AppRoute, @unchecked Sendable {
    var description: String { "pending test route" }
    var calls: [(message: AppMessage, promise: EventLoopPromise<[RouteReply]>)] = []
    /// Each call's cancellation, in call order.
    var cancellations: [RouteCancellation] = []

    func handle(_ message: AppMessage, on eventLoop: any EventLoop) -> EventLoopFuture<[RouteReply]> {
        let promise = eventLoop.makePromise(of: [RouteReply].self)
        calls.append((message, promise))
        return promise.futureResult
    }

    func handle(_ message: AppMessage, on eventLoop: any EventLoop, cancellation: RouteCancellation) -> EventLoopFuture<[RouteReply]> {
        cancellations.append(cancellation)
        return handle(message, on: eventLoop)
    }
}

/// Runs `body` with a connected session whose `SEND` to `/app/greet` (receipt `r1`) a
/// ``PendingRoute`` holds.
func withSendInFlight(_ body: (PendingRoute, TestGateway, TestClient) throws -> Void) throws {
    let route = PendingRoute()
    let gw = TestGateway(routes: try routes("/app/**", route))
    defer { gw.shutdown() }
    let c = try gw.client()
    try c.connect()
    try c.send(.send, ["destination": "/app/greet", "receipt": "r1"], body: "x")
    try #require(route.calls.count == 1 && route.cancellations.count == 1)
    try body(route, gw, c)
}

func routes(_ pattern: String, _ route: any AppRoute) throws -> RouteTable {
    var table = RouteTable()
    table.add(try DestinationPattern(pattern), route)
    return table
}

@Suite("Session: application routes")
struct AppRouteTests {
    @Test("RouteTable: the first matching pattern wins")
    func routeTable() throws {
        var table = RouteTable()
        table.add(try DestinationPattern("/app/chat.*"), StaticRoute(error: RouteError(.webhookRejected, "first")))
        table.add(try DestinationPattern("/app/**"), StaticRoute(error: RouteError(.webhookRejected, "second")))
        func name(_ d: String) -> String? { (table.route(for: d) as? StaticRoute)?.error?.description }
        #expect(name("/app/chat.room") == "first")
        #expect(name("/app/chat/room") == "second")
        #expect(name("/app") == nil)
        #expect(name("/topic/chat.room") == nil)
    }

    /// A webhook call still waiting for a connection when its session closes is dropped
    /// (``WebhookClientLimitTests``); the session says so through its calls' cancellation.
    @Test("a session's route calls are cancelled when it closes")
    func routeCallsCancelledAtClose() throws {
        try withSendInFlight { route, _, c in
            #expect(!route.cancellations[0].isCancelled)
            _ = try c.channel.finish()
            #expect(route.cancellations[0].isCancelled)
            route.calls[0].promise.fail(RouteError(.abandoned, "test over"))
        }
    }

    /// A session ended while its route call waits (here the shutdown's close after the grace,
    /// which does not wait for the step) cancels the call with its ERROR: it was cancelled only
    /// when the connection closed, which may linger 2 s for the client's close frame, and a
    /// webhook call could go out in that time.
    @Test("a session's route calls are cancelled with its ERROR, before the connection closes")
    func routeCallsCancelledAtTheError() throws {
        try withSendInFlight { route, gw, c in
            final class Seen: @unchecked Sendable {
                let channel: EmbeddedChannel
                var openAtCancel: Bool?
                init(_ channel: EmbeddedChannel) { self.channel = channel }
            }
            let seen = Seen(c.channel)
            _ = route.cancellations[0].onCancel { seen.openAtCancel = seen.channel.isActive }
            for shard in gw.hub.shards { shard.closeAll(reason: "server shutting down, reconnect", waitForStep: false) }
            gw.loop.run()
            _ = try expectErrorThenClose(try c.read(), code: 1001)  // going away: the server is going down
            #expect(seen.openAtCancel == true, "cancelled only once the connection closed")
            route.calls[0].promise.fail(RouteError(.abandoned, "test over"))
        }
    }

    /// A call that fails at once when cancelled (a webhook call waiting for a connection) was
    /// taken for a route failure of the closing session: a route error counted, an ERROR
    /// written, the session's end recorded as `error` instead of `client`.
    @Test("a call failing at its cancellation is not a route failure of the closing session")
    func cancelledCallIsNotARouteFailure() throws {
        try withSendInFlight { route, gw, c in
            let promise = route.calls[0].promise
            _ = route.cancellations[0].onCancel { promise.fail(RouteError(.abandoned, "not sent: the session closed")) }
            let before = gw.services.stats.errors.map { $0.load(ordering: .relaxed) }
            try c.channel.close().wait()
            #expect(gw.services.stats.errors.map { $0.load(ordering: .relaxed) } == before, "no error counted")
            #expect(try c.read().isEmpty, "no ERROR written")
        }
    }

    @Test("the RECEIPT waits for the route; later frames queue behind it, in order")
    func receiptAfterRoute() throws {
        let route = PendingRoute()
        let gw = TestGateway(routes: try routes("/app/**", route))
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.subscribe("/topic/q")
        try c.send(
            .send,
            [
                "destination": "/app/greet", "receipt": "r1", "content-type": "application/json",
                "x-trace": "abc", "transaction-ish": "1",
            ], body: "{\"n\":1}")
        #expect(try c.read().isEmpty, "no RECEIPT before the route answers")
        try c.send(.send, ["destination": "/topic/q", "receipt": "r2"], body: "after")
        #expect(try c.read().isEmpty, "later frames wait for the route")
        try #require(route.calls.count == 1)
        let m = route.calls[0].message
        #expect(m.destination == "/app/greet")
        #expect(String(buffer: m.body) == "{\"n\":1}")
        #expect(m.contentType == "application/json")
        #expect(m.headers.map(\.name) == ["x-trace", "transaction-ish"])
        #expect(m.sessionID == c.session.sessionID)
        #expect(m.instanceID == "t")
        #expect(m.timestamp > 1_600_000_000_000)
        route.calls[0].promise.succeed([])
        let out = try c.frames()
        // r2's SEND runs after the route answered; its receipt precedes the message it caused.
        #expect(out.map(\.command) == [.receipt, .receipt, .message])
        #expect(out.map { $0.headers["receipt-id"] } == ["r1", "r2", nil])
        #expect(out[2].bodyString == "after")
    }

    @Test("sender replies go only to the sender's matching subscriptions")
    func senderReplies() throws {
        let reply = RouteReply(destination: "/topic/reply", body: ByteBuffer(string: "just you"), headers: ["k": "v"], target: .sender)
        let gw = TestGateway(routes: try routes("/app/x", StaticRoute(replies: [reply])))
        defer { gw.shutdown() }
        let a = try gw.client(), b = try gw.client()
        try a.connect()
        try b.connect()
        try a.subscribe("/topic/reply", id: "exact")
        try a.subscribe("/topic/**", id: "all")
        try a.subscribe("/topic/other", id: "other")
        try b.subscribe("/topic/reply", id: "b")
        try a.send(.send, ["destination": "/app/x", "receipt": "r"], body: "hi")
        let out = try a.frames()
        try #require(out.count == 3, "\(out)")
        // The RECEIPT first: the replies were caused by the SEND.
        #expect(out[0].command == .receipt)
        #expect(Set(out.suffix(2).compactMap { $0.headers["subscription"] }) == ["exact", "all"])
        #expect(out.suffix(2).allSatisfy { $0.command == .message && $0.bodyString == "just you" && $0.headers["k"] == "v" })
        #expect(out.suffix(2).allSatisfy { $0.headers["destination"] == "/topic/reply" })
        #expect(try b.read().isEmpty)
    }

    @Test("broadcast replies reach every subscriber; they are published before the RECEIPT, which the sender reads first")
    func broadcastReplies() throws {
        let replies = [
            RouteReply(destination: "/topic/room", body: ByteBuffer(string: "one")),
            RouteReply(destination: "/topic/room", body: ByteBuffer(string: "two"), target: .broadcast),
        ]
        let gw = TestGateway(routes: try routes("/app/**", StaticRoute(replies: replies)))
        defer { gw.shutdown() }
        let a = try gw.client(), b = try gw.client(), idle = try gw.client()
        try a.connect()
        try b.connect()
        try idle.connect()
        try a.subscribe("/topic/room", id: "a")
        try b.subscribe("/topic/room", id: "b")
        try a.send(.send, ["destination": "/app/chat", "receipt": "r"], body: "x")
        let outA = try a.frames()
        #expect(outA.map(\.command) == [.receipt, .message, .message])
        #expect(outA.suffix(2).map(\.bodyString) == ["one", "two"])
        let outB = try b.frames()
        #expect(outB.map(\.bodyString) == ["one", "two"])
        #expect(outB.allSatisfy { $0.headers["subscription"] == "b" })
        #expect(try idle.read().isEmpty)
    }

    @Test("a failing route is an ERROR naming the destination and the cause")
    func routeFailure() throws {
        let gw = TestGateway(routes: try routes("/app/**", StaticRoute(error: RouteError(.webhookRejected, "backend said 503"))))
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.send(.send, ["destination": "/app/x", "receipt": "r"], body: "x")
        let error = try expectErrorThenClose(try c.read())
        #expect(error.headers["message"] == "route for /app/x failed: backend said 503")
        #expect(error.headers["receipt-id"] == "r")
    }

    /// `log.levels.routes` was accepted but no logger had that label: a backend failing every
    /// SEND was logged nowhere but in the clients' ERRORs.
    @Test("a failing route is logged on the routes logger, not a call the session's close cancelled")
    func routeFailureIsLogged() throws {
        let lines = NIOLockedValueBox<[(String, Logger.Metadata?)]>([])
        let logger = Logger(label: "switchboard.routes") { _ in CapturedLogs(lines: lines) }
        let route = PendingRoute()
        let gw = TestGateway(routes: try routes("/app/**", route), routesLogger: logger)
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.send(.send, ["destination": "/app/x", "receipt": "r"], body: "x")
        try #require(route.calls.count == 1)
        route.calls[0].promise.fail(RouteError(.webhookRejected, "backend said 503"))
        _ = try expectErrorThenClose(try c.read())
        let logged = lines.withLockedValue { $0 }
        #expect(logged.count == 1 && logged.first?.0 == "route failed")
        #expect(logged.first?.1 == ["route": "/app/x", "error": "backend said 503"])
        // A call the client's close cancelled is not the backend's failure.
        let other = try gw.client()
        try other.connect()
        try other.send(.send, ["destination": "/app/y"], body: "y")
        try #require(route.calls.count == 2)
        _ = try other.channel.finish()
        #expect(route.cancellations[1].isCancelled)
        route.calls[1].promise.fail(RouteError(.webhookRejected, "not sent: the session closed"))
        #expect(lines.withLockedValue { $0 }.count == 1)
    }

    @Test("a route failing later fails the session and drops queued frames")
    func delayedFailure() throws {
        let route = PendingRoute()
        let gw = TestGateway(routes: try routes("/app/**", route))
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.subscribe("/topic/q")
        try c.send(.send, ["destination": "/app/slow"], body: "x")
        try c.send(.send, ["destination": "/topic/q", "receipt": "never"], body: "queued")
        try #require(route.calls.count == 1)
        route.calls[0].promise.fail(RouteError(.webhookRejected, "timeout"))
        let error = try expectErrorThenClose(try c.read())
        #expect(error.headers["message"] == "route for /app/slow failed: timeout")
    }

    @Test("SEND to /app inside a transaction is routed on COMMIT")
    func transactionalAppSend() throws {
        let route = PendingRoute()
        let gw = TestGateway(routes: try routes("/app/**", route))
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.send(.begin, ["transaction": "t"])
        try c.send(.send, ["destination": "/app/a", "transaction": "t"], body: "1")
        try c.send(.send, ["destination": "/app/b", "transaction": "t"], body: "2")
        #expect(route.calls.isEmpty)
        try c.send(.commit, ["transaction": "t", "receipt": "c"])
        try #require(route.calls.count == 1, "the second SEND waits for the first")
        route.calls[0].promise.succeed([])
        try #require(route.calls.count == 2)
        #expect(route.calls.map(\.message.destination) == ["/app/a", "/app/b"])
        #expect(try c.read().isEmpty, "COMMIT receipt waits for the last routed SEND")
        route.calls[1].promise.succeed([])
        #expect(try c.frames().map { $0.headers["receipt-id"] } == ["c"])
    }
}
