import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import SwitchboardCore
import SwitchboardRoutes

/// A gateway instance: the HTTP API and the STOMP endpoint on one port, the fan-out hub,
/// the broker engine and the `/app` routes.
public struct SwitchboardGateway: Sendable {
    public let configuration: SwitchboardConfiguration
    public let services: GatewayServices
    let group: MultiThreadedEventLoopGroup
    let admission = ConnectionAdmission()
    let logger: Logger

    public init(configuration: SwitchboardConfiguration, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: configuration.eventLoopThreads)
        let loops = Array(group.makeIterator())
        let hub = FanoutHub(eventLoops: loops, heartbeatResolution: .milliseconds(Int64(configuration.heartbeatResolutionMs)))
        var routes = RouteTable()
        for route in configuration.routes {
            let pattern = try DestinationPattern(route.destination)
            switch route.kind {
            case .webhook:
                routes.add(pattern, try WebhookRoute(url: route.url, timeout: .milliseconds(Int64(route.timeoutMs))))
            }
        }
        let instanceID = configuration.instanceID ?? Self.randomInstanceID()
        self.services = GatewayServices(configuration: configuration.session, hub: hub, engine: InMemoryEngine(hub: hub),
                                        routes: routes, instanceID: instanceID, logger: logger)
    }

    static func randomInstanceID() -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
        return String((0..<6).map { _ in alphabet.randomElement()! })
    }

    /// Builds the Hummingbird application serving this gateway.
    func makeApplication(onServerRunning: @escaping @Sendable (any Channel) async -> Void) -> some ApplicationProtocol {
        let router = Router()
        PublishAPI(services: services, maxBodyBytes: configuration.apiMaxBodyBytes, eventLoopGroup: group).register(on: router)
        let services = self.services
        let path = configuration.stompPath
        let admission = self.admission
        let wsMax = configuration.session.decoderLimits.maxFrameBytes + 1024
        let server = HTTPServerBuilder { responder in
            STOMPUpgradeChannel(responder: responder, services: services, stompPath: path, maxWebSocketFrameBytes: wsMax, admission: admission)
        }
        return Application(
            router: router,
            server: server,
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "switchboard",
                                 backlog: configuration.backlog),
            onServerRunning: onServerRunning,
            eventLoopGroupProvider: .shared(group),
            logger: logger
        )
    }

    /// Runs until SIGTERM or SIGINT, then drains: new sessions are refused, every session
    /// gets an `ERROR` ("server shutting down, reconnect"), and the process returns once
    /// they are closed or the grace period ends.
    public func run() async throws {
        let logger = self.logger
        let host = configuration.host
        let app = makeApplication { channel in
            logger.notice("switchboard listening", metadata: [
                "address": "\(host):\(channel.localAddress?.port ?? 0)",
                "stomp": "\(configuration.stompPath)",
                "engine": "\(services.engine.name)",
                "instance": "\(services.instanceID)",
            ])
        }
        let drain = DrainService(services: services, admission: admission, grace: .milliseconds(Int64(configuration.shutdownGraceMs)), logger: logger)
        let group = ServiceGroup(configuration: .init(services: [.init(service: app), .init(service: drain)],
                                                       gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        for shard in services.hub.shards { shard.stop() }
        try? await self.group.shutdownGracefully()
    }
}

/// Closes sessions at shutdown (runs before the HTTP server stops).
struct DrainService: Service {
    let services: GatewayServices
    let admission: ConnectionAdmission
    let grace: TimeAmount
    let logger: Logger

    func run() async throws {
        try? await gracefulShutdown()
        admission.stopAdmitting()
        let open = services.stats.connectionsOpen.load(ordering: .relaxed)
        logger.notice("shutting down: closing sessions", metadata: ["sessions": "\(open)"])
        for shard in services.hub.shards { shard.closeAll(reason: "server shutting down, reconnect") }
        let deadline = NIODeadline.now() + grace
        while services.stats.connectionsOpen.load(ordering: .relaxed) > 0 && NIODeadline.now() < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }
}
