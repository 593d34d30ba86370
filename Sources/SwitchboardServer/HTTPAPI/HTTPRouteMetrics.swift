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
        var status: Int
    }
    private let cache = NIOLockedValueBox<[Key: (Counter, Metrics.Timer)]>([:])

    func record(_ endpoint: HTTPPublishHandler.Endpoint, status: HTTPResponse.Status, since start: UInt64) {
        let route = endpoint.route
        let key = Key(route: route, status: status.code)
        let (counter, timer) = cache.withLockedValue { cache in
            if let found = cache[key] { return found }
            let dimensions = [("http.route", route), ("http.request.method", endpoint.method), ("http.response.status_code", String(status.code))]
            let made = (
                Counter(label: "hb.requests", dimensions: dimensions), Metrics.Timer(label: "http.server.request.duration", dimensions: dimensions, preferredDisplayUnit: .seconds)
            )
            cache[key] = made
            return made
        }
        counter.increment()
        timer.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds - start))
    }
}
