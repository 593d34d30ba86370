import Dispatch
import HTTPTypes
import Metrics
import NIOConcurrencyHelpers

/// Hummingbird's request metrics (`hb.requests`, `http.server.request.duration`, by route and
/// status) for the requests ``HTTPPublishHandler`` answers itself, so `/metrics` counts them
/// as if the router had.
final class HTTPRouteMetrics: Sendable {
    private struct Key: Hashable {
        var route: String
        var method: String
        var status: Int
    }
    private let cache = NIOLockedValueBox<[Key: (Counter, Metrics.Timer)]>([:])
    /// Where the metrics are made; nil: the bootstrapped system's, looked up when one is first
    /// needed.
    private let factory: (any MetricsFactory)?

    init(factory: (any MetricsFactory)? = nil) { self.factory = factory }

    func record(_ endpoint: HTTPPublishHandler.Endpoint, status: HTTPResponse.Status, since start: UInt64) {
        let route = endpoint.route
        let key = Key(route: route, method: endpoint.method, status: status.code)
        let (counter, timer) = cache.withLockedValue { cache in
            if let found = cache[key] { return found }
            let dimensions = [("http.route", route), ("http.request.method", endpoint.method), ("http.response.status_code", String(status.code))]
            let factory = self.factory ?? MetricsSystem.factory
            let made = (
                Counter(label: "hb.requests", dimensions: dimensions, factory: factory),
                Metrics.Timer(label: "http.server.request.duration", dimensions: dimensions, preferredDisplayUnit: .seconds, factory: factory)
            )
            cache[key] = made
            return made
        }
        counter.increment()
        timer.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds - start))
    }
}
