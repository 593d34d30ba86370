import Foundation
import HTTPTypes
import MetricsTestKit
import NIOCore
import NIOEmbedded
import NIOHTTP1
import SwitchboardAPIModel
import SwitchboardAuth
import Testing

@testable import SwitchboardServer

/// What the handler wrote, interim answers included: one entry per head, with the body after it
/// and whether its end was written.
struct WrittenAnswer {
    var status: Int
    var head: HTTPResponseHead
    var body = ""
    var ended = false
}

extension PublishHandlerHarness {
    /// Everything flushed since the last call, head by head.
    func written() throws -> [WrittenAnswer] {
        var out: [WrittenAnswer] = []
        while let part = try channel.readOutbound(as: HTTPServerResponsePart.self) {
            switch part {
            case .head(let head): out.append(WrittenAnswer(status: Int(head.status.code), head: head))
            case .body(.byteBuffer(let bytes)): out[out.count - 1].body += String(buffer: bytes)
            case .body(.fileRegion): Issue.record("a file region")
            case .end: out[out.count - 1].ended = true
            }
        }
        return out
    }

    func head(
        _ method: HTTPMethod = .POST, _ path: String = "/api/notification", expect: String? = "100-continue", contentLength: Int? = nil,
        extra: HTTPHeaders = [:], version: HTTPVersion = .http1_1
    ) throws {
        var headers: HTTPHeaders = ["host": "x"]
        if let expect { headers.add(name: "Expect", value: expect) }
        if let contentLength { headers.add(name: "content-length", value: String(contentLength)) }
        headers.add(contentsOf: extra)
        try channel.writeInbound(HTTPServerRequestPart.head(HTTPRequestHead(version: version, method: method, uri: path, headers: headers)))
    }

    func bodyAndEnd(_ body: String = #"{"topic":"/topic/a","message":"m"}"#) throws {
        try channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: body)))
        try channel.writeInbound(HTTPServerRequestPart.end(nil))
    }
}

/// `Expect: 100-continue` (RFC 9110 §10.1.1): a client that sends it waits for `100 Continue`
/// before its body (curl 1 s). The handler writes it on both paths, in request order; other
/// expectations are a 417.
@Suite struct HTTPExpectContinueTests {
    static let body = #"{"topic":"/topic/a","message":"m"}"#

