import Foundation
import NIOCore
import SwitchboardWire

/// A message on a `broadcast` inbound channel (``RedisInboundRoute/broadcast(channel:)``):
/// the HTTP API's JSON, `{"topic": "...", "message": "...", "contentType": "..."?,
/// "headers": {...}?, "user": "..."?}`.
///
/// `topic` and `message` are required strings. `user`, when present and not null, must be a
/// non-empty string: another type failed no check and reached every subscriber of the topic (a
/// backend's numeric user id, a private message to everyone). The other optional fields of the
/// wrong type (or null) count as absent.
package struct BroadcastPayload: Codable, Sendable, Equatable {
    /// The destination, e.g. `/topic/news`; for a `user`, the destination within the user's
    /// (`/queue/x` reaches the user's `/user/queue/x` subscriptions).
    package var topic: String
    /// The body, as text.
    package var message: String
    /// The `content-type` header (`text/plain` when absent).
    package var contentType: String?
    /// Extra headers (reserved names and `content-type` are left out on delivery).
    package var headers: [String: String]?
    /// The user addressed; absent (or null) for every subscriber of `topic`.
    package var user: String?

    package init(topic: String, message: String, contentType: String? = nil, headers: [String: String]? = nil, user: String? = nil) {
        self.topic = topic
        self.message = message
        self.contentType = contentType
        self.headers = headers
        self.user = user
    }

    enum CodingKeys: String, CodingKey {
        case topic, message, contentType, headers, user
    }

    package init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        topic = try container.decode(String.self, forKey: .topic)
        message = try container.decode(String.self, forKey: .message)
        contentType = (try? container.decodeIfPresent(String.self, forKey: .contentType)) ?? nil
        headers = (try? container.decodeIfPresent([String: String].self, forKey: .headers)) ?? nil
        user = try container.decodeIfPresent(String.self, forKey: .user)
        if user?.isEmpty == true {
            throw DecodingError.dataCorruptedError(forKey: .user, in: container, debugDescription: "an empty user")
        }
    }

    package func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(topic, forKey: .topic)
        try container.encode(message, forKey: .message)
        try container.encodeIfPresent(contentType, forKey: .contentType)
        try container.encodeIfPresent(headers, forKey: .headers)
        try container.encodeIfPresent(user, forKey: .user)
    }

    /// The payload a broadcast channel message holds, or nil when it is not a JSON object
    /// with string `topic` and `message` fields.
    package static func decode(_ payload: ByteBuffer) -> BroadcastPayload? {
        try? decoder.decode(BroadcastPayload.self, from: Data(payload.readableBytesView))
    }

    private static let decoder = JSONDecoder()
}
