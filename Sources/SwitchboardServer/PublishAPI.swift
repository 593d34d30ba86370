import Foundation
import Hummingbird
import NIOCore
import RedisClient
import STOMPCodec
import SwitchboardAPIModel
import SwitchboardAuth
import SwitchboardCore
import SwitchboardRedis

/// The HTTP API backends use to push to browsers, compatible with the seed articles:
/// `POST /api/notification` with `{"topic","message"}` (optional `headers`, `contentType`).
struct PublishAPI: Sendable {
    let services: GatewayServices
    let maxBodyBytes: Int
    let eventLoopGroup: any EventLoopGroup
    let admission: ConnectionAdmission
    let apiKeys: APIKeyStore
    /// The consumer groups of the stream routes: not ready while one is unverified.
    var streamGroups: [RedisStreamGroups] = []

    func register(on router: Router<BasicRequestContext>) {
        router.post("/api/notification") { request, context in
            try await self.publish(request, context: context, toUser: nil)
        }
        router.post("/api/users/:user/notification") { request, context in
            guard let raw = context.parameters.get("user"), let user = raw.removingPercentEncoding, !user.isEmpty else {
                throw APIError(status: .badRequest, message: "missing user in path", field: "user")
            }
            return try await self.publish(request, context: context, toUser: user)
        }
        router.get("/health") { _, _ in
            self.health()
        }
        router.get("/health/live") { _, _ in
            Self.json(["status": "live"])
        }
        router.get("/health/ready") { _, _ in
            self.readiness()
        }
    }

    /// An HTTP error answered as `{"error": "...", "field": "..."}`.
    struct APIError: Error, HTTPResponseError {
        var status: HTTPResponse.Status
        var message: String
        var field: String?

        func response(from request: Request, context: some RequestContext) throws -> Response {
            var object: [String: Any] = ["error": message]
            object["field"] = field ?? NSNull()
            return PublishAPI.json(object, status: status)
        }
    }

    static func json(_ object: [String: Any], status: HTTPResponse.Status = .ok) -> Response {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// The API key of the request; 401 when keys are configured and none matches.
    func authenticate(_ request: Request) throws -> APIKeyStore.Key? {
        guard !apiKeys.isEmpty else { return nil }
        guard let header = request.headers[.authorization], header.hasPrefix("Bearer "),
            let key = apiKeys.key(for: String(header.dropFirst("Bearer ".count)))
        else {
            throw APIError(status: .unauthorized, message: "missing or invalid API key: send 'Authorization: Bearer <key>'", field: "Authorization")
        }
        return key
    }

    /// Publishes a notification to a topic, or to user `toUser` at a user destination (`/queue/…`).
    func publish(_ request: Request, context: BasicRequestContext, toUser: String?) async throws -> Response {
        let key = try authenticate(request)
        let bytes: ByteBuffer
        do {
            bytes = try await request.body.collect(upTo: maxBodyBytes)
        } catch {
            throw APIError(status: .contentTooLarge, message: "request body larger than \(maxBodyBytes) bytes", field: nil)
        }
        let parsed: NotificationRequest
        do {
            let config = services.configuration
            parsed = try NotificationRequest.parse(bytes) { topic in
                if toUser != nil {
                    return config.userPrefix != nil && config.userDestinationPrefixes.contains(where: topic.hasPrefix)
                        ? nil : "must start with \(config.userDestinationPrefixes.joined(separator: " or ")) for a user destination"
                }
                return config.isBrokerDestination(topic) ? nil : "must start with \(config.brokerPrefixes.joined(separator: " or "))"
            }
        } catch {
            throw APIError(status: .init(code: error.status), message: error.message, field: error.field)
        }
        if let key, !APIKeyStore.allows(key, parsed.topic) {
            throw APIError(status: .forbidden, message: "API key '\(key.name)' may not publish to \(parsed.topic)", field: "topic")
        }
        let destination = toUser.map { UserDestinations.routing(user: $0, destination: parsed.topic) } ?? parsed.topic
        let message = PublishedMessage(destination: destination, messageID: services.messageIDs.next(), headers: parsed.headers, body: parsed.body)
        let loop = eventLoopGroup.any()
        do {
            try await services.engine.publish(message, on: loop).get()
        } catch {
            throw APIError(status: .serviceUnavailable, message: "publish failed: \(error)", field: nil)
        }
        var answer: [String: Any] = ["id": message.messageID, "topic": parsed.topic]
        if let toUser { answer["user"] = toUser }
        return Self.json(answer)
    }

    /// Ready: accepting sessions (not draining) and, in Redis mode, both Redis connections up and
    /// every configured consumer group verified on the current connection.
    func readiness() -> Response {
        var reasons: [String] = []
        if !admission.admitsConnections { reasons.append("draining") }
        if let engine = services.engine as? RedisEngine {
            for role in [RedisConnectionRole.commands, .subscriptions] where engine.client.connectionState(role) != .connected {
                reasons.append("redis \(role) connection is \(engine.client.connectionState(role))")
            }
            reasons += streamGroups.compactMap(\.notReadyReason)
        }
        if reasons.isEmpty { return Self.json(["status": "ready"]) }
        return Self.json(["status": "not ready", "reasons": reasons], status: .serviceUnavailable)
    }

    func health() -> Response {
        let stats = services.stats
        var redis: Any = NSNull()
        if let engine = services.engine as? RedisEngine {
            redis =
                [
                    "commands": "\(engine.client.connectionState(.commands))",
                    "subscriptions": "\(engine.client.connectionState(.subscriptions))",
                    "reconnects": engine.client.reconnectCount,
                ] as [String: Any]
        }
        return Self.json([
            "redis": redis,
            "status": "ok",
            "engine": services.engine.name,
            "instance": services.instanceID,
            "connections": stats.connectionsOpen.load(),
            "sessions": stats.sessionsConnected.load(),
            "subscriptions": stats.subscriptions.load(),
            "destinations": services.hub.activeDestinationCount,
        ])
    }
}