    @Test(arguments: ["100-continue", "100-Continue", " 100-CONTINUE ", "100-continue, "])
    func continueIsWrittenAfterTheHeadBeforeTheBody(expect: String) throws {
        let h = try PublishHandlerHarness()
        try h.head(expect: expect, contentLength: Self.body.utf8.count)
        let interim = try h.written()
        #expect(interim.map(\.status) == [100])
        #expect(interim.first?.ended == false && interim.first?.body == "")
        #expect(h.tasksOpened == 0)  // served on the loop, not sent to the router
        try h.channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: String(Self.body.prefix(10)))))
        try h.bodyAndEnd(String(Self.body.dropFirst(10)))
        let answers = try h.written()
        #expect(answers.map(\.status) == [200])  // no second 100
        #expect(answers.first?.ended == true && answers.first?.body.contains("/topic/a") == true)
        #expect(h.channel.isActive)
    }

    @Test func theEncoderWritesTheInterimAnswerBare() throws {
        let h = try PublishHandlerHarness()
        try h.channel.pipeline.syncOperations.addHandler(HTTPResponseEncoder(), position: .first)
        try h.head(contentLength: Self.body.utf8.count)
        var bytes = ByteBuffer()
        while var chunk = try h.channel.readOutbound(as: IOData.self).flatMap({ if case .byteBuffer(let b) = $0 { b } else { nil } }) {
            bytes.writeBuffer(&chunk)
        }
        #expect(String(buffer: bytes) == "HTTP/1.1 100 Continue\r\n\r\n")
        try h.bodyAndEnd()
        var answer = ByteBuffer()
        while var chunk = try h.channel.readOutbound(as: IOData.self).flatMap({ if case .byteBuffer(let b) = $0 { b } else { nil } }) {
            answer.writeBuffer(&chunk)
        }
        let text = String(buffer: answer)
        #expect(text.hasPrefix("HTTP/1.1 200 OK\r\n") && text.contains("Content-Length: "))
    }

    @Test func anUnauthorizedRequestGetsItsContinueAndItsBodyIsRead() throws {
        let key = APIKeyStore.Key(name: "k", sha256: APIKeyStore.hash("s3cret"), scopes: ["/topic/"])
        let h = try PublishHandlerHarness(keys: [key])
        try h.head(contentLength: Self.body.utf8.count)
        #expect(try h.written().map(\.status) == [100])
        try h.bodyAndEnd()
        #expect(try h.written().map(\.status) == [401])
        #expect(h.channel.isActive)
    }

    @Test func http10IgnoresTheField() throws {
        let h = try PublishHandlerHarness()
        for expect in ["100-continue", "fancy"] {
            try h.head(expect: expect, extra: ["connection": "keep-alive"], version: .http1_0)
            #expect(try h.written().isEmpty)
            try h.bodyAndEnd()
            #expect(try h.written().map(\.status) == [200])
        }
        #expect(h.channel.isActive)
    }

    @Test(arguments: [
        ("fancy", "fancy"), ("100-continue, fancy", "fancy"), ("100-continue=1", "100-continue=1"), (#"a="b""#, #"a="b""#),
    ])
    func anotherExpectationIs417AndTheRequestIsNotProcessed(expect: String, named: String) throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine)
        try h.head(expect: expect, contentLength: Self.body.utf8.count)
        try h.bodyAndEnd()  // not read on
        h.channel.embeddedEventLoop.run()
        let answers = try h.written()
        #expect(answers.map(\.status) == [417])
        let answer = try #require(answers.first)
        let error = try JSONDecoder().decode(APIErrorBody.self, from: Data(answer.body.utf8))
        #expect(error == APIErrorBody(error: "expectation '\(named)' cannot be met: only 100-continue is supported", field: "Expect"))
        #expect(answer.head.headers["content-type"] == ["application/json"] && answer.head.headers["connection"] == ["close"])
        #expect(engine.pending.isEmpty)
        #expect(!h.channel.isActive)
    }

    /// A `CONNECT` asks for a tunnel: NIO's encoder allows its answer no body (nor its length),
    /// so the router's 404 left the client waiting for one until the idle timeout. A 405 here,
    /// after the answers owed, and the close.
    @Test func aConnectIs405AndClosedAfterTheAnswersBeforeIt() throws {
        let h = try PublishHandlerHarness()
        try h.head(expect: nil, contentLength: Self.body.utf8.count)
        try h.bodyAndEnd()
        try h.head(.CONNECT, "example.com:443", expect: nil)
        try h.channel.writeInbound(HTTPServerRequestPart.end(nil))
        h.channel.embeddedEventLoop.run()
        let answers = try h.written()
        #expect(answers.map(\.status) == [200, 405])
        #expect(answers.last?.body == "" && answers.last?.ended == true)
        #expect(answers.last?.head.headers["connection"] == ["close"])
        #expect(h.tasksOpened == 0 && h.recorder.parts.isEmpty)
        #expect(!h.channel.isActive)
    }

    @Test func anotherExpectationIs417OnTheRoutersRoutesToo() throws {
        let h = try PublishHandlerHarness()
        try h.head(.GET, "/health", expect: "fancy")
        try h.channel.writeInbound(HTTPServerRequestPart.end(nil))
        h.channel.embeddedEventLoop.run()
        #expect(try h.written().map(\.status) == [417])
        #expect(h.tasksOpened == 0 && h.recorder.parts.isEmpty)
        #expect(!h.channel.isActive)
    }

    /// A request refused at its head (an expectation it cannot meet; a body announced over the
    /// limit while it waits for its 100) waits for the router's answers owed before it.
    @Test(arguments: [
        ("/api/notification", "fancy", 34, 417),
        ("/api/console/x", "100-continue", 100_000, 413),
    ])
    func aRefusalAtTheHeadWaitsForTheRoutersAnswersOwed(path: String, expect: String, contentLength: Int, status: Int) throws {
        let h = try PublishHandlerHarness(maxBodyBytes: 64)
        try h.request(.GET, "/health")
        try h.head(path == "/api/notification" ? .POST : .PUT, path, expect: expect, contentLength: contentLength)
        #expect(try h.written().isEmpty)
        h.recorder.respond(.ok)
        h.channel.embeddedEventLoop.run()
        #expect(try h.written().map(\.status) == [200, status])
        #expect(h.recorder.paths == ["/health"])
        #expect(!h.channel.isActive)
    }

    @Test func aContentLengthOverTheLimitIs413InsteadOf100() throws {
        let h = try PublishHandlerHarness(maxBodyBytes: 64)
        try h.head(contentLength: 100_000)
        h.channel.embeddedEventLoop.run()
        let answers = try h.written()
        #expect(answers.map(\.status) == [413])
        #expect(answers.first?.head.headers["connection"] == ["close"])
        #expect(!h.channel.isActive)
    }

    /// A health check the handler answers itself announced a body over the limit: it got its
    /// 100, uploaded it, and only then the 413.
    @Test(arguments: ["/health/live", "/health/ready"])
    func aHealthCheckAnnouncingABodyOverTheLimitIs413InsteadOf100(path: String) throws {
        let h = try PublishHandlerHarness(maxBodyBytes: 64, readiness: { (.ok, ReadinessAnswer(status: "ready")) })
        try h.head(.GET, path, contentLength: 100_000)
        h.channel.embeddedEventLoop.run()
        let answers = try h.written()
        #expect(answers.map(\.status) == [413])
        #expect(answers.first?.head.headers["connection"] == ["close"])
        #expect(h.tasksOpened == 0 && h.recorder.parts.isEmpty)
        #expect(!h.channel.isActive)
    }

    /// The answers named by no route ("body too large", "unmet expectation") are counted per
    /// method: the first method seen was reused for every other.
    @Test func refusalsAtTheHeadAreCountedByTheirOwnMethod() throws {
        let factory = TestMetrics()
        let metrics = HTTPRouteMetrics(factory: factory)
        metrics.record(.announcedTooLarge(method: "GET"), status: .contentTooLarge, since: 0)
        metrics.record(.announcedTooLarge(method: "PUT"), status: .contentTooLarge, since: 0)
        metrics.record(.announcedTooLarge(method: "PUT"), status: .contentTooLarge, since: 0)
        let counted = factory.counters(label: "hb.requests").map { counter in
            (Dictionary(uniqueKeysWithValues: counter.dimensions)["http.request.method"] ?? "", counter.totalValue)
        }
        #expect(Dictionary(uniqueKeysWithValues: counted) == ["GET": 1, "PUT": 2])
    }

    @Test func aForwardedRequestAnnouncingABodyOverTheLimitIs413InsteadOf100() throws {
        let h = try PublishHandlerHarness(maxBodyBytes: 64)
        try h.head(contentLength: 100_000, extra: ["origin": "http://app"])  // the router's (CORS)
        h.channel.embeddedEventLoop.run()
        let answers = try h.written()
        #expect(answers.map(\.status) == [413])
        #expect(answers.first?.body.contains("request body larger than 64 bytes") == true)
        #expect(answers.first?.head.headers["connection"] == ["close"])
        #expect(h.tasksOpened == 0 && h.recorder.parts.isEmpty, "the router never saw it")
        #expect(!h.channel.isActive)
    }

    @Test func withoutExpectAForwardedRequestOverTheLimitIsTheRouters() throws {
        let h = try PublishHandlerHarness(maxBodyBytes: 64)
        try h.head(.PUT, "/api/console/x", expect: nil, contentLength: 100_000)
        #expect(h.recorder.paths == ["/api/console/x"], "the router answers it (its own 413 once it reads past the limit)")
    }

    @Test func aPipelinedRequestsContinueWaitsForTheAnswersBeforeIt() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine)
        try h.publish("/topic/a", "1")
        try h.head(contentLength: Self.body.utf8.count)
        #expect(try h.written().isEmpty)  // the first answer is not ready: no 100 before it
        engine.pending[0].1.succeed(())
        h.channel.embeddedEventLoop.run()
        let written = try h.written()
        #expect(written.map(\.status) == [200, 100])
        #expect(written.map(\.ended) == [true, false])
        try h.bodyAndEnd()
        try #require(engine.pending.count == 2)  // served here, not by the router
        engine.pending[1].1.succeed(())
        h.channel.embeddedEventLoop.run()
        #expect(try h.written().map(\.status) == [200])
    }

    /// The client waits for the 100, which waits for the answers before it: that time is not
    /// the client's being slow (the request timeout counts from the 100).
    @Test func theTimeARequestWaitsForItsContinueDoesNotCountAgainstTheRequestTimeout() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine, idleTimeout: .seconds(60), requestTimeout: .seconds(10))
        try h.publish("/topic/a", "1")
        try h.head(contentLength: Self.body.utf8.count)
        let loop = h.channel.embeddedEventLoop
        loop.advanceTime(by: .seconds(25))  // the first answer is slow (publish admission waits up to 10 s, a backend…)
        #expect(h.channel.isActive, "not closed while the client waits for its 100")
        engine.pending[0].1.succeed(())
        loop.run()
        #expect(try h.written().map(\.status) == [200, 100])
        loop.advanceTime(by: .seconds(5))
        try h.bodyAndEnd()
        try #require(engine.pending.count == 2)
        engine.pending[1].1.succeed(())
        loop.run()
        #expect(try h.written().map(\.status) == [200])
        #expect(h.channel.isActive)
    }

    @Test func aRequestThatGotItsContinueAndSendsNothingIsClosedAtTheRequestTimeout() throws {
        let h = try PublishHandlerHarness(idleTimeout: .seconds(60), requestTimeout: .seconds(10))
        try h.head(contentLength: Self.body.utf8.count)
        #expect(try h.written().map(\.status) == [100])
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(21))
        #expect(!h.channel.isActive)
    }

    @Test func aRequestWhoseBodyCameWhileItWaitedGetsNo100() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine)
        try h.publish("/topic/a", "1")
        try h.head(contentLength: Self.body.utf8.count)
        try h.bodyAndEnd()  // the client did not wait
        engine.pending[0].1.succeed(())
        h.channel.embeddedEventLoop.run()
        #expect(try h.written().map(\.status) == [200])
        try #require(engine.pending.count == 2)
        engine.pending[1].1.succeed(())
        h.channel.embeddedEventLoop.run()
        #expect(try h.written().map(\.status) == [200])
    }

    @Test func aForwardedRequestGetsItsContinue() throws {
        let h = try PublishHandlerHarness()
        try h.head(extra: ["origin": "http://app"])  // the router's (CORS)
        #expect(h.tasksOpened == 1 && h.recorder.paths == ["/api/notification"])
        #expect(try h.written().map(\.status) == [100])
        try h.bodyAndEnd()
        h.recorder.respond(.ok)
        #expect(try h.written().map(\.status) == [200])
        #expect(h.recorder.parts.count == 3)
    }

    @Test func aForwardedRequestsContinueWaitsForTheRoutersEarlierAnswer() throws {
        let h = try PublishHandlerHarness()
        try h.request(.GET, "/health")
        try h.head(.PUT, "/api/console/x", contentLength: 2)
        #expect(h.recorder.paths == ["/health", "/api/console/x"])
        #expect(try h.written().isEmpty)
        h.recorder.respond(.ok)
        #expect(try h.written().map(\.status) == [200, 100])
        try h.bodyAndEnd("{}")
        h.recorder.respond(.notFound)
        #expect(try h.written().map(\.status) == [404])
    }

    @Test func aForwardedRequestsContinueWaitsForTheAnswersOfPublishesBeforeIt() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine)
        try h.publish("/topic/a", "1")
        try h.head(extra: ["origin": "http://app"])
        #expect(try h.written().isEmpty && h.recorder.parts.isEmpty)
        engine.pending[0].1.succeed(())
        h.channel.embeddedEventLoop.run()
        let written = try h.written()
        #expect(written.map(\.status) == [200, 100])
        #expect(h.recorder.paths == ["/api/notification"])
    }

    @Test func expectationsAreRead() {
        func expectation(_ values: [String], _ version: HTTPVersion = .http1_1) -> HTTPPublishHandler.Expectation {
            var headers = HTTPHeaders()
            for value in values { headers.add(name: "Expect", value: value) }
            return HTTPPublishHandler.expectation(of: HTTPRequestHead(version: version, method: .POST, uri: "/", headers: headers))
        }
        #expect(expectation([]) == .none)
        #expect(expectation([""]) == .none)
        #expect(expectation(["100-continue"]) == .continue100)
        #expect(expectation(["100-continue", "100-CONTINUE"]) == .continue100)
        #expect(expectation(["100-continue", "x"]) == .unmet("x"))
        #expect(expectation(["100-continue"], .http1_0) == .none)
        #expect(expectation(["x"], .http1_0) == .none)
        let long = String(repeating: "y", count: 200)
        #expect(HTTPPublishHandler.expectationFailed(long).message.contains(String(repeating: "y", count: 64) + "…'"))
    }
}
