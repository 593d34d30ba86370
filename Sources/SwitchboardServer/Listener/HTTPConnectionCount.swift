import NIOCore
import Synchronization

/// The plain-HTTP connections (API calls, not WebSocket sessions) open on one listening port,
/// against `http.max-connections`: past it a new HTTP connection is answered 503 and closed
/// (``FirstRequestRouter``), so a client holding many keep-alive connections cannot take every
/// file descriptor the sessions need. Each port counts its own: a flood on the public port
/// does not lock backends out of `http.api-port`.
final class HTTPConnectionCount: Sendable {
    /// Which port, for metrics: `main` or `api`.
    let port: String
    /// 0: no limit.
    let limit: Int
    let open = Atomic<Int>(0)
    let refused = Atomic<Int>(0)

    init(port: String, limit: Int) {
        self.port = port
        self.limit = limit
    }

    /// Places past ``limit`` kept for health checks (``admit(_:healthCheck:)``): such a
    /// connection is answered once and closed (``FirstRequestRouter`` adds
    /// `Connection: close` to its request), and closed after ``healthCheckHold`` whatever.
    static let healthCheckReserve = 16
    static let healthCheckHold = TimeAmount.seconds(10)

    /// How a connection was admitted.
    enum Admission {
        case refused
        case admitted
        /// On a place of the health-check reserve.
        case reserve
    }

    /// Counts `channel` until it closes; refused (counted) when the port is full. A
    /// `healthCheck` (`GET /health…`) may take one of ``healthCheckReserve`` places past the
    /// limit: a flood of API connections made the probes fail, and the load balancer (or the
    /// kubelet's liveness probe, restarting the pod) took a serving instance out.
    func admit(_ channel: any Channel, healthCheck: Bool = false) -> Admission {
        // Checked and counted in one step: two connections arriving together at the last place
        // do not both see the port over the limit.
        let limit = healthCheck && self.limit > 0 ? self.limit + Self.healthCheckReserve : self.limit
        var current = open.load(ordering: .relaxed)
        while true {
            if limit > 0, current >= limit {
                refused.add(1, ordering: .relaxed)
                return .refused
            }
            let (exchanged, original) = open.weakCompareExchange(expected: current, desired: current + 1, ordering: .relaxed)
            if exchanged { break }
            current = original
        }
        channel.closeFuture.whenComplete { _ in self.open.subtract(1, ordering: .relaxed) }
        guard limit > self.limit, current >= self.limit else { return .admitted }
        // Kept alive, a connection that came for a health check could hold its place (and
        // publish on it) for good.
        channel.eventLoop.scheduleTask(in: Self.healthCheckHold) { channel.close(promise: nil) }
        return .reserve
    }

    /// The answer to a connection over the limit: a 503 that closes the connection.
    static func refusal(limit: Int) -> String {
        // The API's error shape: the request as a whole, no field at fault.
        let body = #"{"error":"too many HTTP connections on this port (http.max-connections \#(limit)); retry later","field":null}"#
        return "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: \(body.utf8.count)\r\n"
            + "connection: close\r\nretry-after: 1\r\n\r\n" + body
    }
}
