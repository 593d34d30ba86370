import Logging
import NIOCore
import Synchronization

/// Counters the sessions keep for `/health` and metrics.
public final class GatewayStats: Sendable {
    public let connectionsOpen = Atomic<Int>(0)
    public let connectionsTotal = Atomic<Int>(0)
    public let sessionsConnected = Atomic<Int>(0)
    public let subscriptions = Atomic<Int>(0)
    public let framesIn = Atomic<Int>(0)
    public let messagesDelivered = Atomic<Int>(0)
    public let slowConsumerDisconnects = Atomic<Int>(0)
    public let heartBeatTimeouts = Atomic<Int>(0)
    public let protocolErrors = Atomic<Int>(0)
    public init() {}
}

/// Everything a session needs from the gateway, shared by all sessions.
public final class GatewayServices: Sendable {
    public let configuration: SessionConfiguration
    public let hub: FanoutHub
    public let engine: any BrokerEngine
    public let routes: RouteTable
    public let instanceID: String
    public let messageIDs: MessageIDGenerator
    public let sessionIDs: MessageIDGenerator
    public let stats = GatewayStats()
    public let logger: Logger

    public init(configuration: SessionConfiguration, hub: FanoutHub, engine: any BrokerEngine, routes: RouteTable, instanceID: String,
                messageIDs: MessageIDGenerator? = nil, logger: Logger) {
        self.configuration = configuration
        self.hub = hub
        self.engine = engine
        self.routes = routes
        self.instanceID = instanceID
        self.messageIDs = messageIDs ?? MessageIDGenerator(instanceID: instanceID)
        self.sessionIDs = MessageIDGenerator(instanceID: instanceID + "-s")
        self.logger = logger
    }
}
