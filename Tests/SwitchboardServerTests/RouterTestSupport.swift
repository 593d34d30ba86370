import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import NIOPosix
import Prometheus
import SwitchboardAuth
import SwitchboardCore
import SwitchboardRoutes
import SwitchboardWire

@testable import SwitchboardServer

/// The HTTP API's Hummingbird router, built as ``SwitchboardGateway/makeListener(onServerRunning:)``
/// builds it, on an in-memory engine; requests go straight to the router (HummingbirdTesting's
/// `.router` framework), publishing on one event loop.
final class APIRouterHarness: Sendable {
    let hub = FanoutHub()
    let services: GatewayServices
    let admission = ConnectionAdmission()
    let loop = MultiThreadedEventLoopGroup.singleton.next()
    let app: any ApplicationProtocol

    init(allowedOrigins: [String] = [], keys: [APIKeyStore.Key] = [], maxBodyBytes: Int = 4096, maxBatchItems: Int = 3) {
        let services = GatewayServices(
            configuration: SessionConfiguration(), hub: hub, engine: InMemoryEngine(hub: hub),
            routes: RouteTable(), instanceID: "t1", logger: Logger(label: "test"))
        let router = Router()
        router.add(middleware: MetricsMiddleware())
        router.add(middleware: CORSAllowlistMiddleware(allowedOrigins: allowedOrigins))
        router.add(middleware: NoRouteMiddleware())
        MetricsEndpoint(registry: PrometheusCollectorRegistry(), services: services).register(on: router)
        let publisher = NotificationPublisher(
            services: services, apiKeys: APIKeyStore(keys: keys), maxBodyBytes: maxBodyBytes, maxBatchItems: maxBatchItems)
        PublishAPI(services: services, publisher: publisher, eventLoopGroup: loop, admission: admission).register(on: router)
        self.services = services
        self.app = Application(router: router)
    }

    func test(_ run: @Sendable (any TestClientProtocol) async throws -> Void) async throws {
        try await app.test(.router, run)
    }

    /// A subscriber of `pattern` on the loop the API publishes on.
    func subscribe(_ pattern: String) async throws -> APISubscriber {
        try await APISubscriber.subscribe(try DestinationPattern(pattern), hub: hub, loop: loop)
    }
}

/// A subscription in the hub that keeps what it is delivered (touched on its loop only).
final class APISubscriber: SubscriptionSink, @unchecked Sendable {
    let loop: any EventLoop
    private var messages: [PublishedMessage] = []
    private var subscription: LocalSubscription?

    private init(loop: any EventLoop) { self.loop = loop }

    static func subscribe(_ pattern: DestinationPattern, hub: FanoutHub, loop: any EventLoop) async throws -> APISubscriber {
        let subscriber = APISubscriber(loop: loop)
        try await loop.submit {
            let subscription = LocalSubscription(id: "sub-0", pattern: pattern, ackMode: .auto, sink: subscriber)
            subscriber.subscription = subscription
            hub.shard(for: loop).add(subscription)
        }.get()
        return subscriber
    }

    /// What was delivered so far (the hub hands messages over on the loop, in order, so
    /// whatever was published before this call is in).
    func received() async throws -> [PublishedMessage] {
        try await loop.submit { self.messages }.get()
    }

    func deliver(_ message: PublishedMessage, to subscription: LocalSubscription, batch: inout DeliveryBatch) {
        messages.append(message)
    }

    func flushDeliveries() {}
}

extension TestClientProtocol {
    /// POSTs `json` to `uri`.
    func post(_ uri: String, _ json: String, headers: HTTPFields = [:]) async throws -> TestResponse {
        try await execute(uri: uri, method: .post, headers: headers, body: ByteBuffer(string: json))
    }
}

extension TestResponse {
    var text: String { String(buffer: body) }

    /// The body as a JSON object.
    var object: [String: Any]? { try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any] }
}
