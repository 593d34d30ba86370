import Foundation
import NIOCore

/// The JSON a webhook gets for each `SEND` (see docs/stomp.md, "the webhook protocol"):
/// `destination`, `session`, `instance`, `timestamp`, `user` and `contentType` (null when
/// unknown), `headers`, and `body` with its `bodyEncoding` (`utf8`, or `base64` for binary).
package struct WebhookRequest: Encodable, Sendable {
    package var destination: String
    package var session: String
    package var instance: String
    package var timestamp: Int64
    package var user: String?
    package var contentType: String?
    package var headers: [String: String]
    package var body: String
    package var bodyEncoding: String

    package init(
        destination: String, session: String, instance: String, timestamp: Int64, user: String?, contentType: String?,
        headers: [String: String], body: String, bodyEncoding: String
    ) {
        self.destination = destination
        self.session = session
        self.instance = instance
        self.timestamp = timestamp
        self.user = user
        self.contentType = contentType
        self.headers = headers
        self.body = body
        self.bodyEncoding = bodyEncoding
    }

    enum CodingKeys: String, CodingKey {
        case destination, session, instance, timestamp, user, contentType, headers, body, bodyEncoding
    }

    package func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(destination, forKey: .destination)
        try c.encode(session, forKey: .session)
        try c.encode(instance, forKey: .instance)
        try c.encode(timestamp, forKey: .timestamp)
        try c.encode(user, forKey: .user)  // null, not absent
        try c.encode(contentType, forKey: .contentType)
        try c.encode(headers, forKey: .headers)
        try c.encode(body, forKey: .body)
        try c.encode(bodyEncoding, forKey: .bodyEncoding)
    }

    private static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()

    package var json: ByteBuffer {
        get throws { ByteBuffer(bytes: try Self.encoder.encode(self)) }
    }
}

/// Any JSON value, as a webhook's reply may hold it (a reply's `body` may be any JSON value,
/// sent on as its JSON text; header values are stringified).
package enum JSONValue: Codable, Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    package init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let value = try? c.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? c.decode(Int.self) {
            self = .int(value)
        } else if let value = try? c.decode(Double.self) {
            self = .double(value)
        } else if let value = try? c.decode(String.self) {
            self = .string(value)
        } else if let value = try? c.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try c.decode([String: JSONValue].self))
        }
    }

    package func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let v): try c.encode(v)
        case .int(let v): try c.encode(v)
        case .double(let v): try c.encode(v)
        case .string(let v): try c.encode(v)
        case .array(let v): try c.encode(v)
        case .object(let v): try c.encode(v)
        }
    }

    private static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }()

    private static let decoder = JSONDecoder()

    /// Parses `bytes`; nil when they are not JSON.
    package static func parse(_ bytes: ByteBuffer) -> JSONValue? {
        try? decoder.decode(JSONValue.self, from: Data(bytes.readableBytesView))
    }

    /// The value's JSON text (keys sorted).
    package var text: String {
        (try? Self.encoder.encode(self)).map { String(decoding: $0, as: UTF8.self) } ?? "null"
    }

    /// A string as is, anything else as its JSON text (for header values).
    package var stringified: String {
        if case .string(let s) = self { return s }
        return text
    }

    package var string: String? { if case .string(let s) = self { s } else { nil } }
}
