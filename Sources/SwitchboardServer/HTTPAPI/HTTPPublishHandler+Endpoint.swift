import Foundation
import NIOHTTP1

/// Which requests ``HTTPPublishHandler`` answers itself (publishes, health) and which go to
/// the router.
extension HTTPPublishHandler {
    enum Endpoint: Equatable {
        case single(user: String?)
        case batch
        case live
        case ready
        /// Bytes the HTTP parser could not read as a request: answered 400, then closed.
        case malformed
        /// A request for the router whose `Expect` cannot be met: answered 417 here, then closed.
        case unmetExpectation(method: String)
        /// A request for the router that waits for `100 Continue` and announces a body over
        /// `http.max-body-bytes`: answered 413 here, before its body, then closed.
        case announcedTooLarge(method: String)
        /// A `CONNECT` (a tunnel, a proxy's job; what follows its head is not HTTP): answered
        /// 405 here, then closed.
        case tunnelRefused

        /// The route as Hummingbird names it in metrics.
        var route: String {
            switch self {
            case .single(nil): "/api/notification"
            case .single: "/api/users/{user}/notification"
            case .batch: "/api/notifications"
            case .live: "/health/live"
            case .ready: "/health/ready"
            case .malformed: "malformed request"
            case .unmetExpectation: "unmet expectation"
            case .announcedTooLarge: "body too large"
            case .tunnelRefused: "tunnel refused"
            }
        }

        /// The request method, as metrics label it (a route here has one; OpenTelemetry's
        /// `_OTHER` for bytes that were not a request).
        var method: String {
            switch self {
            case .single, .batch: "POST"
            case .live, .ready: "GET"
            case .malformed: "_OTHER"
            case .unmetExpectation(let method), .announcedTooLarge(let method): method
            case .tunnelRefused: "CONNECT"
            }
        }

        /// A request's method as metrics label it: OpenTelemetry's `_OTHER` for any but the
        /// standard ones (the label's values stay few).
        static func methodLabel(_ method: HTTPMethod) -> String {
            switch method {
            case .GET, .HEAD, .POST, .PUT, .DELETE, .CONNECT, .OPTIONS, .TRACE, .PATCH: method.rawValue
            default: "_OTHER"
            }
        }

        var isHealth: Bool { self == .live || self == .ready }
    }

    /// The endpoint `head` asks for, or nil when the router should serve it. Health requests
    /// only when `servesHealth`. (An `Expect` does not matter here: see ``expectation(of:)``.)
    static func endpoint(for head: HTTPRequestHead, servesHealth: Bool = false) -> Endpoint? {
        guard !head.headers.contains(name: "origin") else { return nil }
        var path = Substring(head.uri)
        if let query = path.firstIndex(of: "?") { path = path[..<query] }
        if head.method == .GET {
            guard servesHealth else { return nil }
            switch path {
            case "/health/live": return .live
            case "/health/ready": return .ready
            default: return nil
            }
        }
        guard head.method == .POST else { return nil }
        switch path {
        case "/api/notification": return .single(user: nil)
        case "/api/notifications": return .batch
        default:
            let prefix = "/api/users/", suffix = "/notification"
            guard path.hasPrefix(prefix), path.hasSuffix(suffix), path.count > prefix.count + suffix.count else { return nil }
            let raw = path.dropFirst(prefix.count).dropLast(suffix.count)
            guard !raw.contains("/"), let user = raw.removingPercentEncoding, !user.isEmpty else { return nil }
            return .single(user: user)
        }
    }
}
