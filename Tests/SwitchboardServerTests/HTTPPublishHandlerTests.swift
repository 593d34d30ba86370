import Foundation
import HTTPTypes
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import SwitchboardAPIModel
import SwitchboardAuth
import SwitchboardCore
import SwitchboardRoutes
import SwitchboardWire
import Testing

@testable import SwitchboardServer

/// An engine whose publishes complete when the test says so.
final class HeldEngine: BrokerEngine, @unchecked Sendable {
    var pending: [(PublishedMessage, EventLoopPromise<Void>)] = []
    var name: String { "held" }
    var publishesSynchronously: Bool { false }

    func publish(_ message: PublishedMessage, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let promise = eventLoop.makePromise(of: Void.self)
        pending.append((message, promise))
        return promise.futureResult
    }

    /// Keys seen: a second publish with one is a duplicate (as the engines do, without a window).
    var keys: Set<String> = []

    func publish(_ message: PublishedMessage, idempotencyKey: String, on eventLoop: any EventLoop) -> EventLoopFuture<Bool> {
        guard keys.insert(message.destination + "\u{0}" + idempotencyKey).inserted else { return eventLoop.makeSucceededFuture(false) }
        return publish(message, on: eventLoop).map { true }
    }
}

/// What reaches the router's side: the forwarded parts; it answers when told.
final class ForwardedRecorder: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPRequestPart
    typealias OutboundOut = HTTPResponsePart
    var parts: [HTTPRequestPart] = []
    var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { parts.append(unwrapInboundIn(data)) }
    /// Errors that reached the router's side.
    var errors: [any Error] = []
    func errorCaught(context: ChannelHandlerContext, error: any Error) { errors.append(error) }
    /// Events that reached the router's side.
    var events: [ChannelEvent] = []
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent { events.append(event) }
    }

    var paths: [String] { parts.compactMap { if case .head(let h) = $0 { h.path } else { nil } } }

    func respond(_ status: HTTPResponse.Status) {
        guard let context else { return }
        context.write(wrapOutboundOut(.head(HTTPResponse(status: status))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }
}

/// Counts the flushes that reach the socket's end of the pipeline.
final class FlushCounter: ChannelOutboundHandler, @unchecked Sendable {
    typealias OutboundIn = Any
    var flushes = 0
    /// The reads that reached the socket.
    var reads = 0
    func flush(context: ChannelHandlerContext) {
        flushes += 1
        context.flush()
    }
    func read(context: ChannelHandlerContext) {
        reads += 1
        context.read()
    }
}

/// ``HTTPPublishHandler`` on an embedded channel: NIO's HTTP/1.1 parts in and out; the router's
/// side (``ForwardedRecorder``) reads HTTP-types parts through the codec the handler installs.
final class PublishHandlerHarness {
    let channel = EmbeddedChannel()
    let hub = FanoutHub()
    let recorder = ForwardedRecorder()
    let flushes = FlushCounter()
    var tasksOpened = 0
    private(set) var handler: HTTPPublishHandler!

    /// The body the handler keeps of the request being read: where its bytes are, and how many.
    var keptBody: (address: UInt, bytes: Int)? {
        guard case .answering(_, _, let body?, _) = handler.current else { return nil }
        return body.withUnsafeReadableBytes { (UInt(bitPattern: $0.baseAddress), $0.count) }
    }

    init(
        engine: (any BrokerEngine)? = nil, keys: [APIKeyStore.Key] = [], maxBodyBytes: Int = 1024, idleTimeout: TimeAmount? = nil,
        requestTimeout: TimeAmount? = nil, shutdownGrace: TimeAmount = .seconds(5), codecInstalled: Bool = false,
        readiness: (@Sendable () -> (status: HTTPResponse.Status, body: ReadinessAnswer))? = nil,
        publishBytes: PublishBytesBudget = PublishBytesBudget(limit: 0)
    ) throws {
        let services = GatewayServices(
            configuration: SessionConfiguration(), hub: hub, engine: engine ?? InMemoryEngine(hub: hub),
            routes: RouteTable(), instanceID: "t", logger: Logger(label: "test"))
        let publisher = NotificationPublisher(
            services: services, apiKeys: APIKeyStore(keys: keys), maxBodyBytes: maxBodyBytes, maxBatchItems: 3, publishBytes: publishBytes)
        let handler = HTTPPublishHandler(
            publisher: publisher, dates: HTTPDateCache(), metrics: HTTPRouteMetrics(), idleTimeout: idleTimeout,
            requestTimeout: requestTimeout, shutdownGrace: shutdownGrace, codecInstalled: codecInstalled,
            readiness: readiness
        ) { [unowned self] _ in
            self.tasksOpened += 1
        }
        self.handler = handler
        try channel.pipeline.syncOperations.addHandler(flushes)
        try channel.pipeline.syncOperations.addHandler(handler)
        // As `HTTPAPIChannel.setup` does for a connection the router serves from the start.
        if codecInstalled { try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: false)) }
        try channel.pipeline.syncOperations.addHandler(recorder)
        try channel.connect(to: SocketAddress(ipAddress: "10.0.0.1", port: 4000)).wait()
    }

    func request(
        _ method: HTTPMethod, _ path: String, body: String? = nil, headers: HTTPHeaders = ["host": "x"], version: HTTPVersion = .http1_1,
        end: Bool = true
    ) throws {
        try channel.writeInbound(HTTPServerRequestPart.head(HTTPRequestHead(version: version, method: method, uri: path, headers: headers)))
        if let body { try channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: body))) }
        if end { try channel.writeInbound(HTTPServerRequestPart.end(nil)) }
    }

    func publish(
        _ topic: String, _ message: String, path: String = "/api/notification", headers: HTTPHeaders = ["host": "x"], version: HTTPVersion = .http1_1
    ) throws {
        try request(.POST, path, body: #"{"topic":"\#(topic)","message":"\#(message)"}"#, headers: headers, version: version)
    }

    /// The responses written so far: status, head and body.
    func responses() throws -> [(status: Int, head: HTTPResponseHead, body: String)] {
        var out: [(Int, HTTPResponseHead, String)] = []
        var head: HTTPResponseHead?
        var body = ""
        while let part = try channel.readOutbound(as: HTTPServerResponsePart.self) {
            switch part {
            case .head(let h): head = h
            case .body(.byteBuffer(let b)): body += String(buffer: b)
            case .body(.fileRegion): Issue.record("a file region")
            case .end:
                out.append((Int(head!.status.code), head!, body))
                body = ""
            }
        }
        return out
    }
}

