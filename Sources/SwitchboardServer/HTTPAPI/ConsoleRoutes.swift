import HTTPTypes
import Hummingbird
import NIOCore
import Redis
import SwitchboardAPIModel
import SwitchboardAuth
import SwitchboardConsole
import SwitchboardCore
import SwitchboardRedis
import SwitchboardWire

/// Serves the web console's files under `path` (e.g. `/console`, `/console/stomp.js`).
struct ConsoleRoutes: Sendable {
    let path: String
    let services: GatewayServices
    /// The configured inbound Pub/Sub channels: the only ones the console may publish to.
    let inboundChannels: [String]
    /// The API's keys: with keys configured, a Redis publish needs one (see ``redisPublish(_:)``).
    let publisher: NotificationPublisher

    func register(on router: Router<BasicRequestContext>) {
        let base = path.hasSuffix("/") ? String(path.dropLast()) : path
        router.get(RouterPath(base)) { _, _ in
            // Relative asset URLs resolve against the page's directory.
            Response(status: .found, headers: [.location: base + "/index.html"])
        }
        // The seeds' "Redis Pub/Sub to topic" test, from the console: PUBLISH on a configured
        // inbound channel (never anywhere else in Redis).
        router.post("/api/console/redis-publish") { request, _ in
            try await self.redisPublish(request)
        }
        router.get(RouterPath(base + "/**")) { request, _ in
            let rest = String(request.uri.path.dropFirst(base.count + 1))
            return Self.serve(rest)
        }
    }

    /// `POST /api/console/redis-publish`. A message on an inbound channel reaches whatever
    /// destination (or user) it names, so with API keys configured it needs a key that may
    /// publish to every broker prefix and every user destination prefix; without one it would
    /// get around the keys' scopes.
    func redisPublish(_ request: Request) async throws -> Response {
        let key = try publisher.authenticate(authorization: request.headers[.authorization])
        if let key {
            // A message on an inbound channel may name a user too (`"user"`): the user
            // destinations' prefixes count as well.
            let configuration = services.policy.configuration
            let prefixes = configuration.brokerPrefixes + (configuration.userPrefix == nil ? [] : configuration.userDestinationPrefixes)
            if let denied = prefixes.first(where: { !APIKeyStore.allows(key, $0) }) {
                throw NotificationPublisher.Failure(
                    status: .forbidden,
                    message: "API key '\(key.name)' may not publish to Redis: a message on an inbound channel may go to any "
                        + "destination, and the key may not publish to \(denied)",
                    field: "Authorization")
            }
        }
        // Up to the API's body limit (`http.max-body-bytes`), with the publish API's JSON 413.
        let bytes = try await PublishAPI.body(of: request, upTo: publisher.maxBodyBytes)
        guard let engine = services.engine as? RedisEngine else {
            return PublishAPI.json(APIErrorBody(error: "needs the redis engine (set redis.url)", field: nil), status: .conflict)
        }
        let publish: ConsoleRedisPublishRequest
        do throws(APIRequestError) {
            publish = try ConsoleRedisPublishRequest.parse(bytes) { inboundChannels.contains($0) }
        } catch {
            return PublishAPI.json(APIErrorBody(error: error.message, field: error.field), status: .init(code: error.status))
        }
        do {
            let receivers = try await engine.redis.execute(PUBLISH(channel: publish.channel, message: .string(publish.message)))
            return PublishAPI.json(ConsoleRedisPublishAnswer(channel: publish.channel, receivers: receivers))
        } catch {
            return PublishAPI.json(APIErrorBody(error: "redis publish failed: \(error)", field: nil), status: .serviceUnavailable)
        }
    }

    static func serve(_ name: String) -> Response {
        guard let asset = ConsoleAssets.asset(name) else {
            return PublishAPI.json(APIErrorBody(error: "no console file '\(name)'", field: "path"), status: .notFound)
        }
        return Response(status: .ok, headers: securityHeaders(contentType: asset.contentType), body: .init(byteBuffer: asset.body))
    }

    /// The console's own files only (scripts, styles), its WebSockets and API calls to the
    /// gateway, never inside another site's frame (which could click Publish for its user).
    static let contentSecurityPolicy =
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"

    static func securityHeaders(contentType: String) -> HTTPFields {
        [
            .contentType: contentType, .cacheControl: "no-cache", .contentSecurityPolicy: contentSecurityPolicy,
            HTTPField.Name("X-Content-Type-Options")!: "nosniff", HTTPField.Name("X-Frame-Options")!: "DENY",
        ]
    }
}
