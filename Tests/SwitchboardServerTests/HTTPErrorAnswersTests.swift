import Foundation
import HTTPTypes
import HummingbirdTesting
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import SwitchboardAPIModel
import Testing

@testable import SwitchboardServer

/// Requests nobody serves, and bytes that are not HTTP, are answered in JSON like every other
/// error of the API.
@Suite struct HTTPErrorAnswersTests {
    @Test(arguments: [
        ("/api/notification", HTTPRequest.Method.get), ("/api/notifications", .delete), ("/api/users/al/notification", .put),
    ])
    func aPublishRouteWithAnotherMethodIs405WithAllow(path: String, method: HTTPRequest.Method) async throws {
        let h = APIRouterHarness()
        try await h.test { client in
            let response = try await client.execute(uri: path, method: method)
            #expect(response.status == .methodNotAllowed)
            #expect(response.headers[.allow] == "POST")
            #expect(response.headers[.contentType] == "application/json")
            let body = try JSONDecoder().decode(APIErrorBody.self, from: Data(response.body.readableBytesView))
            #expect(body == APIErrorBody(error: "method \(method.rawValue) is not allowed on \(path); allowed: POST", field: "method"))
        }
    }

    @Test(arguments: ["/api/notificatio", "/api/users/a/b/notification", "/nothing"])
    func anUnknownPathIs404NamingIt(path: String) async throws {
        let h = APIRouterHarness()
        try await h.test { client in
            let response = try await client.execute(uri: path, method: .post, body: ByteBuffer(string: "{}"))
            #expect(response.status == .notFound)
            let body = try JSONDecoder().decode(APIErrorBody.self, from: Data(response.body.readableBytesView))
            #expect(body == APIErrorBody(error: "no route for POST \(path)", field: "path"))
        }
    }

    @Test func aTopicThatIsOnlyAPrefixNamesNoDestination() async throws {
        let h = APIRouterHarness()
        try await h.test { client in
            let response = try await client.post("/api/notification", #"{"topic":"/topic/","message":"x"}"#)
            #expect(response.status == .badRequest)
            #expect(response.text == #"{"error":"field 'topic' must name a destination after /topic/","field":"topic"}"#)
            let user = try await client.post("/api/users/al/notification", #"{"topic":"/queue/","message":"x"}"#)
            #expect(user.text == #"{"error":"field 'topic' must name a destination after /queue/","field":"topic"}"#)
        }
    }

    /// Malformed HTTP after a pipelined publish still unanswered: its 400 comes after the
    /// publish's 200, in order (NIO's handler answered at once, and the close lost the 200).
    @Test func malformedBytesAreAnsweredInOrderAfterTheAnswersOwed() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine)
        try h.publish("/topic/a", "first")
        #expect(try h.responses().isEmpty)
        h.channel.pipeline.fireErrorCaught(HTTPParserError.invalidContentLength)
        #expect(try h.responses().isEmpty, "the 400 waits for the publish before it")
        #expect(h.channel.isActive)
        // Later bytes are not read as requests, and the parser's complaints about them are dropped.
        try h.publish("/topic/a", "after")
        h.channel.pipeline.fireErrorCaught(ByteToMessageDecoderError.dataReceivedInErrorState(HTTPParserError.invalidContentLength, ByteBuffer()))
        engine.pending[0].1.succeed(())
        let answers = try h.responses()
        #expect(answers.map(\.status) == [200, 400])
        #expect(answers[1].head.headers["connection"] == ["close"])
        #expect(answers[1].head.headers["content-type"] == ["application/json"])
        let body = try JSONDecoder().decode(APIErrorBody.self, from: Data(answers[1].body.utf8))
        #expect(body.field == "Content-Length" && body.error.hasPrefix("malformed HTTP request: "))
        #expect(engine.pending.count == 1, "nothing after the bad bytes was published")
        #expect(!h.channel.isActive)
    }

