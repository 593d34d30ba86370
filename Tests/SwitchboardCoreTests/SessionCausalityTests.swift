import NIOCore
import STOMPCodec
import SwitchboardRoutes
import SwitchboardWire
import Testing

@testable import SwitchboardCore

/// The `RECEIPT` of a `SEND` is written before any message the `SEND` caused.
@Suite("Session: receipts before the messages they caused")
struct SessionCausalityTests {
    @Test("a SEND to a topic the sender subscribes to: RECEIPT, then its own MESSAGE")
    func ownPublish() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        _ = try c.connect()
        try c.subscribe("/topic/a", receipt: "sub")
        #expect(try c.frames().map(\.command) == [.receipt])
        try c.send(.send, ["destination": "/topic/a", "receipt": "s"], body: "hello")
        let out = try c.frames()
        #expect(out.map(\.command) == [.receipt, .message], "\(out)")
        #expect(out.first?.headers["receipt-id"] == "s")
    }

    /// A gateway routing `/app/**` to a route that answers when told, a client subscribed to
    /// `destination` and another connected client.
    func setUp(subscribedTo destination: String) throws -> (TestGateway, OrderedPendingRoute, TestClient, TestClient) {
        let route = OrderedPendingRoute()
        let gw = TestGateway(routes: try routes("/app/**", route))
        let c = try gw.client()
        let other = try gw.client()
        _ = try c.connect()
        _ = try other.connect()
        try c.subscribe(destination, receipt: "sub")
        _ = try c.frames()
        return (gw, route, c, other)
    }

    @Test("a route's reply that arrives before the route confirmed waits for the RECEIPT")
    func replyBeforeConfirmation() throws {
        let (gw, route, c, other) = try setUp(subscribedTo: "/topic/replies")
        defer { gw.shutdown() }
        try c.send(.send, ["destination": "/app/in", "receipt": "s1"], body: "1")
        try #require(route.calls.count == 1)
        // The backend's answer is published (here by another session) before the route's
        // confirmation reaches the gateway.
        try other.send(.send, ["destination": "/topic/replies"], body: "reply")
        #expect(try c.read().isEmpty, "the reply waits for the SEND's receipt")
        route.calls[0].promise.succeed([])
        let out = try c.frames()
        #expect(out.map(\.command) == [.receipt, .message], "\(out)")
        #expect(out.last.map { String(buffer: $0.body) } == "reply")
    }

    /// Messages held behind a SEND still unanswered (a slow webhook) each counted as a write:
    /// no heart-beat went out, yet nothing reached the socket, and the client gave up.
    @Test("messages held behind an unanswered SEND do not stand for writes: heart-beats go on")
    func heldMessagesDoNotStopHeartBeats() throws {
        let route = OrderedPendingRoute()
        var configuration = SessionConfiguration()
        configuration.heartBeat = STOMPHeartBeat(send: 1_000, receive: 0)
        let gw = TestGateway(configuration: configuration, routes: try routes("/app/**", route))
        defer { gw.shutdown() }
        let c = try gw.client()
        let other = try gw.client()
        _ = try c.connect(heartBeat: "0,1000")
        _ = try other.connect()
        try c.subscribe("/topic/news", receipt: "sub")
        _ = try c.frames()
        try c.send(.send, ["destination": "/app/in", "receipt": "s1"], body: "1")
        var heartBeats = 0
        for _ in 0..<25 {
            try other.send(.send, ["destination": "/topic/news"], body: "held")
            gw.loop.advanceTime(by: .milliseconds(200))
            heartBeats += try c.readWebSocketFrames().filter { String(buffer: $0.unmaskedData) == "\n" }.count
        }
        #expect(heartBeats >= 3, "\(heartBeats) heart-beats in 5 s")
        route.calls[0].promise.succeed([])
        #expect(try c.frames().map(\.command).first == .receipt)
    }

    /// Reads pause while a SEND's route runs: the client's heart-beats wait unread in the
    /// socket. A heart-beat check between the step's end and the next read took the time of
    /// the step as silence and closed the session ("heart-beat timeout").
    @Test("the heart-beat timeout counts from when reads resume after a long SEND")
    func heartBeatTimeoutCountsFromReadsResumed() throws {
        let route = PendingRoute()
        var configuration = SessionConfiguration()
        configuration.heartBeat = STOMPHeartBeat(send: 0, receive: 1_000)
        let gw = TestGateway(configuration: configuration, routes: try routes("/app/**", route))
        defer { gw.shutdown() }
        let c = try gw.client()
        _ = try c.connect(heartBeat: "1000,0")
        try c.send(.send, ["destination": "/app/in", "receipt": "s1"], body: "1")
        c.channel.read()  // (as auto-read asks after each read: held back while the SEND runs)
        for _ in 0..<25 { gw.loop.advanceTime(by: .milliseconds(200)) }
        try #require(route.calls.count == 1)
        #expect(c.isActive)
        route.calls[0].promise.succeed([])
        gw.loop.run()
        gw.loop.advanceTime(by: .milliseconds(300))
        #expect(try c.frames().map(\.command) == [.receipt])
        #expect(c.isActive)
        // Silence from here on is a timeout again.
        for _ in 0..<15 { gw.loop.advanceTime(by: .milliseconds(200)) }
        let closed = try c.read()
        #expect(closed.first?.frame?.headers["message"]?.hasPrefix("heart-beat timeout") == true, "\(closed)")
    }

    /// Frames held by an open transaction count in the instance's total
    /// (`limits.max-pending-bytes-total`): 100,000 sessions could each hold 4 MiB of
    /// transactions, outside any instance-wide cap. Not as bytes the client has not taken.
    @Test("an open transaction's frames count as held inbound bytes")
    func transactionBytesCountAsHeldInbound() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        _ = try c.connect()
        #expect(c.session.heldInboundBytes == 0)
        try c.send(.begin, ["transaction": "t"])
        try c.send(.send, ["destination": "/topic/a", "transaction": "t"], body: String(repeating: "x", count: 10_000))
        #expect(c.session.heldInboundBytes > 10_000)
        #expect(c.session.pendingOutboundBytes == 0)
        try c.send(.abort, ["transaction": "t"])
        #expect(c.session.heldInboundBytes == 0)
    }

    /// Messages that arrived while pipelined SENDs ran were held behind the SEND answered
    /// first: a reply caused by the third SEND went out right after the first one's RECEIPT.
    @Test("a reply caused by a later pipelined SEND waits for that SEND's RECEIPT")
    func laterSendsReplyWaitsForItsReceipt() throws {
        let (gw, route, c, _) = try setUp(subscribedTo: "/topic/replies")
        defer { gw.shutdown() }
        for i in 1...3 { try c.send(.send, ["destination": "/app/in", "receipt": "r\(i)"], body: "\(i)") }
        try #require(route.calls.count == 3)
        // No loop turn between these: the reply's delivery is not flushed yet when the first
        // SEND is answered (a busy loop's flush comes up to 10 ms later).
        route.calls[2].promise.succeed([RouteReply(destination: "/topic/replies", body: ByteBuffer(string: "by s3"))])
        route.calls[1].promise.succeed([])
        route.calls[0].promise.succeed([])
        let out = try c.frames()
        #expect(out.map { $0.headers["receipt-id"] ?? $0.command.rawValue } == ["r1", "r2", "r3", "MESSAGE"], "\(out)")
    }

    /// Each pass's deliveries held behind the same step were merged into a new buffer holding
    /// all of them: the whole held backlog was copied at every pass (quadratic).
    @Test("deliveries held behind one step are appended in place")
    func heldDeliveriesAreAppendedInPlace() throws {
        let (gw, route, c, other) = try setUp(subscribedTo: "/topic/news")
        defer { gw.shutdown() }
        try c.send(.send, ["destination": "/app/in", "receipt": "s1"], body: "1")
        var storage: UInt = 0
        var moves = 0
        for i in 0..<200 {
            try other.send(.send, ["destination": "/topic/news"], body: "held \(i)")
            gw.loop.run()
            let held = try #require(c.session.held?.last?.bytes)
            let now = held.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
            if now != storage { moves += 1 }
            storage = now
        }
        #expect(c.session.held?.count == 1)
        // Moved as it doubles: a few times, not at each of the 200 passes.
        #expect(moves < 30, "moved \(moves) times in 200 passes")
        route.calls[0].promise.succeed([])
        #expect(try c.frames().filter { $0.command == .message }.count == 200)
    }

    @Test("messages that arrived before the SEND are not held behind it")
    func earlierMessagesGoFirst() throws {
        let (gw, route, c, other) = try setUp(subscribedTo: "/topic/news")
        defer { gw.shutdown() }
        try other.send(.send, ["destination": "/topic/news"], body: "before")
        try c.send(.send, ["destination": "/app/in", "receipt": "s1"], body: "1")
        let out = try c.frames()
        #expect(out.map(\.command) == [.message], "the earlier message is not held: \(out)")
        route.calls[0].promise.succeed([])
        #expect(try c.frames().map(\.command) == [.receipt])
    }
}
