import Foundation
import NIOCore
import STOMPCodec
import SwitchboardCore

/// A rejected HTTP API request: the status to answer and the field at fault.
public struct APIRequestError: Error, Sendable, Equatable {
    public var status: Int
    public var message: String
    public var field: String?

    public init(status: Int, message: String, field: String?) {
        self.status = status
        self.message = message
        self.field = field
    }
}

/// The body of `POST /api/notification` (and `/api/users/{user}/notification`):
/// `{"topic": "...", "message": "...", "headers": {...}?, "contentType": "..."?}`.
public struct NotificationRequest: Sendable, Equatable {
    public var topic: String
    public var body: ByteBuffer
    /// User headers with `content-type` (default `text/plain`).
    public var headers: STOMPHeaders

    /// Parses and validates a request body.
    ///
    /// - Parameter isAllowedTopic: decides whether `topic` may be published to; its error
    ///   text (e.g. "must start with /topic/") is returned when it says no.
    public static func parse(_ bytes: ByteBuffer, isAllowedTopic: (String) -> String?) throws(APIRequestError) -> NotificationRequest {
        guard let any = try? JSONSerialization.jsonObject(with: Data(bytes.readableBytesView)), let object = any as? [String: Any] else {
            throw APIRequestError(status: 400, message: "request body must be a JSON object", field: nil)
        }
        guard let topicValue = object["topic"] else {
            throw APIRequestError(status: 400, message: "missing field 'topic'", field: "topic")
        }
        guard let topic = topicValue as? String, !topic.isEmpty else {
            throw APIRequestError(status: 400, message: "field 'topic' must be a non-empty string", field: "topic")
        }
        if let problem = isAllowedTopic(topic) {
            throw APIRequestError(status: 400, message: "field 'topic' \(problem)", field: "topic")
        }
        guard !topic.contains("*") else {
            throw APIRequestError(status: 400, message: "field 'topic' must not contain wildcards", field: "topic")
        }
        guard let messageValue = object["message"] else {
            throw APIRequestError(status: 400, message: "missing field 'message'", field: "message")
        }
        guard let message = messageValue as? String else {
            throw APIRequestError(status: 400, message: "field 'message' must be a string", field: "message")
        }
        var headers = STOMPHeaders()
        if let raw = object["headers"] {
            guard let dict = raw as? [String: Any], dict.values.allSatisfy({ $0 is String }) else {
                throw APIRequestError(status: 400, message: "field 'headers' must be an object of string values", field: "headers")
            }
            for (k, v) in dict.sorted(by: { $0.key < $1.key }) where !PublishedMessage.reservedHeaders.contains(k) && k != "content-type" {
                if let v = v as? String { headers.add(k, v) }
            }
        }
        var contentType = "text/plain"
        if let raw = object["contentType"] {
            guard let ct = raw as? String, !ct.isEmpty else {
                throw APIRequestError(status: 400, message: "field 'contentType' must be a non-empty string", field: "contentType")
            }
            contentType = ct
        }
        headers.add("content-type", contentType)
        return NotificationRequest(topic: topic, body: ByteBuffer(string: message), headers: headers)
    }
}