@Suite struct HTTPPublishHandlerTests {
    /// A client that sends requests and does not read the answers: each was written at once
    /// (so none counted against the 256 answers waiting), reads never paused, and the answers
    /// piled up in memory without bound. Reads now pause while the socket takes no more.
    @Test func readsPauseWhileTheSocketTakesNoMore() throws {
        let h = try PublishHandlerHarness()
        h.channel.read()
        #expect(h.flushes.reads == 1)
        h.channel.isWritable = false
        h.channel.pipeline.fireChannelWritabilityChanged()
        h.channel.read()
        #expect(h.flushes.reads == 1, "paused")
        try h.publish("/topic/a", "m")
        h.channel.isWritable = true
        h.channel.pipeline.fireChannelWritabilityChanged()
        #expect(h.flushes.reads == 2, "the read held is made once the socket drains")
        #expect(try h.responses().map(\.status) == [200])
    }

    @Test func publishIsAnsweredOnTheLoopWithoutATask() throws {
        let h = try PublishHandlerHarness()
        try h.publish("/topic/a", "hi")
        let answers = try h.responses()
        #expect(answers.count == 1)
        #expect(answers[0].status == 200)
        #expect(answers[0].head.headers["content-type"] == ["application/json"])
        #expect(answers[0].head.headers["content-length"] == [String(answers[0].body.utf8.count)])
        let answer = try JSONDecoder().decode(NotificationAnswer.self, from: Data(answers[0].body.utf8))
        #expect(answer.topic == "/topic/a" && answer.user == nil)
        #expect(h.tasksOpened == 0 && h.recorder.parts.isEmpty)
    }

