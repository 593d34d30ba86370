import HTTPTypes
import HummingbirdTesting
import SwitchboardAuth
import Testing

@testable import SwitchboardServer

/// `Authorization: Bearer <key>` with the scheme in any case (RFC 9110 §11.1: the scheme is
/// case-insensitive) and spaces around the key, on both paths.
@Suite struct BearerSchemeTests {
    @Test(arguments: [
        ("bearer s3cret", "s3cret"), ("BEARER s3cret", "s3cret"), ("Bearer   s3cret  ", "s3cret"), ("bEaReR\ts3cret", "s3cret"),
        ("Bearer s3 cret", "s3 cret"),
    ])
    func theBearerSchemeIsReadInAnyCase(header: String, token: String) {
        #expect(NotificationPublisher.bearerToken(header) == token)
    }

    @Test(arguments: ["Bearers3cret", "Bearer", "Bearer   ", "Basic s3cret", "s3cret", "", "Bearé s3cret"])
    func otherSchemesOrNoTokenAreNotBearerTokens(header: String) {
        #expect(NotificationPublisher.bearerToken(header) == nil)
    }

    @Test func aLowerCaseBearerIsAcceptedOnBothPaths() async throws {
        let key = APIKeyStore.Key(name: "backend", sha256: APIKeyStore.hash("s3cret"), scopes: ["/topic/"])
        let handler = try PublishHandlerHarness(keys: [key])
        try handler.publish("/topic/a", "1", headers: ["host": "x", "authorization": "bearer s3cret"])
        try handler.publish("/topic/a", "2", headers: ["host": "x", "authorization": "bearer wrong"])
        #expect(try handler.responses().map(\.status) == [200, 401])

        let router = APIRouterHarness(keys: [key])
        try await router.test { client in
            let body = #"{"topic":"/topic/a","message":"m"}"#
            var statuses: [HTTPResponse.Status] = []
            for header in ["bearer s3cret", "BEARER  s3cret ", "Basic s3cret"] {
                statuses.append(try await client.post("/api/notification", body, headers: [.authorization: header]).status)
            }
            #expect(statuses == [.ok, .ok, .unauthorized])
        }
    }
}
