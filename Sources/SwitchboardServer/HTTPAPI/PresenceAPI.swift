import Foundation
import Hummingbird
import NIOCore
import SwitchboardAPIModel
import SwitchboardAuth
import SwitchboardCore
import SwitchboardRedis
import SwitchboardWire

/// Where presence is read from (Redis with `events.enabled`, the process itself with the
/// embedded broker's events webhook; a fake in tests).
package protocol PresenceSource: Sendable {
    func userPresence(_ user: String) async throws -> UserPresence
    func destinationPresence(_ destination: String, limit: Int) async throws -> DestinationPresence
}

extension RedisLifecycle: PresenceSource {}

/// `GET /api/presence/{destination}` and `GET /api/users/{user}/presence`: presence across every
/// instance, kept by the lifecycle functions (of this instance, on the embedded broker). API
/// keys are checked like publishing: the key must allow the destination (or `/user/<user>` for
/// a user's presence).
struct PresenceAPI: Sendable {
    let publisher: NotificationPublisher
    let policy: SessionPolicy
    /// Nil when events are off: the routes answer 404.
    let source: (any PresenceSource)?
    let maxUsers: Int

    typealias Failure = NotificationPublisher.Failure

    struct DestinationAnswer: Codable, Equatable {
        var destination: String
        var subscribers: Int
        var users: [String]
    }

    struct UserAnswer: Codable, Equatable {
        var user: String
        var online: Bool
        /// Instance → its sessions of the user.
        var instances: [String: [String]]
    }

    func register(on router: Router<BasicRequestContext>) {
        for path in ["/api/presence", "/api/presence/**"] {
            router.get(RouterPath(path)) { request, _ in
                try await self.destination(path: request.uri.path, authorization: request.headers[.authorization])
            }
        }
        router.get("/api/users/:user/presence") { request, context in
            let user = context.parameters.get("user")?.removingPercentEncoding ?? ""
            return try await self.user(user, authorization: request.headers[.authorization])
        }
    }

    /// The destination of `/api/presence/<destination>`: the rest of the path, percent-decoded
    /// (`/api/presence/topic/room` and `/api/presence/%2Ftopic%2Froom` both name `/topic/room`).
    static func destination(inPath path: String) throws(Failure) -> String {
        let prefix = "/api/presence"
        let raw = path.hasPrefix(prefix) ? String(path.dropFirst(prefix.count)) : ""
        guard let rest = raw.removingPercentEncoding else {
            throw Failure(status: .badRequest, message: "destination is not valid percent-encoding: \(raw)", field: "destination")
        }
        let trimmed = rest.drop { $0 == "/" }
        guard !trimmed.isEmpty else {
            throw Failure(status: .badRequest, message: "missing destination: GET /api/presence/<destination>", field: "destination")
        }
        let destination = "/" + trimmed
        // The check every entry point makes (control characters, at most 1024 bytes).
        if let problem = DestinationPattern.nameProblem(destination) {
            throw Failure(status: .badRequest, message: "destination \(problem)", field: "destination")
        }
        guard DestinationPattern.isNormalized(destination) else {
            throw Failure(status: .badRequest, message: "destination must be in Unicode normalization form C (NFC)", field: "destination")
        }
        do { _ = try DestinationPattern(destination) } catch {
            throw Failure(status: .badRequest, message: "invalid destination \(destination): \(error)", field: "destination")
        }
        return destination
    }

    func destination(path: String, authorization: String?) async throws -> Response {
        let key = try publisher.authenticate(authorization: authorization)
        let source = try enabledSource()
        let destination = try Self.destination(inPath: path)
        guard policy.kind(of: destination) == .broker else {
            let prefixes = policy.configuration.brokerPrefixes.joined(separator: " or ")
            throw Failure(
                status: .badRequest, message: "destination \(destination) is not a broker destination (presence is kept for \(prefixes))",
                field: "destination")
        }
        if let key, !APIKeyStore.allows(key, destination) {
            throw Failure(status: .forbidden, message: "API key '\(key.name)' may not read \(destination)", field: "destination")
        }
        let presence = try await read { try await source.destinationPresence(destination, limit: maxUsers) }
        return PublishAPI.json(DestinationAnswer(destination: destination, subscribers: presence.subscribers, users: presence.users.sorted()))
    }

    func user(_ user: String, authorization: String?) async throws -> Response {
        let key = try publisher.authenticate(authorization: authorization)
        let source = try enabledSource()
        guard !user.isEmpty else {
            throw Failure(status: .badRequest, message: "missing user in path", field: "user")
        }
        if let problem = DestinationPattern.nameProblem(user) {
            throw Failure(status: .badRequest, message: "user \(problem)", field: "user")
        }
        guard DestinationPattern.isNormalized(user) else {
            throw Failure(status: .badRequest, message: "user must be in Unicode normalization form C (NFC)", field: "user")
        }
        if let key, !APIKeyStore.allows(key, user: user) {
            throw Failure(status: .forbidden, message: "API key '\(key.name)' may not read the presence of users", field: "user")
        }
        let presence = try await read { try await source.userPresence(user) }
        var instances: [String: [String]] = [:]
        for (session, instance) in presence.sessions { instances[instance, default: []].append(session) }
        for k in instances.keys { instances[k]!.sort() }
        return PublishAPI.json(UserAnswer(user: user, online: presence.online, instances: instances))
    }

    private func enabledSource() throws(Failure) -> any PresenceSource {
        guard let source else {
            throw Failure(status: .notFound, message: "presence is off: it needs events.enabled (with redis.url, or events.webhook.url on the embedded broker)", field: nil)
        }
        return source
    }

    private func read<T>(_ body: () async throws -> T) async throws -> T {
        do { return try await body() } catch {
            throw Failure(status: .serviceUnavailable, message: "presence unavailable: \(error)", field: nil)
        }
    }
}
