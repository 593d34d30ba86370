import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Redis
import STOMPCodec
import SwitchboardAPIModel
import SwitchboardAuth
import SwitchboardCore
import SwitchboardRedis
import SwitchboardRoutes
import SwitchboardWire

/// The HTTP API backends use to push to browsers, compatible with the seed articles:
/// `POST /api/notification` with `{"topic","message"}` (optional `headers`, `contentType`),
/// `POST /api/users/{user}/notification`, and the batch `POST /api/notifications` (an array of
/// such objects, each with an optional `user`). Plain publish requests are usually answered by
/// ``HTTPPublishHandler`` on the event loop before they reach these routes; the routes serve
/// the rest (CORS requests, requests pipelined behind another route's) with the same
/// ``NotificationPublisher``, so the answers are the same.
struct PublishAPI: Sendable {
    let services: GatewayServices
    let publisher: NotificationPublisher
    let eventLoopGroup: any EventLoopGroup
    let admission: ConnectionAdmission
    /// The consumer groups of the stream routes: not ready while one is unverified.
    var streamGroups: [RedisStreamGroups] = []

    func register(on router: Router<BasicRequestContext>) {
        router.post("/api/notification") { request, context in
            try await self.publish(request, context: context, toUser: nil)
        }
        router.post("/api/users/:user/notification") { request, context in
            guard let raw = context.parameters.get("user"), let user = raw.removingPercentEncoding, !user.isEmpty else {
                throw NotificationPublisher.Failure(status: .badRequest, message: "missing user in path", field: "user")
            }
            return try await self.publish(request, context: context, toUser: user)
        }
        router.post("/api/notifications") { request, context in
            try await self.publishBatch(request, context: context)
        }
        // `HEAD` too, as load balancers' health checks may ask (the same status and headers,
        // no body).
        for method in [HTTPRequest.Method.get, .head] {
            router.on("/health", method: method) { _, _ in
                self.health()
            }
            router.on("/health/live", method: method) { _, _ in
                Self.json(ReadinessAnswer(status: "live"))
            }
            router.on("/health/ready", method: method) { _, _ in
                self.readiness()
            }
        }
    }

    static func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: APIJSON.body(value)))
    }

    private func body(of request: Request, key: APIKeyStore.Key?) async throws -> ByteBuffer {
        try await Self.body(of: request, upTo: publisher.maxBodyBytes)
    }

    /// The body of `request`, at most `limit` bytes. Beyond it a JSON 413 that closes the
    /// connection (``NotificationPublisher/Failure/bodyTooLarge(limit:)``), as soon as the
    /// `Content-Length` or the bytes received exceed it, as ``HTTPPublishHandler`` answers.
    static func body(of request: Request, upTo limit: Int) async throws(NotificationPublisher.Failure) -> ByteBuffer {
        if NotificationPublisher.exceeds(contentLength: request.headers[.contentLength], limit: limit) {
            throw .bodyTooLarge(limit: limit)
        }
        do {
            return try await request.body.collect(upTo: limit)
        } catch is NIOTooManyBytesError {
            throw .bodyTooLarge(limit: limit)
        } catch {
            // Not a size: the body ended early (the client closed), or its stream failed.
            throw NotificationPublisher.Failure(
                status: .badRequest, message: "request body could not be read: \(error)", field: nil, closesConnection: true)
        }
    }

    static let idempotencyKeyField = HTTPField.Name("Idempotency-Key")!

    /// Publishes a notification to a topic, or to user `toUser` at a user destination (`/queue/…`).
    func publish(_ request: Request, context: BasicRequestContext, toUser: String?) async throws -> Response {
        let key = try publisher.authenticate(authorization: request.headers[.authorization])
        let bytes = try await body(of: request, key: key)
        let prepared = try publisher.prepare(body: bytes, key: key, toUser: toUser, idempotencyHeaders: request.headers[values: Self.idempotencyKeyField])
        return Self.json(try await publisher.publish(prepared, on: eventLoopGroup.any()).get())
    }

    /// Publishes a batch; 200 when every item was published, 207 when some were not.
    func publishBatch(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let key = try publisher.authenticate(authorization: request.headers[.authorization])
        let bytes = try await body(of: request, key: key)
        let items = try publisher.prepareBatch(body: bytes, key: key, idempotencyHeaders: request.headers[values: Self.idempotencyKeyField])
        let answer = try await publisher.publishBatch(items, on: eventLoopGroup.any()).get()
        return Self.json(answer, status: NotificationPublisher.status(of: answer))
    }

    /// Ready: accepting sessions (not draining) and, in Redis mode, both Redis connections up (on
    /// a cluster: the cluster answers with `cluster_state:ok`),
    /// every configured consumer group verified on the current connection, and the delivery
    /// canary on time (the cross-instance path delivers).
    func readiness() -> Response {
        let answer = ReadinessCheck(services: services, admission: admission, streamGroups: streamGroups).answer()
        return Self.json(answer.body, status: answer.status)
    }

    func health() -> Response {
        let stats = services.stats
        let redis = (services.engine as? RedisEngine).map { engine in
            HealthAnswer.Redis(
                commands: engine.connectionStateDescription(.commands), subscriptions: engine.connectionStateDescription(.subscriptions),
                reconnects: engine.redis.reconnectCount, canaryAgeSeconds: engine.canary?.ownAge, peerCanaryAgeSeconds: engine.canary?.peers)
        }
        return Self.json(
            HealthAnswer(
                engine: services.engine.name, instance: services.instanceID, connections: stats.connectionsOpen.load(),
                sessions: stats.sessionsConnected.load(), subscriptions: stats.subscriptions.load(),
                destinations: services.hub.activeDestinationCount, redis: redis))
    }
}

/// What `GET /health/ready` answers: 200 `ready`, or 503 `not ready` with the reasons (draining;
/// in Redis mode Redis unreachable, a consumer group unverified, the delivery canary late).
/// Served on the event loop by ``HTTPPublishHandler`` and by the router.
struct ReadinessCheck: Sendable {
    let services: GatewayServices
    let admission: ConnectionAdmission
    var streamGroups: [RedisStreamGroups] = []

    func answer() -> (status: HTTPResponse.Status, body: ReadinessAnswer) {
        var reasons: [String] = []
        if !admission.admitsConnections { reasons.append("draining") }
        if let engine = services.engine as? RedisEngine {
            reasons += engine.redisProblems
            reasons += streamGroups.compactMap(\.notReadyReason)
            if let late = engine.canary?.lateReason { reasons.append(late) }
        }
        if reasons.isEmpty { return (.ok, ReadinessAnswer(status: "ready")) }
        return (.serviceUnavailable, ReadinessAnswer(status: "not ready", reasons: reasons))
    }
}

/// The router answers a failure as `{"error": "...", "field": "..."}` with its status.
extension NotificationPublisher.Failure: HTTPResponseError {
    func response(from request: Request, context: some RequestContext) throws -> Response {
        var response = PublishAPI.json(body, status: status)
        // ``HTTPPublishHandler`` closes the connection after it (the body is not read on).
        if closesConnection { response.headers[.connection] = "close" }
        return response
    }
}
