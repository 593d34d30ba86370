import Foundation
import NIOCore

/// The answer to a published notification: `{"id": "...", "topic": "...", "user": "..."?}`.
public struct NotificationAnswer: Codable, Sendable, Equatable {
    /// The `message-id` subscribers see.
    public var id: String
    public var topic: String
    /// The user addressed, for a user destination.
    public var user: String?

    public init(id: String, topic: String, user: String?) {
        self.id = id
        self.topic = topic
        self.user = user
    }
}

/// An error answer: `{"error": "...", "field": "..." | null}`; inside a batch answer it also
/// carries the item's `status`.
public struct APIErrorBody: Codable, Sendable, Equatable {
    public var error: String
    /// The request field at fault; null when the request as a whole is.
    public var field: String?
    /// The item's HTTP status, in a batch answer only.
    public var status: Int?

    public init(error: String, field: String?, status: Int? = nil) {
        self.error = error
        self.field = field
        self.status = status
    }

    enum CodingKeys: String, CodingKey { case error, field, status }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(error, forKey: .error)
        try container.encode(field, forKey: .field)  // null, not absent
        try container.encodeIfPresent(status, forKey: .status)
    }
}

/// The answer to `POST /api/notifications`: counts and one result per item, in order.
public struct BatchAnswer: Codable, Sendable, Equatable {
    public enum Item: Codable, Sendable, Equatable {
        case published(NotificationAnswer)
        case failed(APIErrorBody)

        public init(from decoder: any Decoder) throws {
            if let failed = try? APIErrorBody(from: decoder) {
                self = .failed(failed)
            } else {
                self = .published(try NotificationAnswer(from: decoder))
            }
        }

        public func encode(to encoder: any Encoder) throws {
            switch self {
            case .published(let answer): try answer.encode(to: encoder)
            case .failed(let error): try error.encode(to: encoder)
            }
        }
    }

    public var published: Int
    public var failed: Int
    public var results: [Item]

    public init(results: [Item]) {
        self.results = results
        self.published = results.count { if case .published = $0 { true } else { false } }
        self.failed = results.count - published
    }
}

/// The JSON of the API's answers: keys sorted, slashes not escaped.
public enum APIJSON {
    private static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()

    /// `value` as a JSON body (`{}` if it cannot be encoded, which these types never cause).
    public static func body(_ value: some Encodable) -> ByteBuffer {
        ByteBuffer(bytes: (try? encoder.encode(value)) ?? Data("{}".utf8))
    }
}

/// `GET /health`: what this instance is and holds.
public struct HealthAnswer: Codable, Sendable, Equatable {
    /// The Redis connections of an instance in Redis mode.
    public struct Redis: Codable, Sendable, Equatable {
        /// `connected`, `connecting`, `disconnected` or `shutdown`.
        public var commands: String
        public var subscriptions: String
        public var reconnects: Int
        /// Seconds since this instance's own delivery canary came back (absent when it is off).
        public var canaryAgeSeconds: Double?
        /// Seconds since each other instance's canary was last seen here (absent when it is off).
        public var peerCanaryAgeSeconds: [String: Double]?

        public init(
            commands: String, subscriptions: String, reconnects: Int, canaryAgeSeconds: Double? = nil,
            peerCanaryAgeSeconds: [String: Double]? = nil
        ) {
            self.commands = commands
            self.subscriptions = subscriptions
            self.reconnects = reconnects
            self.canaryAgeSeconds = canaryAgeSeconds
            self.peerCanaryAgeSeconds = peerCanaryAgeSeconds
        }
    }

    public var status = "ok"
    /// `memory` or `redis`.
    public var engine: String
    public var instance: String
    public var connections: Int
    public var sessions: Int
    public var subscriptions: Int
    public var destinations: Int
    /// Null on the embedded broker.
    public var redis: Redis?

    public init(engine: String, instance: String, connections: Int, sessions: Int, subscriptions: Int, destinations: Int, redis: Redis?) {
        self.engine = engine
        self.instance = instance
        self.connections = connections
        self.sessions = sessions
        self.subscriptions = subscriptions
        self.destinations = destinations
        self.redis = redis
    }

    enum CodingKeys: String, CodingKey { case status, engine, instance, connections, sessions, subscriptions, destinations, redis }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(status, forKey: .status)
        try c.encode(engine, forKey: .engine)
        try c.encode(instance, forKey: .instance)
        try c.encode(connections, forKey: .connections)
        try c.encode(sessions, forKey: .sessions)
        try c.encode(subscriptions, forKey: .subscriptions)
        try c.encode(destinations, forKey: .destinations)
        try c.encode(redis, forKey: .redis)  // null, not absent
    }
}

/// `GET /health/ready` (and `/health/live`): `{"status": "ready"}`, or `"not ready"` with the reasons.
public struct ReadinessAnswer: Codable, Sendable, Equatable {
    public var status: String
    public var reasons: [String]?

    public init(status: String, reasons: [String]? = nil) {
        self.status = status
        self.reasons = reasons
    }
}
