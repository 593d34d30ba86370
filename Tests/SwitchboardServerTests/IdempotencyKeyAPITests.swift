import Foundation
import HTTPTypes
import NIOCore
import NIOHTTP1
import SwitchboardAPIModel
import SwitchboardCore
import Testing

@testable import SwitchboardServer

/// `Idempotency-Key` (header) or `idempotencyKey` (field): a publish repeated with the same key
/// is answered `{"duplicate":true,…}` and not published again; on both paths.
@Suite struct IdempotencyKeyAPITests {
    static let body = #"{"topic":"/topic/a","message":"m"}"#

    /// Completes every publish the engine holds, then returns the answers written.
    static func settle(_ h: PublishHandlerHarness, _ engine: HeldEngine) throws -> [(status: Int, head: HTTPResponseHead, body: String)] {
        for (_, promise) in engine.pending { promise.succeed(()) }
        h.channel.embeddedEventLoop.run()
        return try h.responses()
    }

    @Test func aRepeatedHeaderKeyIsADuplicateAndNotPublished() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine)
        for _ in 0..<2 { try h.request(.POST, "/api/notification", body: Self.body, headers: ["host": "x", "Idempotency-Key": "order-1"]) }
        try h.request(.POST, "/api/notification", body: Self.body, headers: ["host": "x", "Idempotency-Key": "order-2"])
        let answers = try Self.settle(h, engine)
        #expect(answers.map(\.status) == [200, 200, 200])
        #expect(answers[0].body == #"{"id":"t-1","topic":"/topic/a"}"#)
        #expect(answers[1].body == #"{"duplicate":true,"topic":"/topic/a"}"#)
        #expect(answers[2].body == #"{"id":"t-3","topic":"/topic/a"}"#)
        #expect(engine.pending.map(\.0.messageID) == ["t-1", "t-3"], "the duplicate was not published")
    }

    @Test func theFieldWorksAloneAndMayRepeatTheHeader() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine)
        let keyed = #"{"topic":"/topic/a","message":"m","idempotencyKey":"k"}"#
        try h.request(.POST, "/api/notification", body: keyed)
        try h.request(.POST, "/api/notification", body: keyed, headers: ["host": "x", "Idempotency-Key": "k"])
        let answers = try Self.settle(h, engine)
        #expect(answers.map(\.body) == [#"{"id":"t-1","topic":"/topic/a"}"#, #"{"duplicate":true,"topic":"/topic/a"}"#])
    }

    /// Equal as Swift Strings (canonically equivalent), different as keys, which are compared
    /// byte for byte: the header's bytes became the key, and a retry sending only the field was
    /// another key (delivered again).
    @Test func aHeaderAndAFieldEqualOnlyCanonicallyAreDifferentKeys() throws {
        let h = try PublishHandlerHarness()
        let body = "{\"topic\":\"/topic/a\",\"message\":\"m\",\"idempotencyKey\":\"caf\u{00E9}\"}"
        try h.request(.POST, "/api/notification", body: body, headers: ["host": "x", "Idempotency-Key": "cafe\u{0301}"])
        let answers = try h.responses()
        #expect(answers.map(\.status) == [400])
        #expect(answers.first?.body == #"{"error":"header 'Idempotency-Key' and field 'idempotencyKey' name different keys","field":"Idempotency-Key"}"#)
    }

    @Test(arguments: [
        (["Idempotency-Key": "other"], #"{"error":"header 'Idempotency-Key' and field 'idempotencyKey' name different keys","field":"Idempotency-Key"}"#),
        (["Idempotency-Key": ""], #"{"error":"header 'Idempotency-Key' must be 1 to 256 bytes","field":"Idempotency-Key"}"#),
        // What bytes that are not UTF-8 become once NIO decodes the header: two different keys
        // became one, and the second message was taken for a retry and not published.
        (["Idempotency-Key": "ord-\u{FFFD}"], #"{"error":"header 'Idempotency-Key' must be UTF-8 (without U+FFFD)","field":"Idempotency-Key"}"#),
    ])
    func aBadOrConflictingHeaderIsA400(headers: [String: String], error: String) throws {
        let h = try PublishHandlerHarness()
        var fields: HTTPHeaders = ["host": "x"]
        for (name, value) in headers { fields.add(name: name, value: value) }
        try h.request(.POST, "/api/notification", body: #"{"topic":"/topic/a","message":"m","idempotencyKey":"k"}"#, headers: fields)
        let answers = try h.responses()
        #expect(answers.map(\.status) == [400])
        #expect(answers.first?.body == error)
    }

    @Test func twoHeadersOrAHeaderOnABatchAreA400() throws {
        let h = try PublishHandlerHarness()
        var twice: HTTPHeaders = ["host": "x"]
        twice.add(name: "Idempotency-Key", value: "a")
        twice.add(name: "Idempotency-Key", value: "b")
        try h.request(.POST, "/api/notification", body: Self.body, headers: twice)
        try h.request(.POST, "/api/notifications", body: "[" + Self.body + "]", headers: ["host": "x", "Idempotency-Key": "k"])
        let answers = try h.responses()
        #expect(answers.map(\.status) == [400, 400])
        #expect(answers[0].body == #"{"error":"header 'Idempotency-Key' must be given once","field":"Idempotency-Key"}"#)
        #expect(answers[1].body.contains("give each notification its 'idempotencyKey'"))
    }

    @Test func batchItemsHaveTheirOwnKeys() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine)
        let batch =
            #"[{"topic":"/topic/a","message":"1","idempotencyKey":"k1"},{"topic":"/topic/a","message":"2","idempotencyKey":"k1"},{"topic":"/topic/a","message":"3"}]"#
        try h.request(.POST, "/api/notifications", body: batch)
        let answers = try Self.settle(h, engine)
        #expect(answers.map(\.status) == [200])
        let answer = try JSONDecoder().decode(BatchAnswer.self, from: Data(answers[0].body.utf8))
        #expect(answer.published == 3 && answer.failed == 0)
        #expect(answer.results[1] == .published(NotificationAnswer(id: nil, topic: "/topic/a", user: nil, duplicate: true)))
        #expect(engine.pending.map { String(buffer: $0.0.body) } == ["1", "3"])
    }

    @Test func theRoutersPathReadsTheHeaderToo() async throws {
        let h = APIRouterHarness()
        let subscriber = try await h.subscribe("/topic/news")
        try await h.test { client in
            var headers = HTTPFields()
            headers[HTTPField.Name("Idempotency-Key")!] = "n-1"
            let first = try await client.post("/api/notification", #"{"topic":"/topic/news","message":"hello"}"#, headers: headers)
            let again = try await client.post("/api/notification", #"{"topic":"/topic/news","message":"hello"}"#, headers: headers)
            #expect(first.text == #"{"id":"t1-1","topic":"/topic/news"}"#)
            #expect(again.status == .ok)
            #expect(again.text == #"{"duplicate":true,"topic":"/topic/news"}"#)
        }
        #expect(try await subscriber.received().map(\.messageID) == ["t1-1"])
    }
}
