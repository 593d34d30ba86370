import NIOCore
import NIOHTTP1
import SwitchboardAPIModel
import SwitchboardAuth
import Testing

@testable import SwitchboardServer

/// How the fast path collects a request's body.
@Suite struct HTTPBodyCollectionTests {
    func head(_ path: String, method: HTTPMethod = .POST, headers: HTTPHeaders = ["host": "x", "transfer-encoding": "chunked"]) -> HTTPServerRequestPart {
        .head(HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: headers))
    }

    /// The body was held twice (by the request's state and the copy being appended to), so each
    /// part copied the whole body into a new buffer: a body sent in 1-byte chunks cost its length
    /// squared in copies, seconds of an event loop per request, without an API key. A part that
    /// fits now goes into the same buffer.
    @Test func aBodyInManyPartsGrowsInPlace() throws {
        let h = try PublishHandlerHarness(maxBodyBytes: 4096)
        try h.channel.writeInbound(head("/api/notification"))
        try h.channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: #"{"topic":"/topic/a","#)))
        let first = try #require(h.keptBody)
        for count in 1...5 {
            try h.channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: " ")))
            let now = try #require(h.keptBody)
            #expect(now.bytes == first.bytes + count)
            #expect(now.address == first.address, "appended in place, not copied")
        }
        try h.channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: #""message":"m"}"#)))
        try h.channel.writeInbound(HTTPServerRequestPart.end(nil))
        #expect(try h.responses().map(\.status) == [200])
    }

    /// A request refused at its head (no valid key) or a health check is answered without its
    /// body: it was kept all the same, up to the body limit, for as long as the client took to
    /// send it (a byte a minute kept it open). Now only counted.
    @Test func aBodyTheAnswerDoesNotNeedIsCountedNotKept() throws {
        let key = APIKeyStore.Key(name: "backend", sha256: APIKeyStore.hash("s3cret"), scopes: ["/topic/"])
        let h = try PublishHandlerHarness(keys: [key], maxBodyBytes: 100, readiness: { (.ok, ReadinessAnswer(status: "ready")) })
        try h.channel.writeInbound(head("/api/notification"))
        try h.channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(repeating: 0x20, count: 60)))
        #expect(h.keptBody == nil, "a 401's body is not kept")
        try h.channel.writeInbound(HTTPServerRequestPart.end(nil))
        #expect(try h.responses().map(\.status) == [401])
        try h.channel.writeInbound(head("/health/live", method: .GET))
        try h.channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(repeating: 0x20, count: 60)))
        #expect(h.keptBody == nil, "a health check's body is not kept")
        try h.channel.writeInbound(HTTPServerRequestPart.end(nil))
        #expect(try h.responses().map(\.status) == [200])
        // Still counted: past the limit the answer comes at once and the connection closes.
        try h.channel.writeInbound(head("/api/notification"))
        try h.channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(repeating: 0x20, count: 60)))
        try h.channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(repeating: 0x20, count: 60)))
        let answers = try h.responses()
        #expect(answers.map(\.status) == [401])
        #expect(answers.first?.head.headers["connection"] == ["close"])
    }
}
