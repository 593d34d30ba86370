import Logging
import NIOConcurrencyHelpers
import NIOCore
import SwitchboardRoutes
import SwitchboardWire
import Synchronization

/// Why a session was ended with an `ERROR`, for metrics.
package enum SessionErrorKind: String, Sendable, CaseIterable {
    case protocolViolation = "protocol"
    case limit
    case slowConsumer = "slow_consumer"
    case heartBeatTimeout = "heartbeat_timeout"
    case auth
    case route
    case shutdown
    /// The instance lost its presence lease in Redis (reaped while unreachable): its sessions
    /// are closed so that they reconnect and are registered again.
    case leaseLost = "lease_lost"

    package var index: Int { Self.allCases.firstIndex(of: self)! }

    /// Whether the connection, after its `ERROR` and close frame, waits briefly for the
    /// client's close frame (``WebSocketSTOMPTransport/close(after:)``, at most its 2 s
    /// grace): not for a client that does not read or answer (a slow consumer, a heart-beat
    /// timeout). A shutdown and a lost lease linger too: closed at once with the client's
    /// bytes unread (a step's frames behind it), the close was a reset, which may cost the
    /// client the `RECEIPT` the drain waited for.
    package var lingers: Bool {
        switch self {
        case .protocolViolation, .limit, .auth, .route, .shutdown, .leaseLost: true
        case .slowConsumer, .heartBeatTimeout: false
        }
    }
}

/// An atomic counter that can live in an array (`Atomic` itself cannot be copied).
package final class AtomicCounter: Sendable {
    private let value = Atomic<Int>(0)
    package init() {}
    @inlinable package func add(_ n: Int, ordering: AtomicUpdateOrdering = .relaxed) { _add(n) }
    @inlinable package func subtract(_ n: Int, ordering: AtomicUpdateOrdering = .relaxed) { _add(-n) }
    package func load(ordering: AtomicLoadOrdering = .relaxed) -> Int { value.load(ordering: .relaxed) }
    @usableFromInline func _add(_ n: Int) { value.add(n, ordering: .relaxed) }
}

/// Gauges and rare-event counters shared by all sessions (hot-path counters are per event
/// loop: see ``ShardCounters``).
package final class GatewayStats: Sendable {
    package let connectionsOpen = AtomicCounter()
    package let connectionsTotal = AtomicCounter()
    package let sessionsConnected = AtomicCounter()
    package let subscriptions = AtomicCounter()
    /// Sessions by negotiated version: 1.0, 1.1, 1.2.
    package let sessionsByVersion = [AtomicCounter(), AtomicCounter(), AtomicCounter()]
    /// Sessions ended with an `ERROR`, by ``SessionErrorKind``.
    package let errors = SessionErrorKind.allCases.map { _ in AtomicCounter() }

    package func errors(_ kind: SessionErrorKind) -> Int { errors[kind.index].load() }
    package init() {}
}

/// Sessions per user on this instance, to enforce ``SessionConfiguration/maxSessionsPerUser``.
package final class UserSessionCounter: Sendable {
    private let counts = NIOLockedValueBox<[String: Int]>([:])
    package init() {}

    /// Counts one more session of `user`; false (and nothing counted) if it has `limit` already.
    package func add(_ user: String, limit: Int) -> Bool {
        counts.withLockedValue { c in
            let n = c[user, default: 0]
            guard n < limit else { return false }
            c[user] = n + 1
            return true
        }
    }

    /// Sessions counted, of all users.
    package var total: Int { counts.withLockedValue { $0.values.reduce(0, +) } }

    package func remove(_ user: String) {
        counts.withLockedValue { c in
            let n = c[user, default: 0] - 1
            c[user] = n > 0 ? n : nil
        }
    }
}

/// Everything a session needs from the gateway, shared by all sessions.
package final class GatewayServices: Sendable {
    package let configuration: SessionConfiguration
    package let hub: FanoutHub
    package let engine: any BrokerEngine
    package let routes: RouteTable
    /// The rules every session's state machine consults.
    package let policy: SessionPolicy
    package let instanceID: String
    package let messageIDs: MessageIDGenerator
    package let sessionIDs: MessageIDGenerator
    package let stats = GatewayStats()
    package let userSessions = UserSessionCounter()
    package let logger: Logger
    /// The `switchboard.routes` logger: `/app` routes, their backends' replies.
    package let routesLogger: Logger
    /// Bounds the "route failed" lines (a backend down fails every SEND to it).
    package let routeFailedLog = LogThrottle()
    /// Lifecycle facts go here (with events on: to Redis, or to the embedded broker's events
    /// webhook); nil: none are recorded.
    package let lifecycle: (any LifecycleRecorder)?

    /// Sums the counters of every event loop.
    package func counters() async -> ShardCounters {
        var total = ShardCounters()
        for shard in hub.shards {
            if let c = try? await shard.readCounters().get() { total.add(c) }
        }
        return total
    }

    package init(
        configuration: SessionConfiguration, hub: FanoutHub, engine: any BrokerEngine, routes: RouteTable, instanceID: String,
        messageIDs: MessageIDGenerator? = nil, logger: Logger, routesLogger: Logger? = nil, lifecycle: (any LifecycleRecorder)? = nil,
        incarnation: String? = nil
    ) {
        self.configuration = configuration
        self.hub = hub
        self.engine = engine
        self.routes = routes
        self.policy = SessionPolicy(configuration: configuration, routes: routes)
        self.instanceID = instanceID
        self.messageIDs = messageIDs ?? MessageIDGenerator(instanceID: instanceID)
        // With an incarnation (this process's own token), session ids stay unique when the
        // instance restarts with the same id: `<instance>-s-<incarnation>-<n>`.
        self.sessionIDs = MessageIDGenerator(instanceID: instanceID + "-s" + (incarnation.map { "-" + $0 } ?? ""))
        self.logger = logger
        self.routesLogger = routesLogger ?? logger
        self.lifecycle = lifecycle
    }
}
