import Logging
import NIOConcurrencyHelpers
import NIOCore
import SwitchboardWire
import Synchronization

/// Why a session was ended with an `ERROR`, for metrics.
public enum SessionErrorKind: String, Sendable, CaseIterable {
    case protocolViolation = "protocol"
    case limit
    case slowConsumer = "slow_consumer"
    case heartBeatTimeout = "heartbeat_timeout"
    case auth
    case route
    case shutdown

    public var index: Int { Self.allCases.firstIndex(of: self)! }
}

/// An atomic counter that can live in an array (`Atomic` itself cannot be copied).
public final class AtomicCounter: Sendable {
    private let value = Atomic<Int>(0)
    public init() {}
    @inlinable public func add(_ n: Int, ordering: AtomicUpdateOrdering = .relaxed) { _add(n) }
    @inlinable public func subtract(_ n: Int, ordering: AtomicUpdateOrdering = .relaxed) { _add(-n) }
    public func load(ordering: AtomicLoadOrdering = .relaxed) -> Int { value.load(ordering: .relaxed) }
    @usableFromInline func _add(_ n: Int) { value.add(n, ordering: .relaxed) }
}

/// Gauges and rare-event counters shared by all sessions (hot-path counters are per event
/// loop: see ``ShardCounters``).
public final class GatewayStats: Sendable {
    public let connectionsOpen = AtomicCounter()
    public let connectionsTotal = AtomicCounter()
    public let sessionsConnected = AtomicCounter()
    public let subscriptions = AtomicCounter()
    /// Sessions by negotiated version: 1.0, 1.1, 1.2.
    public let sessionsByVersion = [AtomicCounter(), AtomicCounter(), AtomicCounter()]
    /// Sessions ended with an `ERROR`, by ``SessionErrorKind``.
    public let errors = SessionErrorKind.allCases.map { _ in AtomicCounter() }

    public func errors(_ kind: SessionErrorKind) -> Int { errors[kind.index].load() }
    public init() {}
}

/// Sessions per user on this instance, to enforce ``SessionConfiguration/maxSessionsPerUser``.
public final class UserSessionCounter: Sendable {
    private let counts = NIOLockedValueBox<[String: Int]>([:])
    public init() {}

    /// Counts one more session of `user`; false (and nothing counted) if it has `limit` already.
    public func add(_ user: String, limit: Int) -> Bool {
        counts.withLockedValue { c in
            let n = c[user, default: 0]
            guard n < limit else { return false }
            c[user] = n + 1
            return true
        }
    }

    public func remove(_ user: String) {
        counts.withLockedValue { c in
            let n = c[user, default: 0] - 1
            c[user] = n > 0 ? n : nil
        }
    }
}

/// Everything a session needs from the gateway, shared by all sessions.
public final class GatewayServices: Sendable {
    public let configuration: SessionConfiguration
    public let hub: FanoutHub
    public let engine: any BrokerEngine
    public let routes: RouteTable
    /// The rules every session's state machine consults.
    package let policy: SessionPolicy
    public let instanceID: String
    public let messageIDs: MessageIDGenerator
    public let sessionIDs: MessageIDGenerator
    public let stats = GatewayStats()
    public let userSessions = UserSessionCounter()
    public let logger: Logger

    /// Sums the counters of every event loop.
    public func counters() async -> ShardCounters {
        var total = ShardCounters()
        for shard in hub.shards {
            if let c = try? await shard.readCounters().get() { total.add(c) }
        }
        return total
    }

    public init(
        configuration: SessionConfiguration, hub: FanoutHub, engine: any BrokerEngine, routes: RouteTable, instanceID: String,
        messageIDs: MessageIDGenerator? = nil, logger: Logger
    ) {
        self.configuration = configuration
        self.hub = hub
        self.engine = engine
        self.routes = routes
        self.policy = SessionPolicy(configuration: configuration, routes: routes)
        self.instanceID = instanceID
        self.messageIDs = messageIDs ?? MessageIDGenerator(instanceID: instanceID)
        self.sessionIDs = MessageIDGenerator(instanceID: instanceID + "-s")
        self.logger = logger
    }
}