    @Test func userPathAndQueryStringAreServed() throws {
        let h = try PublishHandlerHarness()
        try h.publish("/queue/x", "hi", path: "/api/users/al%20ice/notification?trace=1")
        let answers = try h.responses()
        #expect(answers.map(\.status) == [200])
        #expect(try JSONDecoder().decode(NotificationAnswer.self, from: Data(answers[0].body.utf8)).user == "al ice")
    }

    @Test func otherRequestsOpenTheRouterTaskOnce() throws {
        let h = try PublishHandlerHarness()
        try h.request(.GET, "/health")
        try h.request(.POST, "/api/notification", body: "{}", headers: ["host": "x", "origin": "http://app"])  // CORS: the router's middleware
        #expect(h.tasksOpened == 1)
        #expect(h.recorder.paths == ["/health", "/api/notification"])
        #expect(try h.responses().isEmpty)
    }

    @Test func healthChecksAreAnsweredOnTheLoopWithReadiness() throws {
        let ready = NIOLockedValueBox(true)
        let h = try PublishHandlerHarness(readiness: {
            ready.withLockedValue { $0 }
                ? (.ok, ReadinessAnswer(status: "ready")) : (.serviceUnavailable, ReadinessAnswer(status: "not ready", reasons: ["draining"]))
        })
        try h.request(.GET, "/health/ready")
        try h.request(.GET, "/health/live?probe=1")
        ready.withLockedValue { $0 = false }
        try h.request(.GET, "/health/ready")
        let answers = try h.responses()
        #expect(answers.map(\.status) == [200, 200, 503])
        #expect(answers.allSatisfy { $0.head.headers["content-type"] == ["application/json"] })
        let bodies = try answers.map { try JSONDecoder().decode(ReadinessAnswer.self, from: Data($0.body.utf8)) }
        #expect(bodies == [ReadinessAnswer(status: "ready"), ReadinessAnswer(status: "live"), ReadinessAnswer(status: "not ready", reasons: ["draining"])])
        #expect(h.tasksOpened == 0 && h.recorder.parts.isEmpty)
        // Anything else under /health, and a browser's request, is still the router's.
        try h.request(.GET, "/health")
        try h.request(.GET, "/health/ready", headers: ["host": "x", "origin": "http://app"])
        #expect(h.tasksOpened == 1 && h.recorder.paths == ["/health", "/health/ready"])
    }

    @Test func healthChecksGoToTheRouterWithoutReadiness() throws {
        let h = try PublishHandlerHarness()
        try h.request(.GET, "/health/ready")
        #expect(h.tasksOpened == 1 && h.recorder.paths == ["/health/ready"])
        #expect(try h.responses().isEmpty)
    }

