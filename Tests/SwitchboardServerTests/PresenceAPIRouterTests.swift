import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import SwitchboardAuth
import SwitchboardCore
import SwitchboardRoutes
import SwitchboardWire
import Testing

@testable import SwitchboardServer

/// `GET /api/presence/{destination}` and `GET /api/users/{user}/presence` through the router,
/// on a fake presence source: answers, API key scopes, and 4xx JSON naming the field.
@Suite struct PresenceAPIRouterTests {
    struct FakeSource: PresenceSource {
        var failing = false
        func userPresence(_ user: String) async throws -> UserPresence {
            if failing { throw RedisDown() }
            return user == "alice" ? UserPresence(online: true, sessions: ["s2": "gw1", "s1": "gw1", "s3": "gw2"]) : UserPresence(online: false, sessions: [:])
        }
        func destinationPresence(_ destination: String, limit: Int) async throws -> DestinationPresence {
            if failing { throw RedisDown() }
            return destination == "/topic/room" ? DestinationPresence(subscribers: 3, users: ["bob", "alice"]) : DestinationPresence(subscribers: 0, users: [])
        }
    }
    struct RedisDown: Error {}

    static let publisherKey = APIKeyStore.Key(name: "publisher", sha256: APIKeyStore.hash("pub-secret"), scopes: ["/topic/"])
    static let supportKey = APIKeyStore.Key(name: "support", sha256: APIKeyStore.hash("sup-secret"), scopes: ["/topic/support.", "/user/"])

    static func app(source: (any PresenceSource)?, keys: [APIKeyStore.Key] = []) -> some ApplicationProtocol {
        let hub = FanoutHub()
        let services = GatewayServices(
            configuration: SessionConfiguration(), hub: hub, engine: InMemoryEngine(hub: hub), routes: RouteTable(), instanceID: "t1",
            logger: Logger(label: "test"))
        let publisher = NotificationPublisher(services: services, apiKeys: APIKeyStore(keys: keys), maxBodyBytes: 4096, maxBatchItems: 3)
        let router = Router()
        PresenceAPI(publisher: publisher, policy: services.policy, source: source, maxUsers: 10).register(on: router)
        return Application(router: router)
    }

    static func get(_ client: some TestClientProtocol, _ uri: String, key: String? = nil) async throws -> TestResponse {
        var headers: HTTPFields = [:]
        if let key { headers[.authorization] = "Bearer \(key)" }
        return try await client.execute(uri: uri, method: .get, headers: headers)
    }

    @Test func destinationAndUserPresence() async throws {
        try await Self.app(source: FakeSource()).test(.router) { client in
            for uri in ["/api/presence/topic/room", "/api/presence/%2Ftopic%2Froom"] {
                let r = try await Self.get(client, uri)
                #expect(r.status == .ok)
                #expect(r.text == #"{"destination":"/topic/room","subscribers":3,"users":["alice","bob"]}"#)
            }
            let alice = try await Self.get(client, "/api/users/alice/presence")
            #expect(alice.text == #"{"instances":{"gw1":["s1","s2"],"gw2":["s3"]},"online":true,"user":"alice"}"#)
            let nobody = try await Self.get(client, "/api/users/nobody/presence")
            #expect(nobody.text == #"{"instances":{},"online":false,"user":"nobody"}"#)
        }
    }

    @Test func badRequestsAreRefusedWithTheFieldAtFault() async throws {
        try await Self.app(source: FakeSource(), keys: [Self.publisherKey, Self.supportKey]).test(.router) { client in
            let cases: [(String, String?, HTTPResponse.Status, String?)] = [
                ("/api/presence/topic/room", nil, .unauthorized, "Authorization"),
                ("/api/presence/topic/room", "wrong", .unauthorized, "Authorization"),
                ("/api/presence/queue/x", "pub-secret", .badRequest, "destination"),
                ("/api/presence/app/greet", "pub-secret", .badRequest, "destination"),
                ("/api/presence/", "pub-secret", .badRequest, "destination"),
                ("/api/presence/topic/room", "sup-secret", .forbidden, "destination"),
                ("/api/users/alice/presence", "pub-secret", .forbidden, "user"),
                ("/api/presence", "pub-secret", .badRequest, "destination"),
                ("/api/presence/topic/a*b", "pub-secret", .badRequest, "destination"),
                ("/api/presence/topic/%ZZ", "pub-secret", .badRequest, "destination"),
                ("/api/presence/topic/a%01b", "pub-secret", .badRequest, "destination"),
                ("/api/presence/topic/" + String(repeating: "x", count: 1100), "pub-secret", .badRequest, "destination"),
                ("/api/presence/~presence/topic/room", "pub-secret", .badRequest, "destination"),
                ("/api/users/a%0Ab/presence", "sup-secret", .badRequest, "user"),
            ]
            for (uri, key, status, field) in cases {
                let r = try await Self.get(client, uri, key: key)
                #expect(r.status == status, "\(uri)")
                #expect(r.headers[.contentType] == "application/json")
                #expect(r.object?["field"] as? String == field, "\(uri): \(r.text)")
                #expect(r.object?["error"] is String)
            }
            let allowed = try await Self.get(client, "/api/presence/topic/support.x", key: "sup-secret")
            #expect(allowed.status == .ok)
            let user = try await Self.get(client, "/api/users/alice/presence", key: "sup-secret")
            #expect(user.status == .ok)
        }
    }

    @Test func theErrorSaysWhatIsWrongWithTheDestination() async throws {
        try await Self.app(source: FakeSource()).test(.router) { client in
            let cases = [
                ("/api/presence/", "missing destination: GET /api/presence/<destination>"),
                ("/api/presence/queue/x", "destination /queue/x is not a broker destination (presence is kept for /topic/)"),
                ("/api/presence/topic/a*b", "invalid destination /topic/a*b: invalid wildcard in '/topic/a*b': '*' and '**' must be whole segments and '**' must be last"),
                ("/api/presence/topic/%ZZ", "destination is not valid percent-encoding: /topic/%ZZ"),
                ("/api/presence/topic/a%0Ab", "destination must not contain control characters"),
                ("/api/presence/topic/" + String(repeating: "x", count: 1100), "destination must be at most 1024 bytes"),
                ("/api/users/a%0Ab/presence", "user must not contain control characters"),
                ("/api/users/" + String(repeating: "u", count: 1025) + "/presence", "user must be at most 1024 bytes"),
            ]
            for (uri, message) in cases {
                let r = try await Self.get(client, uri)
                #expect(r.status == .badRequest, "\(uri)")
                #expect(r.object?["error"] as? String == message, "\(uri): \(r.text)")
            }
            // Nobody subscribed is no error; a wildcard subscription counts under its pattern.
            #expect(try await Self.get(client, "/api/presence/topic/empty").status == .ok)
            #expect(try await Self.get(client, "/api/presence/topic/*").status == .ok)
        }
    }

    @Test func presenceOffOrUnavailable() async throws {
        try await Self.app(source: nil).test(.router) { client in
            let r = try await Self.get(client, "/api/presence/topic/room")
            #expect(r.status == .notFound && r.text.contains("events.enabled"))
        }
        try await Self.app(source: FakeSource(failing: true)).test(.router) { client in
            let r = try await Self.get(client, "/api/users/alice/presence")
            #expect(r.status == .serviceUnavailable)
        }
    }
}
