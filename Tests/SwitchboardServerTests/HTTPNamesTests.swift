import Foundation
import HTTPTypes
import HummingbirdTesting
import NIOCore
import SwitchboardAPIModel
import SwitchboardAuth
import Testing

@testable import SwitchboardServer

/// Names the publish API refuses on both paths (the user in the path, the topic, `headers`):
/// a 400 naming the field, nothing published.
@Suite struct HTTPNamesTests {
    static let longUser = String(repeating: "u", count: 1025)

    @Test func aUserNameWithControlCharactersOrOver1024BytesIs400OnTheFastPath() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine)
        try h.publish("/queue/a", "1", path: "/api/users/a%0Ab/notification")
        try h.publish("/queue/a", "2", path: "/api/users/\(Self.longUser)/notification")
        let answers = try h.responses()
        #expect(answers.map(\.status) == [400, 400])
        let errors = answers.map { try? JSONDecoder().decode(APIErrorBody.self, from: Data($0.body.utf8)) }
        #expect(
            errors == [
                APIErrorBody(error: "user must not contain control characters", field: "user"),
                APIErrorBody(error: "user must be at most 1024 bytes", field: "user"),
            ])
        #expect(engine.pending.isEmpty)
    }

    @Test func namesAndHeadersAreRefusedByTheRouterNamingTheField() async throws {
        let h = APIRouterHarness()
        let subscriber = try await h.subscribe("/topic/**")
        let queue = try await h.subscribe("/~user/**")
        let longTopic = "/topic/" + String(repeating: "t", count: 1018)
        try await h.test { client in
            let cases: [(String, String, String)] = [
                ("/api/users/a%0Ab/notification", #"{"topic":"/queue/a","message":"m"}"#, "user"),
                ("/api/users/\(Self.longUser)/notification", #"{"topic":"/queue/a","message":"m"}"#, "user"),
                ("/api/notification", #"{"topic":"\#(longTopic)","message":"m"}"#, "topic"),
                ("/api/notification", #"{"topic":"/topic/a","message":"m","headers":{"":"x"}}"#, "headers"),
                ("/api/notification", #"{"topic":"/topic/a","message":"m","headers":{"x-a":"1\u00002"}}"#, "headers"),
            ]
            for (uri, body, field) in cases {
                let response = try await client.post(uri, body)
                #expect(response.status == .badRequest, "\(uri) \(body)")
                #expect(response.object?["field"] as? String == field, "\(uri): \(response.text)")
            }
            let batch = try await client.post("/api/notifications", #"[{"topic":"/queue/a","user":"a\u0007","message":"m"}]"#)
            let answer = try JSONDecoder().decode(BatchAnswer.self, from: Data(batch.body.readableBytesView))
            #expect(answer.results == [.failed(APIErrorBody(error: "field 'user' must not contain control characters", field: "user", status: 400))])
        }
        #expect(try await subscriber.received().isEmpty)
        #expect(try await queue.received().isEmpty)
    }
}
