import Foundation
import NIOCore

/// The JSON a webhook gets for each `SEND` (see docs/stomp.md, "the webhook protocol"):
/// `destination`, `session`, `instance`, `timestamp`, `user` and `contentType` (null when
/// unknown), `headers`, and `body` with its `bodyEncoding` (`utf8`, or `base64` for binary).
struct WebhookRequest: Encodable, Sendable {
    var destination: String
    var session: String
    var instance: String
    var timestamp: Int64
    var user: String?
    var contentType: String?
    var headers: [String: String]
    var body: String
    var bodyEncoding: String

    enum CodingKeys: String, CodingKey {
        case destination, session, instance, timestamp, user, contentType, headers, body, bodyEncoding
    }

    func encode(to encoder: any Encoder) throws {
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

    var json: ByteBuffer {
        get throws { ByteBuffer(bytes: try Self.encoder.encode(self)) }
    }
}

/// Any JSON value, as a webhook's reply may hold it (a reply's `body` may be any JSON value,
/// sent on as its JSON text; header values are stringified).
enum JSONValue: Codable, Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    init(from decoder: any Decoder) throws {
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

    func encode(to encoder: any Encoder) throws {
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
    static func parse(_ bytes: ByteBuffer) -> JSONValue? {
        try? decoder.decode(JSONValue.self, from: Data(bytes.readableBytesView))
    }

    /// The value's JSON text (keys sorted).
    var text: String {
        (try? Self.encoder.encode(self)).map { String(decoding: $0, as: UTF8.self) } ?? "null"
    }

    /// A string as is, anything else as its JSON text (for header values).
    var stringified: String {
        if case .string(let s) = self { return s }
        return text
    }

    var string: String? { if case .string(let s) = self { s } else { nil } }
}