    /// Malformed bytes after a router request held behind an unanswered publish (and a request
    /// cut off by them): the held request is still forwarded and answered, then the 400 (before,
    /// held requests were dropped, and the client read the 400 as the answer to GET /health).
    @Test(arguments: [false, true])
    func malformedBytesAfterAHeldRouterRequestComeAfterItsAnswer(routerServing: Bool) throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine)
        if routerServing {
            try h.request(.GET, "/metrics")
            h.recorder.respond(.ok)
            #expect(try h.responses().map(\.status) == [200])
        }
        try h.publish("/topic/a", "first")
        try h.request(.GET, "/health")
        try h.request(.GET, "/health/live", end: false)  // cut off by the bad bytes
        h.channel.pipeline.fireErrorCaught(HTTPParserError.invalidHeaderToken)
        #expect(try h.responses().isEmpty, "the 400 waits for the answers before it")
        engine.pending[0].1.succeed(())
        h.channel.embeddedEventLoop.run()
        #expect(h.recorder.paths == (routerServing ? ["/metrics", "/health"] : ["/health"]))
        #expect(try h.responses().map(\.status) == [200])
        #expect(h.channel.isActive)
        h.recorder.respond(.ok)
        let answers = try h.responses()
        #expect(answers.map(\.status) == [200, 400])
        #expect(answers[1].head.headers["connection"] == ["close"])
        #expect(!h.channel.isActive)
    }

    /// A client gone in the middle of a body: nothing is owed for that request, the connection
    /// closes at once (it held its descriptor until the idle timeout).
    @Test func aRequestCutOffInItsBodyIsForgottenWhenTheClientLeaves() throws {
        let h = try PublishHandlerHarness()
        try h.publish("/topic/a", "first")
        try h.request(.POST, "/api/notification", body: #"{"topic":"/to"#, end: false)
        h.channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(try h.responses().map(\.status) == [200])
        #expect(!h.channel.isActive)
    }

    /// Malformed bytes in the middle of a body: the 400 answers that request (it waited behind
    /// the request being read, until the idle timeout).
    @Test func malformedBytesInABodyAnswerThatRequest() throws {
        let h = try PublishHandlerHarness()
        try h.request(.POST, "/api/notification", body: #"{"topic":"/to"#, end: false)
        h.channel.pipeline.fireErrorCaught(HTTPParserError.invalidChunkSize)
        #expect(try h.responses().map(\.status) == [400])
        #expect(!h.channel.isActive)
    }

    /// With the router's task serving the connection, the 400 waits for the router's answers to
    /// the requests before the bad bytes (it came first, and the router's task answered a second,
    /// empty 400); the error does not reach the router.
    @Test func malformedBytesWithTheRouterServingWaitForItsAnswers() throws {
        let h = try PublishHandlerHarness()
        try h.request(.GET, "/metrics")
        #expect(h.tasksOpened == 1)
        h.channel.pipeline.fireErrorCaught(HTTPParserError.invalidChunkSize)
        #expect(try h.responses().isEmpty, "the 400 waits for the answer to GET /metrics")
        #expect(h.channel.isActive)
        h.recorder.respond(.ok)
        let answers = try h.responses()
        #expect(answers.map(\.status) == [200, 400])
        #expect(answers[1].head.headers["connection"] == ["close"])
        #expect(try JSONDecoder().decode(APIErrorBody.self, from: Data(answers[1].body.utf8)).field == "Transfer-Encoding")
        #expect(h.recorder.errors.isEmpty)
        #expect(!h.channel.isActive)
    }

    /// The router's task serving the connection, nothing owed: the 400 at once.
    @Test func malformedBytesWithTheRouterServingAndNothingOwedAre400AtOnce() throws {
        let h = try PublishHandlerHarness()
        try h.request(.GET, "/metrics")
        h.recorder.respond(.ok)
        #expect(try h.responses().map(\.status) == [200])
        h.channel.pipeline.fireErrorCaught(HTTPParserError.invalidHeaderToken)
        let answers = try h.responses()
        #expect(answers.map(\.status) == [400])
        #expect(try JSONDecoder().decode(APIErrorBody.self, from: Data(answers[0].body.utf8)).field == "headers")
        #expect(!h.channel.isActive)
    }

    /// Bad bytes inside a forwarded request's body: that request is the bad one, and the router
    /// owes it nothing; the 400 comes after the router's answers before it, never inside one.
    @Test func malformedBytesInAForwardedBodyAnswerThatRequest() throws {
        let h = try PublishHandlerHarness()
        try h.request(.GET, "/metrics")
        try h.request(.POST, "/console/x", body: "par", end: false)
        let context = try #require(h.recorder.context)
        context.writeAndFlush(NIOAny(HTTPResponsePart.head(HTTPResponse(status: .ok))), promise: nil)
        h.channel.pipeline.fireErrorCaught(HTTPParserError.invalidChunkSize)
        #expect(h.channel.isActive, "no 400 in the middle of the router's response")
        context.writeAndFlush(NIOAny(HTTPResponsePart.end(nil)), promise: nil)
        // Read once the router's response ended: a 400 written inside it would pair the wrong heads and ends.
        let answers = try h.responses()
        #expect(answers.map(\.status) == [200, 400])
        #expect(answers[0].body.isEmpty && answers[1].body.contains("malformed HTTP request"))
        #expect(!h.channel.isActive)
    }
}