    @Test func aHealthCheckBehindAPublishWaitsForItsAnswer() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine, readiness: { (.ok, ReadinessAnswer(status: "ready")) })
        try h.publish("/topic/a", "1")
        try h.request(.GET, "/health/ready")
        #expect(try h.responses().isEmpty)  // the health answer is ready, the publish's is not
        engine.pending[0].1.succeed(())
        h.channel.embeddedEventLoop.run()
        let answers = try h.responses()
        #expect(answers.map(\.status) == [200, 200])
        #expect(answers[0].body.contains("/topic/a") && answers[1].body.contains("ready"))
    }

    @Test func aCodecAlreadyInPlaceIsNotInstalledTwice() throws {
        let h = try PublishHandlerHarness(codecInstalled: true)
        try h.request(.GET, "/health")
        #expect(h.tasksOpened == 1 && h.recorder.paths == ["/health"])
        h.recorder.respond(.ok)
        try h.publish("/topic/a", "1")  // after the router's answer: on the loop again
        // (A second codec would have met HTTP-types parts where it reads NIO's: a crash.)
        #expect(try h.responses().map(\.status) == [200, 200])
    }

    @Test func pipelinedRequestsAreAnsweredInOrderAcrossBothPaths() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine)
        try h.publish("/topic/a", "1")
        try h.request(.GET, "/health")  // must wait for the publish's answer
        try h.publish("/topic/a", "2")  // behind a forwarded request: forwarded too
        #expect(h.recorder.parts.isEmpty)
        #expect(try h.responses().isEmpty)
        engine.pending[0].1.succeed(())
        h.channel.embeddedEventLoop.run()
        var answers = try h.responses()
        #expect(answers.map(\.status) == [200])
        #expect(h.recorder.paths == ["/health", "/api/notification"])
        h.recorder.respond(.ok)
        h.recorder.respond(.accepted)
        answers = try h.responses()
        #expect(answers.map(\.status) == [200, 202])
        #expect(engine.pending.count == 1)  // the second publish went to the router, not here
    }

    @Test func aPipelinedBatchIsAnsweredInOneFlush() throws {
        let h = try PublishHandlerHarness()
        let body = #"{"topic":"/topic/a","message":"m"}"#
        let sync = h.channel.pipeline.syncOperations
        for _ in 0..<5 {  // five requests in one socket read
            sync.fireChannelRead(NIOAny(HTTPServerRequestPart.head(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/api/notification"))))
            sync.fireChannelRead(NIOAny(HTTPServerRequestPart.body(ByteBuffer(string: body))))
            sync.fireChannelRead(NIOAny(HTTPServerRequestPart.end(nil)))
        }
        #expect(h.flushes.flushes == 0)
        sync.fireChannelReadComplete()
        #expect(h.flushes.flushes == 1)
        #expect(try h.responses().map(\.status) == [200, 200, 200, 200, 200])
    }

    @Test func answersWaitForEarlierPublishes() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine)
        try h.publish("/topic/a", "1")
        try h.publish("/topic/a", "2")
        engine.pending[1].1.succeed(())
        h.channel.embeddedEventLoop.run()
        #expect(try h.responses().isEmpty)
        engine.pending[0].1.fail(RouteError(.redisUnavailable, "redis unavailable"))
        h.channel.embeddedEventLoop.run()
        let answers = try h.responses()
        #expect(answers.map(\.status) == [503, 200])
        #expect(answers[0].body.contains("publish failed"))
    }

    @Test func validationErrorsNameTheField() throws {
        let h = try PublishHandlerHarness()
        try h.request(.POST, "/api/notification", body: #"{"topic":"/topic/a"}"#)
        try h.request(.POST, "/api/notification", body: "not json")
        let answers = try h.responses()
        #expect(answers.map(\.status) == [400, 400])
        let first = try JSONDecoder().decode(APIErrorBody.self, from: Data(answers[0].body.utf8))
        #expect(first == APIErrorBody(error: "missing field 'message'", field: "message"))
        #expect(answers[1].body == #"{"error":"request body must be a JSON object","field":null}"#)
    }

    @Test func connectionCloseIsHonoured() throws {
        let h = try PublishHandlerHarness()
        try h.publish("/topic/a", "1", headers: ["host": "x", "connection": "close"])
        h.channel.embeddedEventLoop.run()
        let answers = try h.responses()
        #expect(answers.map(\.status) == [200])
        #expect(answers[0].head.headers["connection"] == ["close"])
        #expect(!h.channel.isActive)
    }

    /// A request asking for a protocol upgrade (`curl --http2` sends `Upgrade: h2c`): NIO's
    /// parser parses nothing after it, and what the client sent on piled up unread without
    /// limit while the connection was kept. It is answered as the connection's last.
    @Test func anUpgradeRequestIsTheConnectionsLast() throws {
        let h = try PublishHandlerHarness()
        let upgrade: HTTPHeaders = ["host": "x", "connection": "Upgrade, HTTP2-Settings", "upgrade": "h2c", "http2-settings": "AAMAAABkAARAAAAAAAIAAAAA"]
        try h.publish("/topic/a", "one", headers: upgrade)
        h.channel.embeddedEventLoop.run()
        let answers = try h.responses()
        #expect(answers.map(\.status) == [200])
        #expect(answers.first?.head.headers["connection"] == ["close"])
        #expect(!h.channel.isActive)
        // Its body, in pieces (and after a 100 Continue), is still read.
        let b = try PublishHandlerHarness()
        var expecting = upgrade
        expecting.add(name: "expect", value: "100-continue")
        try b.request(.POST, "/api/notification", headers: expecting, end: false)
        try b.channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: #"{"topic":"/topic/a","#)))
        let reads = b.flushes.reads
        b.channel.read()
        #expect(b.flushes.reads == reads + 1, "reads go on within its body")
        try b.channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: #""message":"m"}"#)))
        try b.channel.writeInbound(HTTPServerRequestPart.end(nil))
        b.channel.embeddedEventLoop.run()
        #expect(try b.responses().map(\.status) == [200])
        #expect(!b.channel.isActive)
        // Through the router: it is told to close too.
        let r = try PublishHandlerHarness()
        try r.request(.GET, "/nowhere", headers: ["host": "x", "connection": "upgrade", "upgrade": "websocket"])
        let forwarded = r.recorder.parts.compactMap { if case .head(let head) = $0 { head.headerFields[.connection] } else { nil } }
        #expect(forwarded == ["close"])
        // Not an upgrade: `Upgrade` without the token, or the token without `Upgrade`.
        let k = try PublishHandlerHarness()
        try k.publish("/topic/a", "one", headers: ["host": "x", "upgrade": "h2c"])
        try k.publish("/topic/a", "two", headers: ["host": "x", "connection": "keep-alive, upgrade"])
        #expect(try k.responses().map { $0.head.headers["connection"] } == [[], []])
        #expect(k.channel.isActive)
    }

    @Test func http10KeepsTheConnectionOnlyWhenAsked() throws {
        let h = try PublishHandlerHarness()
        try h.publish("/topic/a", "1", headers: ["connection": "keep-alive"], version: .http1_0)
        var answers = try h.responses()
        #expect(answers.map(\.status) == [200])
        #expect(answers[0].head.headers["connection"] == ["keep-alive"])
        #expect(h.channel.isActive)
        try h.publish("/topic/a", "2", headers: [:], version: .http1_0)
        h.channel.embeddedEventLoop.run()
        answers = try h.responses()
        #expect(answers[0].head.headers["connection"] == ["close"])
        #expect(!h.channel.isActive)
    }

    @Test func anIdleConnectionClosesAfterTheTimeoutButNotWhileAnAnswerIsOwed() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine, idleTimeout: .seconds(10))
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(9))
        try h.publish("/topic/a", "1")  // read at 9 s; its answer waits for the engine
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(25))
        #expect(h.channel.isActive)
        engine.pending[0].1.succeed(())  // answered at 34 s
        h.channel.embeddedEventLoop.run()
        #expect(try h.responses().map(\.status) == [200])
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(9))
        #expect(h.channel.isActive)
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(11))
        #expect(!h.channel.isActive)
    }

    /// An answer owed while the next pipelined request's head is in (its body not yet, or
    /// waiting for its `100 Continue`): the connection is not idle, the server is preparing an
    /// answer (before, the idle time ran from the last read, and the connection closed without
    /// the answer of a publish Redis then carried out).
    @Test func anAnswerOwedKeepsTheConnectionWhileTheNextRequestIsRead() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine, idleTimeout: .seconds(10))
        try h.publish("/topic/a", "1")
        try h.request(.POST, "/api/notification", body: "{", end: false)
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(25))
        #expect(h.channel.isActive)
        engine.pending[0].1.succeed(())
        h.channel.embeddedEventLoop.run()
        #expect(try h.responses().map(\.status) == [200])
        // Only the unfinished request is left: idle from its last read on.
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(11))
        #expect(!h.channel.isActive)
    }

    @Test func aSlowRequestHeadWithoutItsEndTimesOut() throws {
        let h = try PublishHandlerHarness(idleTimeout: .seconds(10))
        try h.request(.POST, "/api/notification", body: "{", end: false)
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(21))
        #expect(!h.channel.isActive)
    }

    /// The client half-closes after a router request held behind an unanswered publish: the
    /// router's task, opened once the publish is answered, learns that input ended after that
    /// request (before, it never did, and the connection stayed open until the idle timeout).
    @Test func aHalfCloseBehindAHeldRouterRequestReachesTheRouter() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine)
        try h.publish("/topic/a", "1")
        try h.request(.GET, "/health")
        try h.request(.GET, "/health/live", end: false)  // cut off by the half-close
        h.channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(h.recorder.events.isEmpty)
        engine.pending[0].1.succeed(())
        h.channel.embeddedEventLoop.run()
        #expect(h.recorder.paths == ["/health"])
        #expect(h.recorder.events == [.inputClosed])
        #expect(try h.responses().map(\.status) == [200])
    }

    /// The router's task open already: a half-close while a publish is owed here and a router
    /// request held reaches the router only after them (it ended at once, and closing the
    /// output lost the publish's answer and the held request).
    @Test func aHalfCloseWhileAnswersAreOwedReachesTheOpenRouterAfterThem() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine)
        try h.request(.GET, "/metrics")
        h.recorder.respond(.ok)
        #expect(try h.responses().map(\.status) == [200])
        try h.publish("/topic/a", "1")
        try h.request(.GET, "/health")
        h.channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(h.recorder.events.isEmpty)
        engine.pending[0].1.succeed(())
        h.channel.embeddedEventLoop.run()
        #expect(h.recorder.paths == ["/metrics", "/health"])
        #expect(h.recorder.events == [.inputClosed])
        #expect(try h.responses().map(\.status) == [200])
        h.recorder.respond(.ok)
        #expect(try h.responses().map(\.status) == [200])
    }

    /// A request cut off by a half-close, held behind an answer owed, no longer counts as being
    /// read: its time limit does not close the connection before the answers owed.
    @Test func aDroppedHeldRequestDoesNotTimeTheConnectionOut() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine, idleTimeout: .seconds(60), requestTimeout: .seconds(10))
        try h.publish("/topic/a", "1")
        try h.request(.GET, "/health")
        try h.request(.GET, "/health/live", end: false)
        h.channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        engine.pending[0].1.succeed(())
        h.channel.embeddedEventLoop.run()
        #expect(try h.responses().map(\.status) == [200])
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(30))
        #expect(h.channel.isActive, "closed before the router answered GET /health")
        h.recorder.respond(.ok)
        #expect(try h.responses().map(\.status) == [200])
    }

    @Test func aHalfClosedConnectionClosesOnceItsAnswersAreWritten() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine)
        try h.publish("/topic/a", "1")
        h.channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(h.channel.isActive)  // an answer is still owed
        engine.pending[0].1.succeed(())
        h.channel.embeddedEventLoop.run()
        #expect(try h.responses().map(\.status) == [200])
        #expect(!h.channel.isActive)
    }

    @Test func missingAPIKeyIs401() throws {
        let key = APIKeyStore.Key(name: "backend", sha256: APIKeyStore.hash("s3cret"), scopes: ["/topic/"])
        let h = try PublishHandlerHarness(keys: [key])
        try h.publish("/topic/a", "1")
        try h.publish("/topic/a", "2", headers: ["host": "x", "authorization": "Bearer s3cret"])
        try h.publish("/queue/a", "3", path: "/api/users/bob/notification", headers: ["host": "x", "authorization": "Bearer s3cret"])
        let answers = try h.responses()
        #expect(answers.map(\.status) == [401, 200, 403])
        #expect(try JSONDecoder().decode(APIErrorBody.self, from: Data(answers[0].body.utf8)).field == "Authorization")
        // Two Authorization fields are no key: the first was taken here, while the router
        // (a request with Origin) joined them and answered 401.
        var two: HTTPHeaders = ["host": "x", "authorization": "Bearer s3cret"]
        two.add(name: "authorization", value: "Bearer junk")
        try h.publish("/topic/a", "4", headers: two)
        #expect(try h.responses().map(\.status) == [401])
        // A Content-Length with leading zeros is its value (the parser reads it so), not "too large".
        #expect(!NotificationPublisher.exceeds(contentLength: "0000000000000000000001", limit: 10))
        #expect(NotificationPublisher.exceeds(contentLength: "0000000000000000000011", limit: 10))
    }

    @Test func batchAnswersEveryItemInOrder() throws {
        let h = try PublishHandlerHarness()
        try h.request(
            .POST, "/api/notifications",
            body: #"[{"topic":"/topic/a","message":"1"},{"topic":"/nope","message":"2"},{"topic":"/queue/q","user":"bob","message":"3"}]"#)
        try h.request(.POST, "/api/notifications", body: #"[{"topic":"/topic/a","message":"1"}]"#)
        try h.request(.POST, "/api/notifications", body: "[1,2,3,4]")
        try h.request(.POST, "/api/notifications", body: "{}")
        let answers = try h.responses()
        #expect(answers.map(\.status) == [207, 200, 413, 400])
        let batch = try JSONDecoder().decode(BatchAnswer.self, from: Data(answers[0].body.utf8))
        #expect(batch.published == 2 && batch.failed == 1)
        guard batch.results.count == 3, case .published(let first) = batch.results[0], case .failed(let second) = batch.results[1],
            case .published(let third) = batch.results[2]
        else {
            Issue.record("unexpected results \(batch.results)")
            return
        }
        #expect(first.topic == "/topic/a")
        #expect(second == APIErrorBody(error: "field 'topic' must start with /topic/", field: "topic", status: 400))
        #expect(third.user == "bob")
    }
}

@Suite struct NotificationRequestTests {
    static func topicsOnly(_ topic: String) -> String? { topic.hasPrefix("/topic/") ? nil : "must start with /topic/" }

    func parse(_ json: String) -> Result<NotificationRequest, APIRequestError> {
        Result { () throws(APIRequestError) in try NotificationRequest.parse(ByteBuffer(string: json), isAllowedTopic: Self.topicsOnly) }
    }

    @Test(
        arguments: [
            (#"{"message":"x"}"#, "topic", "missing field 'topic'"),
            (#"{"topic":5,"message":"x"}"#, "topic", "field 'topic' must be a non-empty string"),
            (#"{"topic":"","message":"x"}"#, "topic", "field 'topic' must be a non-empty string"),
            (#"{"topic":"/queue/x","message":"x"}"#, "topic", "field 'topic' must start with /topic/"),
            (#"{"topic":"/topic/*","message":"x"}"#, "topic", "field 'topic' must not contain wildcards"),
            (#"{"topic":"/topic/a\u0000b","message":"x"}"#, "topic", "field 'topic' must not contain control characters"),
            (#"{"topic":"/topic/a\nb","message":"x"}"#, "topic", "field 'topic' must not contain control characters"),
            (#"{"topic":"/topic/x"}"#, "message", "missing field 'message'"),
            (#"{"topic":"/topic/x","message":null}"#, "message", "field 'message' must be a string"),
            (#"{"topic":"/topic/x","message":"x","headers":{"k":1}}"#, "headers", "field 'headers' must be an object of string values"),
            (#"{"topic":"/topic/x","message":"x","contentType":""}"#, "contentType", "field 'contentType' must be a non-empty string"),
            (#"{"topic":"/topic/x","message":"x","contentType":"text/plain\u0000x"}"#, "contentType", "field 'contentType' must not contain a NUL"),
            (#"[1]"#, nil, "request body must be a JSON object"),
            ("", nil, "request body must be a JSON object"),
        ] as [(String, String?, String)])
    func errorsNameTheFirstFieldAtFault(json: String, field: String?, message: String) {
        guard case .failure(let error) = parse(json) else {
            Issue.record("accepted \(json)")
            return
        }
        #expect(error == APIRequestError(status: 400, message: message, field: field))
    }

    @Test func headersAreSortedWithoutReservedOnesAndContentTypeLast() throws {
        let request = try parse(#"{"topic":"/topic/x","message":"hé","headers":{"b":"2","a":"1","destination":"/evil"},"contentType":"application/json"}"#).get()
        #expect(request.headers.map { "\($0.name)=\($0.value)" } == ["a=1", "b=2", "content-type=application/json"])
        #expect(String(buffer: request.body) == "hé")
    }
}
