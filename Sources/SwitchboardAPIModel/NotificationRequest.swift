import Foundation
import NIOCore
import STOMPCodec
import SwitchboardCore
import SwitchboardWire

/// A rejected HTTP API request: the status to answer and the field at fault.
package struct APIRequestError: Error, Sendable, Equatable {
    package var status: Int
    package var message: String
    package var field: String?

    package init(status: Int, message: String, field: String?) {
        self.status = status
        self.message = message
        self.field = field
    }
}

/// The body of `POST /api/notification` (and `/api/users/{user}/notification`):
/// `{"topic": "...", "message": "...", "headers": {...}?, "contentType": "..."?}`; a batch
/// (`POST /api/notifications`) is a JSON array of such objects, each with an optional `user`.
package struct NotificationRequest: Sendable, Equatable {
    package var topic: String
    package var body: ByteBuffer
    /// User headers with `content-type` (default `text/plain`).
    package var headers: STOMPHeaders
    /// The user of a batch item addressed to a user destination.
    package var user: String?
    /// `idempotencyKey`: a publish with the same key to the same destination within 10 minutes
    /// is not published again (a backend's retry after a timeout, on any instance).
    package var idempotencyKey: String?

    /// Most entries of a request's `headers` object (a STOMP frame carries each as a header line).
    package static let maxHeaders = PublishHeaders.maxCount

    /// Parses and validates a request body.
    ///
    /// - Parameter isAllowedTopic: decides whether `topic` may be published to; its error
    ///   text (e.g. "must start with /topic/") is returned when it says no.
    /// A `user` field is refused unless it names `pathUser` (the user of
    /// `/api/users/{user}/notification`): it names a batch item's user, and here it was ignored
    /// (the message went to the topic's subscribers, or to the path's user).
    package static func parse(
        _ bytes: ByteBuffer, pathUser: String? = nil, isAllowedTopic: (String) -> String?
    ) throws(APIRequestError) -> NotificationRequest {
        let fields: Fields
        if let object = FlatJSON.object(bytes) {
            fields = Fields(object)
        } else if let decoded = try? decoder.decode(Fields.self, from: Data(bytes.readableBytesView)) {
            fields = decoded
        } else {
            throw APIRequestError(status: 400, message: "request body must be a JSON object", field: nil)
        }
        switch fields.user {
        case .missing: break
        case .value(let user) where pathUser.map { user.utf8.elementsEqual($0.utf8) } == true: break
        default:
            throw APIRequestError(
                status: 400, message: "field 'user' is for the items of POST /api/notifications; send to /api/users/{user}/notification",
                field: "user")
        }
        return try fields.validated(isAllowedTopic: isAllowedTopic)
    }

    /// The items of a batch body: one result per item, in order, each validated on its own
    /// (`isAllowedTopic` gets the item's `user`). The whole body fails when it is not a JSON
    /// array of 1…`maxItems` elements.
    package static func parseBatch(
        _ bytes: ByteBuffer, maxItems: Int, isAllowedTopic: (String, String?) -> String?
    ) throws(APIRequestError) -> [Result<NotificationRequest, APIRequestError>] {
        guard let count = FlatJSON.arrayElementCount(bytes) else {
            // Not an array, or not UTF-8 (the reference decoder takes UTF-16 and UTF-32 too,
            // and would build every item before the count could be checked).
            throw APIRequestError(status: 400, message: "request body must be a JSON array of notifications", field: nil)
        }
        if count > maxItems {
            throw APIRequestError(status: 413, message: "batch of \(count) notifications is larger than \(maxItems)", field: nil)
        }
        let items: [BatchItem]
        if let objects = FlatJSON.arrayOfObjects(bytes) {
            items = objects.map { BatchItem(fields: Fields($0)) }
        } else if let decoded = try? decoder.decode([BatchItem].self, from: Data(bytes.readableBytesView)) {
            items = decoded
        } else {
            throw APIRequestError(status: 400, message: "request body must be a JSON array of notifications", field: nil)
        }
        guard !items.isEmpty else {
            throw APIRequestError(status: 400, message: "request body must hold at least one notification", field: nil)
        }
        guard items.count <= maxItems else {
            throw APIRequestError(status: 413, message: "batch of \(items.count) notifications is larger than \(maxItems)", field: nil)
        }
        return items.map { item in
            Result { () throws(APIRequestError) -> NotificationRequest in
                guard let fields = item.fields else {
                    throw APIRequestError(status: 400, message: "each notification must be a JSON object", field: nil)
                }
                let user: String?
                switch fields.user {
                case .missing: user = nil
                case .value(let name) where !name.isEmpty: user = name
                default: throw APIRequestError(status: 400, message: "field 'user' must be a non-empty string", field: "user")
                }
                if let user, let problem = DestinationPattern.nameProblem(user) {
                    throw APIRequestError(status: 400, message: "field 'user' \(problem)", field: "user")
                }
                var request = try fields.validated { isAllowedTopic($0, user) }
                request.user = user
                return request
            }
        }
    }

    private static let decoder = JSONDecoder()

    /// One field as decoded: absent, present with the wrong type (or null), or a value.
    enum Field<Value: Decodable & Sendable>: Sendable {
        case missing
        case invalid
        case value(Value)
    }

    /// A request object as decoded, before validation (which checks fields in a fixed order,
    /// so the error names the first field at fault).
    struct Fields: Decodable, Sendable {
        var topic: Field<String>
        var message: Field<String>
        var headers: Field<[String: String]>
        var contentType: Field<String>
        var user: Field<String>
        var idempotencyKey: Field<String>

        enum CodingKeys: String, CodingKey {
            case topic, message, headers, contentType, user, idempotencyKey
        }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            func field<Value: Decodable & Sendable>(_ key: CodingKeys) -> Field<Value> {
                guard container.contains(key) else { return .missing }
                return (try? container.decode(Value.self, forKey: key)).map { .value($0) } ?? .invalid
            }
            topic = field(.topic)
            message = field(.message)
            headers = field(.headers)
            contentType = field(.contentType)
            user = field(.user)
            idempotencyKey = field(.idempotencyKey)
        }

        /// The fields of an object of string values (``FlatJSON``), as the decoder would see
        /// them: `headers` given as a string is a value of the wrong type.
        init(_ object: FlatJSON.Object) {
            func field(_ key: CodingKeys) -> Field<String> {
                object.first(where: { $0.key == key.rawValue }).map { .value($0.value) } ?? .missing
            }
            topic = field(.topic)
            message = field(.message)
            headers = object.contains(where: { $0.key == CodingKeys.headers.rawValue }) ? .invalid : .missing
            contentType = field(.contentType)
            user = field(.user)
            idempotencyKey = field(.idempotencyKey)
        }

        func validated(isAllowedTopic: (String) -> String?) throws(APIRequestError) -> NotificationRequest {
            let topic: String
            switch self.topic {
            case .missing: throw APIRequestError(status: 400, message: "missing field 'topic'", field: "topic")
            case .value(let value) where !value.isEmpty: topic = value
            default: throw APIRequestError(status: 400, message: "field 'topic' must be a non-empty string", field: "topic")
            }
            if let problem = isAllowedTopic(topic) {
                throw APIRequestError(status: 400, message: "field 'topic' \(problem)", field: "topic")
            }
            guard !topic.utf8.contains(UInt8(ascii: "*")) else {
                throw APIRequestError(status: 400, message: "field 'topic' must not contain wildcards", field: "topic")
            }
            // A NUL, CR or LF could not reach a subscriber as sent (STOMP headers cannot carry a
            // NUL; the destination would arrive changed), nor any other control character
            // sensibly; a destination's length is bounded everywhere.
            if let problem = DestinationPattern.nameProblem(topic) {
                throw APIRequestError(status: 400, message: "field 'topic' \(problem)", field: "topic")
            }
            let message: String
            switch self.message {
            case .missing: throw APIRequestError(status: 400, message: "missing field 'message'", field: "message")
            case .invalid: throw APIRequestError(status: 400, message: "field 'message' must be a string", field: "message")
            case .value(let value): message = value
            }
            var headers = STOMPHeaders()
            switch self.headers {
            case .missing: break
            case .invalid: throw APIRequestError(status: 400, message: "field 'headers' must be an object of string values", field: "headers")
            case .value(let dict):
                try NotificationRequest.checkHeaders(dict)
                for (k, v) in dict.sorted(by: { $0.key < $1.key }) where !PublishedMessage.reservedHeaders.contains(k) && k != "content-type" {
                    headers.add(k, v)
                }
            }
            var contentType = "text/plain"
            switch self.contentType {
            case .missing: break
            case .value(let value) where value.utf8.contains(0):
                // As a header value in `headers`: a STOMP header cannot carry a NUL.
                throw APIRequestError(status: 400, message: "field 'contentType' must not contain a NUL", field: "contentType")
            case .value(let value) where !value.isEmpty: contentType = value
            default: throw APIRequestError(status: 400, message: "field 'contentType' must be a non-empty string", field: "contentType")
            }
            headers.add("content-type", contentType)
            var idempotencyKey: String?
            switch self.idempotencyKey {
            case .missing: break
            case .invalid: throw APIRequestError(status: 400, message: "field 'idempotencyKey' must be a string", field: "idempotencyKey")
            case .value(let value):
                if let problem = IdempotencyTokens.problem(value) {
                    throw APIRequestError(status: 400, message: "field 'idempotencyKey' \(problem)", field: "idempotencyKey")
                }
                idempotencyKey = value
            }
            return NotificationRequest(topic: topic, body: ByteBuffer(string: message), headers: headers, idempotencyKey: idempotencyKey)
        }
    }

    /// Refuses a `headers` object no STOMP frame could carry as sent (``PublishHeaders``).
    static func checkHeaders(_ dict: [String: String]) throws(APIRequestError) {
        if let problem = PublishHeaders.problem(dict) { throw APIRequestError(status: 400, message: "field 'headers' \(problem)", field: "headers") }
    }

    /// One element of a batch array: its fields, or nil when it is not an object.
    struct BatchItem: Decodable, Sendable {
        var fields: Fields?

        init(fields: Fields?) { self.fields = fields }

        init(from decoder: any Decoder) throws {
            fields = try? Fields(from: decoder)
        }
    }
}
