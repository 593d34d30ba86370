import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import SwitchboardAPIModel
import SwitchboardAuth
import SwitchboardCore
import SwitchboardRoutes
import SwitchboardWire
import Testing

@testable import SwitchboardServer

/// A body over `http.max-body-bytes` is answered 413 (JSON) as soon as its `Content-Length` or
/// the bytes received exceed the limit, and the connection then closes: the rest of the body
/// is not read (a trickled or endless body held the connection while it came, its deadline
/// growing with each 500 bytes). The console's `POST /api/console/redis-publish` answers alike.
@Suite struct HTTPBodyLimitTests {
    static let tooLarge = APIErrorBody(error: "request body larger than 64 bytes", field: nil)

    func head(_ length: String?, path: String = "/api/notification", authorization: String? = nil) -> HTTPServerRequestPart {
        var headers: HTTPHeaders = ["host": "x"]
        if let length { headers.add(name: "content-length", value: length) }
        if let authorization { headers.add(name: "authorization", value: authorization) }
        return .head(HTTPRequestHead(version: .http1_1, method: .POST, uri: path, headers: headers))
    }

    @Test(arguments: ["65", "1000000000", "99999999999999999999999"])
    func aContentLengthOverTheLimitIs413BeforeAnyBody(length: String) throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine, maxBodyBytes: 64)
        try h.channel.writeInbound(head(length))
        h.channel.embeddedEventLoop.run()
        let answers = try h.responses()
        #expect(answers.map(\.status) == [413])
        let answer = try #require(answers.first)
        #expect(try JSONDecoder().decode(APIErrorBody.self, from: Data(answer.body.utf8)) == Self.tooLarge)
        #expect(answer.head.headers["content-type"] == ["application/json"])
        #expect(answer.head.headers["connection"] == ["close"])
        #expect(!h.channel.isActive)
        #expect(engine.pending.isEmpty)
    }

    @Test func aBodyCrossingTheLimitIs413AtTheCrossing() throws {
        let h = try PublishHandlerHarness(maxBodyBytes: 64, idleTimeout: .seconds(10))
        try h.channel.writeInbound(head(nil))  // chunked: no length announced
        try h.channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: String(repeating: "x", count: 40))))
        #expect(try h.responses().isEmpty)
        try h.channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: String(repeating: "x", count: 40))))
        h.channel.embeddedEventLoop.run()
        let answers = try h.responses()
        #expect(answers.map(\.status) == [413])
        #expect(answers.first?.head.headers["connection"] == ["close"])
        #expect(!h.channel.isActive)
    }

    @Test func aRefusalWaitsForTheAnswersOwedBeforeIt() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine, maxBodyBytes: 64)
        try h.publish("/topic/a", "first")
        try h.channel.writeInbound(head("1000"))
        try h.channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: "{")))  // not read on
        #expect(try h.responses().isEmpty)
        #expect(h.channel.isActive)
        engine.pending[0].1.succeed(())
        h.channel.embeddedEventLoop.run()
        #expect(try h.responses().map(\.status) == [200, 413])
        #expect(!h.channel.isActive)
        #expect(engine.pending.count == 1)
    }

    @Test func anUnauthorizedRequestWithAnOversizedBodyIs401AndCloses() throws {
        let key = APIKeyStore.Key(name: "k", sha256: APIKeyStore.hash("s3cret"), scopes: ["/topic/"])
        let h = try PublishHandlerHarness(keys: [key], maxBodyBytes: 64)
        try h.channel.writeInbound(head("100000", authorization: "Bearer wrong"))
        h.channel.embeddedEventLoop.run()
        let answers = try h.responses()
        #expect(answers.map(\.status) == [401])
        #expect(!h.channel.isActive)
    }

    @Test func aBodyAtTheLimitIsPublishedAndTheConnectionGoesOn() throws {
        let h = try PublishHandlerHarness(maxBodyBytes: 64)
        let body = #"{"topic":"/topic/a","message":"\#(String(repeating: "x", count: 31))"}"#
        #expect(body.utf8.count == 64)
        try h.channel.writeInbound(head("64"))
        try h.channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: body)))
        try h.channel.writeInbound(HTTPServerRequestPart.end(nil))
        try h.publish("/topic/a", "small")
        #expect(try h.responses().map(\.status) == [200, 200])
        #expect(h.channel.isActive)
    }

    /// The router's 413 says `Connection: close`: the handler closes the connection after it,
    /// as on the fast path (Hummingbird would read the rest of the body, to its end).
    @Test func aRouterAnswerSayingCloseClosesTheConnection() throws {
        let h = try PublishHandlerHarness(maxBodyBytes: 64)
        try h.request(.POST, "/api/notification", body: "{", headers: ["host": "x", "origin": "http://app"], end: false)
        #expect(h.recorder.paths == ["/api/notification"])
        let context = try #require(h.recorder.context)
        context.write(h.recorder.wrapOutboundOut(.head(HTTPResponse(status: .contentTooLarge, headerFields: [.connection: "close"]))), promise: nil)
        context.writeAndFlush(h.recorder.wrapOutboundOut(.end(nil)), promise: nil)
        h.channel.embeddedEventLoop.run()
        #expect(try h.responses().map(\.status) == [413])
        #expect(!h.channel.isActive)
    }

    /// A request forwarded to the router that answers without reading its body (a 404, a 401):
    /// Hummingbird read the rest to its end, of any length. Cut at the limit: the router's side
    /// gets the end, and the connection closes after the answer owed.
    @Test(arguments: [false, true])
    func aForwardedBodyIsCutAtTheLimit(answeredBeforeTheBody: Bool) throws {
        let h = try PublishHandlerHarness(maxBodyBytes: 64)
        try h.request(.POST, "/nowhere", headers: ["host": "x"], end: false)
        #expect(h.recorder.paths == ["/nowhere"])
        if answeredBeforeTheBody { h.recorder.respond(.notFound) }
        try h.channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: String(repeating: "x", count: 40))))
        #expect(h.channel.isActive)
        try h.channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: String(repeating: "x", count: 40))))
        // The part that crossed the limit is forwarded (a route reading the body answers its 413),
        // then the body's end; nothing after it is read.
        try h.channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: String(repeating: "y", count: 40))))
        let forwarded = h.recorder.parts.compactMap { if case .body(let b) = $0 { b.readableBytes } else { nil } }
        #expect(forwarded == [40, 40])
        if case .end = h.recorder.parts.last {} else { Issue.record("no end forwarded: \(h.recorder.parts)") }
        if !answeredBeforeTheBody {
            #expect(h.channel.isActive)
            h.recorder.respond(.notFound)
        }
        h.channel.embeddedEventLoop.run()
        let answers = try h.responses()
        #expect(answers.map(\.status) == [404])
        if !answeredBeforeTheBody { #expect(answers.first?.head.headers["connection"] == ["close"]) }
        #expect(!h.channel.isActive)
    }

    @Test func theRouterAnswers413WithConnectionCloseForALengthOrABodyOverTheLimit() async throws {
        let h = APIRouterHarness(maxBodyBytes: 64)
        let subscriber = try await h.subscribe("/topic/**")
        try await h.test { client in
            // (The test client sets the length of a body it sends: the head alone announces.)
            let announced = try await client.execute(uri: "/api/notification", method: .post, headers: [.contentLength: "100000"])
            let sent = try await client.post("/api/notification", #"{"topic":"/topic/a","message":"\#(String(repeating: "x", count: 64))"}"#)
            for response in [announced, sent] {
                #expect(response.status == .contentTooLarge)
                #expect(response.headers[.connection] == "close")
                #expect(response.headers[.contentType] == "application/json")
                #expect(response.text == #"{"error":"request body larger than 64 bytes","field":null}"#)
            }
        }
        #expect(try await subscriber.received().isEmpty)
    }

    /// A body that could not be read for another reason than its size (the client closed in
    /// the middle of it, the stream failed) was answered 413 "larger than N bytes".
    @Test func aBodyThatFailsForAnotherReasonIsNot413() async throws {
        struct Cut: Error {}
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: ByteBuffer.self)
        continuation.yield(ByteBuffer(string: "{\"topic\""))
        continuation.finish(throwing: Cut())
        let request = Request(
            head: HTTPRequest(method: .post, scheme: "http", authority: "x", path: "/api/notification"),
            body: RequestBody(asyncSequence: stream))
        do {
            _ = try await PublishAPI.body(of: request, upTo: 64)
            Issue.record("read a body that failed")
        } catch {
            #expect(error.status == .badRequest, "\(error)")
        }
        let (big, bigContinuation) = AsyncThrowingStream.makeStream(of: ByteBuffer.self)
        bigContinuation.yield(ByteBuffer(repeating: 0x78, count: 65))
        bigContinuation.finish()
        do {
            _ = try await PublishAPI.body(of: Request(head: request.head, body: RequestBody(asyncSequence: big)), upTo: 64)
            Issue.record("read a body over the limit")
        } catch {
            #expect(error.status == .contentTooLarge)
        }
    }

    @Test func theConsolesRedisPublishAnswersAnOversizedBodyWithTheAPIsJSON413() async throws {
        let hub = FanoutHub()
        let services = GatewayServices(
            configuration: SessionConfiguration(), hub: hub, engine: InMemoryEngine(hub: hub), routes: RouteTable(), instanceID: "t1",
            logger: Logger(label: "test"))
        let publisher = NotificationPublisher(services: services, apiKeys: APIKeyStore(keys: []), maxBodyBytes: 64, maxBatchItems: 3)
        let router = Router()
        ConsoleRoutes(path: "/console", services: services, inboundChannels: ["IN"], publisher: publisher).register(on: router)
        try await Application(router: router).test(.router) { client in
            let response = try await client.post("/api/console/redis-publish", #"{"channel":"IN","message":"\#(String(repeating: "x", count: 64))"}"#)
            #expect(response.status == .contentTooLarge)
            #expect(response.headers[.contentType] == "application/json")
            #expect(response.headers[.connection] == "close")
            #expect(response.text == #"{"error":"request body larger than 64 bytes","field":null}"#)
            // Within the limit it is read, then refused for want of Redis.
            #expect(try await client.post("/api/console/redis-publish", #"{"channel":"IN","message":"m"}"#).status == .conflict)
            // The console's files: no framing by other sites, no sniffing, the console's own scripts only.
            let page = try await client.execute(uri: "/console/index.html", method: .get)
            #expect(page.status == .ok)
            #expect(page.headers[.contentSecurityPolicy]?.contains("frame-ancestors 'none'") == true)
            #expect(page.headers[.contentSecurityPolicy]?.hasPrefix("default-src 'self'") == true)
            #expect(page.headers[HTTPField.Name("X-Frame-Options")!] == "DENY")
            #expect(page.headers[HTTPField.Name("X-Content-Type-Options")!] == "nosniff")
        }
    }
}
