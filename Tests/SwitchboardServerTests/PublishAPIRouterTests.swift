import Foundation
import HTTPTypes
import HummingbirdTesting
import NIOCore
import SwitchboardAPIModel
import SwitchboardAuth
import SwitchboardCore
import SwitchboardWire
import Testing

@testable import SwitchboardServer

/// The publish routes of ``PublishAPI`` through the Hummingbird router.
@Suite struct PublishAPIRouterTests {
    @Test func notificationIsPublishedToTheTopicsSubscribers() async throws {
        let h = APIRouterHarness()
        let subscriber = try await h.subscribe("/topic/news")
        try await h.test { client in
            let response = try await client.post(
                "/api/notification", #"{"topic":"/topic/news","message":"hello","headers":{"x-k":"v","message-id":"forged"}}"#)
            #expect(response.status == .ok)
            #expect(response.headers[.contentType] == "application/json")
            #expect(response.headers[.accessControlAllowOrigin] == nil, "no Origin, no CORS answer")
            #expect(response.text == #"{"id":"t1-1","topic":"/topic/news"}"#)
        }
        let received = try await subscriber.received()
        #expect(received.map(\.destination) == ["/topic/news"])
        #expect(received.map(\.messageID) == ["t1-1"])
        #expect(received.first.map { String(buffer: $0.body) } == "hello")
        #expect(received.first?.headers == ["x-k": "v", "content-type": "text/plain"])
    }

    @Test func userNotificationGoesToThatUsersDestination() async throws {
        let h = APIRouterHarness()
        let alice = try await h.subscribe("/~user/alice/queue/inbox")
        let bob = try await h.subscribe("/~user/bob/queue/inbox")
        try await h.test { client in
            let response = try await client.post("/api/users/alice/notification", #"{"topic":"/queue/inbox","message":"for alice","contentType":"text/markdown"}"#)
            #expect(response.status == .ok)
            let answer = try JSONDecoder().decode(NotificationAnswer.self, from: Data(response.body.readableBytesView))
            #expect(answer == NotificationAnswer(id: "t1-1", topic: "/queue/inbox", user: "alice"))

            let refused = try await client.post("/api/users/alice/notification", #"{"topic":"/topic/news","message":"x"}"#)
            #expect(refused.status == .badRequest)
            #expect(refused.text == #"{"error":"field 'topic' must start with /queue/ for a user destination","field":"topic"}"#)
        }
        try await h.test { client in
            // A `user` field on a single publish was ignored: the message went to the path's
            // user (or, on /api/notification, to every subscriber of the topic).
            for (path, body) in [
                ("/api/users/alice/notification", #"{"topic":"/queue/inbox","user":"bob","message":"x"}"#),
                ("/api/notification", #"{"topic":"/topic/news","user":"bob","message":"x"}"#),
            ] {
                let response = try await client.post(path, body)
                #expect(response.status == .badRequest, "\(path)")
                #expect(response.object?["field"] as? String == "user", "\(path)")
            }
            // The path's own user may be repeated in the body.
            #expect(try await client.post("/api/users/alice/notification", #"{"topic":"/queue/inbox","user":"alice","message":"again"}"#).status == .ok)
            // A user destination no client could subscribe to (`/user` + the topic is over the
            // name limit) was published, and stored, for nobody.
            let fits = "/queue/" + String(repeating: "q", count: 1024 - 5 - 7)
            let fitting = try await client.post("/api/users/alice/notification", #"{"topic":"\#(fits)","message":"fits"}"#)
            #expect(fitting.status == .ok, "\(fitting.text)")
            let long = try await client.post("/api/users/alice/notification", #"{"topic":"\#(fits)q","message":"x"}"#)
            #expect(long.status == .badRequest && long.object?["field"] as? String == "topic", "\(long.text)")
        }
        let received = try await alice.received()
        #expect(received.map { String(buffer: $0.body) } == ["for alice", "again"])
        #expect(received.first?.headers["content-type"] == "text/markdown")
        #expect(try await bob.received().isEmpty)
    }

    @Test func invalidRequestsAreRefusedWithTheFieldAtFault() async throws {
        let h = APIRouterHarness(maxBodyBytes: 64)
        let subscriber = try await h.subscribe("/topic/**")
        try await h.test { client in
            let cases: [(String, HTTPResponse.Status, String?)] = [
                ("[]", .badRequest, nil),
                (#"{"message":"m"}"#, .badRequest, "topic"),
                (#"{"topic":"/queue/x","message":"m"}"#, .badRequest, "topic"),
                (#"{"topic":"/topic/*","message":"m"}"#, .badRequest, "topic"),
                (#"{"topic":"/topic/a"}"#, .badRequest, "message"),
                (#"{"topic":"/topic/a","message":"m","headers":{"n":1}}"#, .badRequest, "headers"),
                (#"{"topic":"/topic/a","message":"\#(String(repeating: "x", count: 64))"}"#, .contentTooLarge, nil),
            ]
            for (body, status, field) in cases {
                let response = try await client.post("/api/notification", body)
                #expect(response.status == status, "\(body)")
                #expect(response.object?["field"] as? String == field, "\(body)")
                #expect(response.object?["error"] is String, "\(body)")
            }
        }
        #expect(try await subscriber.received().isEmpty)
    }

    @Test func apiKeysAreCheckedAndScoped() async throws {
        let keys = [APIKeyStore.Key(name: "news", sha256: APIKeyStore.hash("k-news"), scopes: ["/topic/news."])]
        let h = APIRouterHarness(keys: keys)
        let subscriber = try await h.subscribe("/topic/**")
        try await h.test { client in
            let body = #"{"topic":"/topic/news.eu","message":"m"}"#
            let anonymous = try await client.post("/api/notification", body)
            #expect(anonymous.status == .unauthorized)
            #expect(anonymous.object?["field"] as? String == "Authorization")
            let wrong = try await client.post("/api/notification", body, headers: [.authorization: "Bearer k-other"])
            #expect(wrong.status == .unauthorized)
            let notBearer = try await client.post("/api/notification", body, headers: [.authorization: "k-news"])
            #expect(notBearer.status == .unauthorized)

            let outOfScope = try await client.post("/api/notification", #"{"topic":"/topic/sports","message":"m"}"#, headers: [.authorization: "Bearer k-news"])
            #expect(outOfScope.status == .forbidden)
            #expect(outOfScope.text == #"{"error":"API key 'news' may not publish to /topic/sports","field":"topic"}"#)

            let allowed = try await client.post("/api/notification", body, headers: [.authorization: "Bearer k-news"])
            #expect(allowed.status == .ok)
        }
        #expect(try await subscriber.received().map(\.destination) == ["/topic/news.eu"])
    }

    @Test func batchPublishesEachValidItemAndReportsTheRest() async throws {
        let h = APIRouterHarness(maxBatchItems: 3)
        let subscriber = try await h.subscribe("/topic/**")
        try await h.test { client in
            let mixed = try await client.post(
                "/api/notifications", #"[{"topic":"/topic/a","message":"1"},{"topic":"/nowhere","message":"2"},{"topic":"/topic/b","message":"3"}]"#)
            #expect(mixed.status.code == 207)
            let answer = try JSONDecoder().decode(BatchAnswer.self, from: Data(mixed.body.readableBytesView))
            #expect(answer.published == 2 && answer.failed == 1)
            #expect(answer.results.first == .published(NotificationAnswer(id: "t1-1", topic: "/topic/a", user: nil)))
            guard case .failed(let failure) = answer.results[1] else {
                Issue.record("item 1 should have failed: \(answer.results[1])")
                return
            }
            #expect(failure.status == 400 && failure.field == "topic")

            let all = try await client.post("/api/notifications", #"[{"topic":"/topic/c","message":"4"}]"#)
            #expect(all.status == .ok)
            let tooMany = try await client.post("/api/notifications", "[" + Array(repeating: #"{"topic":"/topic/a","message":"m"}"#, count: 4).joined(separator: ",") + "]")
            #expect(tooMany.status == .contentTooLarge)
            #expect(try await client.post("/api/notifications", "[]").status == .badRequest)
        }
        let received = try await subscriber.received()
        #expect(received.map(\.destination) == ["/topic/a", "/topic/b", "/topic/c"])
        #expect(received.map { String(buffer: $0.body) } == ["1", "3", "4"])
    }

    @Test func otherMethodsAndPathsAreNotPublishes() async throws {
        let h = APIRouterHarness()
        let subscriber = try await h.subscribe("/topic/**")
        try await h.test { client in
            let get = try await client.execute(uri: "/api/notification", method: .get)
            #expect(get.status == .notFound || get.status == .methodNotAllowed)
            let unknown = try await client.post("/api/notify", #"{"topic":"/topic/a","message":"m"}"#)
            #expect(unknown.status == .notFound)
        }
        #expect(try await subscriber.received().isEmpty)
    }
}
