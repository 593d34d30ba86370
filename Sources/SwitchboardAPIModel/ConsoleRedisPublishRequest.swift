import Foundation
import NIOCore

/// The body of the console's `POST /api/console/redis-publish`:
/// `{"channel": "...", "message": "..."}`, a Redis `PUBLISH` on a configured inbound channel.
package struct ConsoleRedisPublishRequest: Sendable, Equatable {
    package var channel: String
    package var message: String

    package init(channel: String, message: String) {
        self.channel = channel
        self.message = message
    }

    /// Parses and validates a request body; the error names the first field at fault
    /// (`channel`, then `message`).
    ///
    /// - Parameter isAllowedChannel: whether the console may publish on a channel (the
    ///   configured inbound channels only).
    package static func parse(_ bytes: ByteBuffer, isAllowedChannel: (String) -> Bool) throws(APIRequestError) -> ConsoleRedisPublishRequest {
        guard let fields = try? decoder.decode(Fields.self, from: Data(bytes.readableBytesView)) else {
            throw APIRequestError(status: 400, message: "request body must be a JSON object", field: nil)
        }
        return try fields.validated(isAllowedChannel: isAllowedChannel)
    }

    private static let decoder = JSONDecoder()

    /// A request object as decoded, before validation.
    struct Fields: Decodable, Sendable {
        typealias Field = NotificationRequest.Field

        var channel: Field<String>
        var message: Field<String>

        enum CodingKeys: String, CodingKey {
            case channel, message
        }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            func field(_ key: CodingKeys) -> Field<String> {
                guard container.contains(key) else { return .missing }
                return (try? container.decode(String.self, forKey: key)).map { .value($0) } ?? .invalid
            }
            channel = field(.channel)
            message = field(.message)
        }

        func validated(isAllowedChannel: (String) -> Bool) throws(APIRequestError) -> ConsoleRedisPublishRequest {
            guard case .value(let channel) = self.channel, !channel.isEmpty else {
                throw APIRequestError(status: 400, message: "field 'channel' must be a non-empty string", field: "channel")
            }
            guard isAllowedChannel(channel) else {
                throw APIRequestError(status: 400, message: "channel \(channel) is not a configured inbound channel", field: "channel")
            }
            guard case .value(let message) = self.message, !message.isEmpty else {
                throw APIRequestError(status: 400, message: "field 'message' must be a non-empty string", field: "message")
            }
            return ConsoleRedisPublishRequest(channel: channel, message: message)
        }
    }
}

/// The answer to `POST /api/console/redis-publish`: `{"channel": "...", "receivers": n}`, the
/// number of subscribers Redis delivered the message to.
package struct ConsoleRedisPublishAnswer: Codable, Sendable, Equatable {
    package var channel: String
    package var receivers: Int

    package init(channel: String, receivers: Int) {
        self.channel = channel
        self.receivers = receivers
    }
}
