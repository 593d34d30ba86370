import Foundation
import NIOCore

/// The answer to a published notification: `{"id": "...", "topic": "...", "user": "..."?}`;
/// `{"duplicate": true, "topic": "...", …}` without an `id` when its idempotency key was
/// published with already (nothing published: the first publish's answer had the id).
package struct NotificationAnswer: Codable, Sendable, Equatable {
    /// The `message-id` subscribers see; nil for a duplicate.
    package var id: String?
    package var topic: String
    /// The user addressed, for a user destination.
    package var user: String?
    /// True when nothing was published: a publish with the same idempotency key came first.
    package var duplicate: Bool?

    package init(id: String?, topic: String, user: String?, duplicate: Bool? = nil) {
        self.id = id
        self.topic = topic
        self.user = user
        self.duplicate = duplicate
    }
}

/// An error answer: `{"error": "...", "field": "..." | null}`; inside a batch answer it also
/// carries the item's `status`.
package struct APIErrorBody: Codable, Sendable, Equatable {
    package var error: String
    /// The request field at fault; null when the request as a whole is.
    package var field: String?
    /// The item's HTTP status, in a batch answer only.
    package var status: Int?

    package init(error: String, field: String?, status: Int? = nil) {
        self.error = error
        self.field = field
        self.status = status
    }

    enum CodingKeys: String, CodingKey { case error, field, status }

    package func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(error, forKey: .error)
        try container.encode(field, forKey: .field)  // null, not absent
        try container.encodeIfPresent(status, forKey: .status)
    }
}

/// The answer to `POST /api/notifications`: counts and one result per item, in order.
package struct BatchAnswer: Codable, Sendable, Equatable {
    package enum Item: Codable, Sendable, Equatable {
        case published(NotificationAnswer)
        case failed(APIErrorBody)

        package init(from decoder: any Decoder) throws {
            if let failed = try? APIErrorBody(from: decoder) {
                self = .failed(failed)
            } else {
                self = .published(try NotificationAnswer(from: decoder))
            }
        }

        package func encode(to encoder: any Encoder) throws {
            switch self {
            case .published(let answer): try answer.encode(to: encoder)
            case .failed(let error): try error.encode(to: encoder)
            }
        }
    }

    package var published: Int
    package var failed: Int
    package var results: [Item]

    package init(results: [Item]) {
        self.results = results
        self.published = results.count { if case .published = $0 { true } else { false } }
        self.failed = results.count - published
    }
}

/// The JSON of the API's answers: keys sorted, slashes not escaped.
package enum APIJSON {
    private static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()

    /// `value` as a JSON body (`{}` if it cannot be encoded, which these types never cause).
    package static func body(_ value: some Encodable) -> ByteBuffer {
        ByteBuffer(bytes: (try? encoder.encode(value)) ?? Data("{}".utf8))
    }

    /// An answer the API writes on every publish, without `JSONEncoder` (the same bytes).
    package static func body(_ value: some WrittenJSONAnswer) -> ByteBuffer {
        var writer = JSONAnswerWriter(capacity: value.capacityHint)
        value.write(to: &writer)
        return writer.buffer
    }
}

/// `GET /health`: what this instance is and holds.
package struct HealthAnswer: Codable, Sendable, Equatable {
    /// The Redis connections of an instance in Redis mode.
    package struct Redis: Codable, Sendable, Equatable {
        /// `connected`, `connecting`, `disconnected` or `shutdown`.
        package var commands: String
        package var subscriptions: String
        package var reconnects: Int
        /// Seconds since this instance's own delivery canary came back (absent when it is off).
        package var canaryAgeSeconds: Double?
        /// Seconds since each other instance's canary was last seen here (absent when it is off).
        package var peerCanaryAgeSeconds: [String: Double]?

        package init(
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

    package var status = "ok"
    /// `memory` or `redis`.
    package var engine: String
    package var instance: String
    package var connections: Int
    package var sessions: Int
    package var subscriptions: Int
    package var destinations: Int
    /// Null on the embedded broker.
    package var redis: Redis?

    package init(engine: String, instance: String, connections: Int, sessions: Int, subscriptions: Int, destinations: Int, redis: Redis?) {
        self.engine = engine
        self.instance = instance
        self.connections = connections
        self.sessions = sessions
        self.subscriptions = subscriptions
        self.destinations = destinations
        self.redis = redis
    }

    enum CodingKeys: String, CodingKey { case status, engine, instance, connections, sessions, subscriptions, destinations, redis }

    package func encode(to encoder: any Encoder) throws {
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
package struct ReadinessAnswer: Codable, Sendable, Equatable {
    package var status: String
    package var reasons: [String]?

    package init(status: String, reasons: [String]? = nil) {
        self.status = status
        self.reasons = reasons
    }
}
