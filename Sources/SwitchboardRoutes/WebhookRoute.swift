import Foundation
import NIOCore
import STOMPCodec
import SwitchboardCore

/// Routes `/app/...` messages to a backend by HTTP POST.
///
/// Request body (JSON):
/// `{"destination","body","bodyEncoding":"utf8"|"base64","contentType","headers":{…},"session","user","instance","timestamp"}`.
///
/// A 2xx reply may be empty, or JSON `{"replies":[{"destination","body","headers","contentType","target"}]}`
/// where `target` is `"broadcast"` (default: every subscriber of the destination, on every
/// instance) or `"sender"` (only the sending session's matching subscriptions), and an
/// optional `"user"` addresses a user destination (`/queue/x` → that user's `/user/queue/x`).
/// Any other status, a timeout or an unparsable reply fails the SEND with an `ERROR`.
public struct WebhookRoute: AppRoute {
    public let url: String
    let host: String
    let port: Int
    let path: String
    let hostHeader: String
    public let timeout: TimeAmount
    let client = HTTPPostClient()

    public struct InvalidURL: Error, CustomStringConvertible {
        public var description: String
    }

    public init(url: String, timeout: TimeAmount) throws {
        guard let parsed = URL(string: url), parsed.scheme == "http", let host = parsed.host, !host.isEmpty else {
            throw InvalidURL(description: "webhook url '\(url)' must be an absolute http:// URL")
        }
        self.url = url
        self.host = host
        self.port = parsed.port ?? 80
        var path = parsed.path.isEmpty ? "/" : parsed.path
        if let q = parsed.query { path += "?" + q }
        self.path = path
        self.hostHeader = parsed.port.map { "\(host):\($0)" } ?? host
        self.timeout = timeout
    }

    public var description: String { "webhook \(url)" }

    public func handle(_ message: AppMessage, on eventLoop: any EventLoop) -> EventLoopFuture<[RouteReply]> {
        let payload: ByteBuffer
        do {
            payload = try Self.encodeRequest(message)
        } catch {
            return eventLoop.makeFailedFuture(RouteError("cannot encode webhook request: \(error)"))
        }
        let url = self.url
        return client.post(
            host: host, port: port, path: path, hostHeader: hostHeader, body: payload,
            headers: [("Content-Type", "application/json")], timeout: timeout, on: eventLoop
        )
        .flatMapErrorThrowing { error in throw RouteError("webhook \(url) \(error)") }
        .flatMapThrowing { response in
            guard (200..<300).contains(response.status) else {
                throw RouteError("webhook \(url) answered HTTP \(response.status)")
            }
            return try Self.decodeReplies(response.body, url: url)
        }
    }

    static func encodeRequest(_ m: AppMessage) throws -> ByteBuffer {
        var object: [String: Any] = [
            "destination": m.destination,
            "session": m.sessionID,
            "instance": m.instanceID,
            "timestamp": m.timestamp,
            "user": m.user.map { $0 as Any } ?? NSNull(),
            "contentType": m.contentType.map { $0 as Any } ?? NSNull(),
        ]
        var headers: [String: String] = [:]
        for (n, v) in m.headers where headers[n] == nil { headers[n] = v }
        object["headers"] = headers
        let bytes = Array(m.body.readableBytesView)
        if let text = String(validating: bytes, as: UTF8.self) {
            object["body"] = text
            object["bodyEncoding"] = "utf8"
        } else {
            object["body"] = Data(bytes).base64EncodedString()
            object["bodyEncoding"] = "base64"
        }
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        return ByteBuffer(bytes: data)
    }

    static func decodeReplies(_ body: ByteBuffer, url: String) throws -> [RouteReply] {
        let bytes = Array(body.readableBytesView)
        if bytes.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) { return [] }
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            throw RouteError("webhook \(url) reply is not a JSON object")
        }
        guard let list = object["replies"] else { return [] }
        guard let replies = list as? [[String: Any]] else {
            throw RouteError("webhook \(url) reply: 'replies' must be an array of objects")
        }
        return try replies.enumerated().map { index, r in
            guard let named = r["destination"] as? String, !named.isEmpty else {
                throw RouteError("webhook \(url) reply: replies[\(index)].destination is missing")
            }
            let bodyText: String
            switch r["body"] {
            case let s as String: bodyText = s
            case nil: bodyText = ""
            case let other?:
                guard JSONSerialization.isValidJSONObject(other),
                    let d = try? JSONSerialization.data(withJSONObject: other), let s = String(data: d, encoding: .utf8)
                else {
                    throw RouteError("webhook \(url) reply: replies[\(index)].body must be a string or JSON value")
                }
                bodyText = s
            }
            var headers = STOMPHeaders()
            if let h = r["headers"] as? [String: Any] {
                for (k, v) in h.sorted(by: { $0.key < $1.key }) { headers.add(k, "\(v)") }
            }
            if let ct = r["contentType"] as? String { headers.set("content-type", ct) }
            if headers["content-type"] == nil { headers.add("content-type", "text/plain") }
            var destination = named
            if let user = r["user"] {
                guard let user = user as? String, !user.isEmpty else {
                    throw RouteError("webhook \(url) reply: replies[\(index)].user must be a non-empty string")
                }
                // To every session of that user subscribed to /user<destination>.
                destination = UserDestinations.routing(user: user, destination: destination)
            }
            let target: RouteReply.Target
            switch r["target"] as? String {
            case nil, "broadcast": target = .broadcast
            case "sender": target = .sender
            case let other?: throw RouteError("webhook \(url) reply: replies[\(index)].target '\(other)' must be broadcast or sender")
            }
            return RouteReply(destination: destination, body: ByteBuffer(string: bodyText), headers: headers, target: target)
        }
    }
}
