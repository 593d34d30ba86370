import Foundation
import NIOCore
import NIOHTTP1
import STOMPCodec
import SwitchboardWire

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
package struct WebhookRoute: AppRoute {
    package let url: String
    /// ``url`` without its query and user info, which may hold a secret (`?key=…`): what
    /// errors (clients see them) and logs name.
    package let shownURL: String
    let host: String
    let port: Int
    let path: String
    let hostHeader: String
    package let timeout: TimeAmount
    let client: WebhookClient

    package struct InvalidURL: Error, CustomStringConvertible {
        package var description: String
    }

    /// - Parameters:
    ///   - url: an absolute `http://` or `https://` URL.
    ///   - client: the gateway's shared webhook client (its connection pool and TLS trust).
    package init(url: String, timeout: TimeAmount, client: WebhookClient) throws {
        (host, port, path, hostHeader) = try Self.components(of: url)
        self.url = url
        self.shownURL = Self.shown(url)
        self.timeout = timeout
        self.client = client
    }

    /// Host, port, path (with the query) and `Host` header of an absolute `http://` or
    /// `https://` URL; the configuration checks URLs with it.
    package static func components(of url: String) throws -> (host: String, port: Int, path: String, hostHeader: String) {
        guard let parsed = URL(string: url), let scheme = parsed.scheme, scheme == "http" || scheme == "https",
            let host = parsed.host, !host.isEmpty
        else {
            // Not echoed: what does not parse as http(s) may carry a secret anywhere
            // (`user:password@host/…` reads as scheme `user`); the caller names the key.
            throw InvalidURL(description: "the webhook url must be an absolute http:// or https:// URL")
        }
        var path = parsed.path.isEmpty ? "/" : parsed.path
        if let q = parsed.query { path += "?" + q }
        return (host, parsed.port ?? (scheme == "https" ? 443 : 80), path, parsed.port.map { "\(host):\($0)" } ?? host)
    }

    /// `url` as errors and logs show it: scheme, host, port and path only.
    package static func shown(_ url: String) -> String {
        guard var parts = URLComponents(string: url) else { return "(a URL that does not parse)" }
        parts.user = nil
        parts.password = nil
        parts.query = nil
        parts.fragment = nil
        return parts.string ?? url
    }

    package var description: String { "webhook \(shownURL)" }

    package func handle(_ message: AppMessage, on eventLoop: any EventLoop) -> EventLoopFuture<[RouteReply]> {
        call(message, on: eventLoop, cancellation: nil)
    }

    package func handle(_ message: AppMessage, on eventLoop: any EventLoop, cancellation: RouteCancellation) -> EventLoopFuture<[RouteReply]> {
        call(message, on: eventLoop, cancellation: cancellation)
    }

    private func call(_ message: AppMessage, on eventLoop: any EventLoop, cancellation: RouteCancellation?) -> EventLoopFuture<[RouteReply]> {
        let payload: ByteBuffer
        do {
            payload = try Self.encodeRequest(message)
        } catch {
            return eventLoop.makeFailedFuture(RouteError(.encodingFailed, "cannot encode webhook request: \(error)"))
        }
        let url = self.shownURL
        return client.post(
            url: self.url, body: payload, headers: ["Content-Type": "application/json"], timeout: timeout, on: eventLoop,
            cancellation: cancellation
        )
        .flatMapErrorThrowing { error in
            let failure = error as? WebhookClient.Failure
            // Sent, no answer: it may have run (a retry may process it twice), as for Redis.
            let code: RouteError.Code = failure?.isCancelled == true ? .abandoned : failure?.mayHaveActed == true ? .outcomeUnknown : .webhookUnreachable
            throw RouteError(code, "webhook \(url) \(error)")
        }
        .flatMapThrowing { response in
            guard (200..<300).contains(response.status) else {
                // A proxy in front of the backend answers 502 (its upstream broke off) or 504
                // (it timed out) after handing the request on: the backend may have acted.
                if response.status == 502 || response.status == 504 {
                    throw RouteError(
                        .outcomeUnknown, "webhook \(url) answered HTTP \(response.status) (a proxy's): the backend may have acted on it")
                }
                throw RouteError(.webhookRejected, "webhook \(url) answered HTTP \(response.status)")
            }
            do {
                return try Self.decodeReplies(response.body, url: url)
            } catch let error as RouteError {
                // The backend did act on the message: the ERROR must not read as if it had not
                // (a client would send it again, and the backend process it twice).
                let problem = error.description.dropFirst("webhook \(url) ".count)
                throw RouteError(error.code, "webhook \(url) accepted the message (HTTP \(response.status)), but its \(problem)")
            }
        }
    }

    static func encodeRequest(_ m: AppMessage) throws -> ByteBuffer {
        var headers: [String: String] = [:]
        for (n, v) in m.headers where headers[n] == nil { headers[n] = v }
        let bytes = Array(m.body.readableBytesView)
        let text = String(validating: bytes, as: UTF8.self)
        return try WebhookRequest(
            destination: m.destination, session: m.sessionID, instance: m.instanceID, timestamp: m.timestamp, user: m.user,
            contentType: m.contentType, headers: headers, body: text ?? Data(bytes).base64EncodedString(),
            bodyEncoding: text == nil ? "base64" : "utf8"
        ).json
    }

    /// The messages a webhook's 2xx reply asks for: `{"replies": [{"destination", "body"?,
    /// "headers"?, "contentType"?, "user"?, "target"?}]}`; an empty body or no `replies` is none.
    static func decodeReplies(_ body: ByteBuffer, url: String) throws -> [RouteReply] {
        if body.readableBytesView.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) { return [] }
        guard case .object(let object)? = JSONValue.parse(body) else {
            throw RouteError(.webhookBadReply, "webhook \(url) reply is not a JSON object")
        }
        guard let list = object["replies"] else { return [] }
        guard case .array(let items) = list else {
            throw RouteError(.webhookBadReply, "webhook \(url) reply: 'replies' must be an array of objects")
        }
        let replies = try items.map { item -> [String: JSONValue] in
            guard case .object(let reply) = item else {
                throw RouteError(.webhookBadReply, "webhook \(url) reply: 'replies' must be an array of objects")
            }
            return reply
        }
        return try replies.enumerated().map { index, r in
            guard let named = r["destination"]?.string, !named.isEmpty else {
                throw RouteError(.webhookBadReply, "webhook \(url) reply: replies[\(index)].destination is missing")
            }
            let bodyText: String
            switch r["body"] {
            case .string(let s)?: bodyText = s
            case nil, .null?: bodyText = ""
            case let other?: bodyText = other.text  // any other JSON value: its JSON text
            }
            var headers = STOMPHeaders()
            if case .object(let h)? = r["headers"] {
                for (k, v) in h.sorted(by: { $0.key < $1.key }) { headers.add(k, v.stringified) }
            }
            if let ct = r["contentType"]?.string { headers.set("content-type", ct) }
            if headers["content-type"] == nil { headers.add("content-type", "text/plain") }
            var destination = named
            if let user = r["user"] {
                guard let user = user.string, !user.isEmpty else {
                    throw RouteError(.webhookBadReply, "webhook \(url) reply: replies[\(index)].user must be a non-empty string")
                }
                // `x/queue/y` would route to user `<user>x`'s `/queue/y`.
                guard destination.hasPrefix("/") else {
                    throw RouteError(.webhookBadReply, "webhook \(url) reply: replies[\(index)].destination must start with / for a user")
                }
                // To every session of that user subscribed to /user<destination>.
                destination = UserDestinations.routing(user: user, destination: destination)
            }
            let target: RouteReply.Target
            switch r["target"]?.string {
            case nil, "broadcast": target = .broadcast
            case "sender": target = .sender
            case let other?: throw RouteError(.webhookBadReply, "webhook \(url) reply: replies[\(index)].target '\(other)' must be broadcast or sender")
            }
            return RouteReply(destination: destination, body: ByteBuffer(string: bodyText), headers: headers, target: target)
        }
    }
}
