import Foundation
import NIOCore
import SwitchboardWire

/// A message on a `broadcast` inbound channel (``RedisInboundRoute/broadcast(channel:)``):
/// the HTTP API's JSON, `{"topic": "...", "message": "...", "contentType": "..."?,
/// "headers": {...}?, "user": "..."?}`.
///
/// `topic` and `message` are required strings. The other fields are optional, and one of the
/// wrong type (or null) counts as absent rather than failing the payload.
public struct BroadcastPayload: Codable, Sendable, Equatable {
    /// The destination, e.g. `/topic/news`; for a `user`, the destination within the user's
    /// (`/queue/x` reaches the user's `/user/queue/x` subscriptions).
    public var topic: String
    /// The body, as text.
    public var message: String
    /// The `content-type` header (`text/plain` when absent).
    public var contentType: String?
    /// Extra headers (reserved names and `content-type` are left out on delivery).
    public var headers: [String: String]?
    /// The user addressed; absent or empty for every subscriber of `topic`.
    public var user: String?

    public init(topic: String, message: String, contentType: String? = nil, headers: [String: String]? = nil, user: String? = nil) {
        self.topic = topic
        self.message = message
        self.contentType = contentType
        self.headers = headers
        self.user = user
    }

    enum CodingKeys: String, CodingKey {
        case topic, message, contentType, headers, user
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        topic = try container.decode(String.self, forKey: .topic)
        message = try container.decode(String.self, forKey: .message)
        contentType = (try? container.decodeIfPresent(String.self, forKey: .contentType)) ?? nil
        headers = (try? container.decodeIfPresent([String: String].self, forKey: .headers)) ?? nil
        user = (try? container.decodeIfPresent(String.self, forKey: .user)) ?? nil
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(topic, forKey: .topic)
        try container.encode(message, forKey: .message)
        try container.encodeIfPresent(contentType, forKey: .contentType)
        try container.encodeIfPresent(headers, forKey: .headers)
        try container.encodeIfPresent(user, forKey: .user)
    }

    /// The payload a broadcast channel message holds, or nil when it is not a JSON object
    /// with string `topic` and `message` fields.
    public static func decode(_ payload: ByteBuffer) -> BroadcastPayload? {
        try? decoder.decode(BroadcastPayload.self, from: Data(payload.readableBytesView))
    }

    private static let decoder = JSONDecoder()
}
