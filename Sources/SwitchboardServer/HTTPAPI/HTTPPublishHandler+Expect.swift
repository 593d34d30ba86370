import Foundation
import HTTPTypes
import NIOHTTP1

/// `Expect` (RFC 9110 §10.1.1): a client that sends `Expect: 100-continue` waits for
/// `100 Continue` before it sends the body (curl does for large bodies, 1 s at most).
/// ``HTTPPublishHandler`` writes it for both paths, the router's too (Hummingbird does not),
/// when the request is the one answered next: a 100 never goes out before the answers owed for
/// the requests pipelined before it, nor after the request's own answer began, nor twice.
///
/// - A request whose head already decides its answer gets that answer instead: a
///   `Content-Length` over `http.max-body-bytes` is the early 413, which closes the connection,
///   on both paths (the router would have the client upload the body first, then refuse it).
///   Every other request gets its 100, an unauthorized or an unknown route's too: their body is
///   read (and dropped) as without `Expect`, and the connection stays open.
/// - On HTTP/1.0 the field is ignored (no 100, no 417): RFC 9110 has a server ignore
///   `100-continue` there (a 1.0 client may not know 1xx answers).
/// - Any other expectation (alone or with `100-continue`) is a JSON 417 naming the field
///   `Expect`, whatever the route; the request is not processed and, as after the early 413,
///   the connection closes after the answer without reading the body.
extension HTTPPublishHandler {
    enum Expectation: Equatable {
        /// No `Expect` (or only empty members, or HTTP/1.0).
        case none
        /// `100-continue`, in any case.
        case continue100
        /// The first member that is not `100-continue`.
        case unmet(String)
    }

    /// What `head` expects.
    static func expectation(of head: HTTPRequestHead) -> Expectation {
        guard head.version.major > 1 || (head.version.major == 1 && head.version.minor >= 1) else { return .none }
        var expectation = Expectation.none
        for value in head.headers["expect"] {
            for member in value.split(separator: ",") {
                let token = member.trimmingCharacters(in: .whitespaces)
                if token.isEmpty { continue }
                guard token.lowercased() == "100-continue" else { return .unmet(token) }
                expectation = .continue100
            }
        }
        return expectation
    }

    /// The 417 for an expectation other than `100-continue` (its first 64 characters quoted).
    static func expectationFailed(_ member: String) -> NotificationPublisher.Failure {
        let shown = member.count > 64 ? String(member.prefix(64)) + "…" : member
        return NotificationPublisher.Failure(
            status: .expectationFailed, message: "expectation '\(shown)' cannot be met: only 100-continue is supported", field: "Expect",
            closesConnection: true)
    }

    /// The 405 for a `CONNECT`: the gateway is no proxy.
    static let tunnelRefused = NotificationPublisher.Failure(
        status: .methodNotAllowed, message: "CONNECT is not supported: the gateway is not a proxy", field: "method", closesConnection: true)

    /// The interim answer `HTTP/1.1 100 Continue`; NIO's encoder writes a 1xx head without
    /// framing headers and keeps the request's method for the final answer.
    static let continueHead = HTTPResponseHead(version: .http1_1, status: .continue)
}

extension HTTPPublishHandler {
    /// Whether `head` asks for a protocol upgrade as NIO's parser reads it: an `Upgrade` field
    /// and the `upgrade` token in `Connection`.
    static func asksUpgrade(_ head: HTTPRequestHead) -> Bool {
        guard head.headers.contains(name: "upgrade") else { return false }
        return head.headers[canonicalForm: "connection"].contains { $0.utf8.count == 7 && $0.lowercased() == "upgrade" }
    }
}
