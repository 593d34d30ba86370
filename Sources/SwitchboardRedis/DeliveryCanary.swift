import Logging
import NIOConcurrencyHelpers
import NIOCore
import Redis
import SwitchboardWire

/// Proves that the cross-instance path delivers: every `interval` the instance publishes a
/// canary on `<prefix>canary` (on Redis Cluster the shard channel `<prefix>{canary}`) and watches for it to come back through its own subscriber
/// connection, like any message does. When its own canary is older than `timeout` (Redis
/// stalled, the subscriber connection silently dead, a publish path broken), the instance is
/// not ready (``lateReason``), so a green readiness check means "delivering". Peers' canaries
/// are recorded too (``peers``).
package final class DeliveryCanary: Sendable {
    package let interval: TimeAmount
    package let timeout: TimeAmount
    let redis: GatewayRedis
    let channel: String
    let instanceID: String
    let loop: any EventLoop
    let logger: Logger

    struct State {
        var started: NIODeadline?
        /// When this instance's last canary came back.
        var ownSeen: NIODeadline?
        var peers: [String: NIODeadline] = [:]
        var task: RepeatedTask?
        var subscription: RedisCallbackSubscription?
    }

    private let state = NIOLockedValueBox(State())

    package init(redis: GatewayRedis, naming: RedisChannelNaming, instanceID: String, interval: TimeAmount, timeout: TimeAmount, loop: any EventLoop, logger: Logger) {
        self.redis = redis
        self.channel = naming.canaryChannel(sharded: redis.isCluster)
        self.instanceID = instanceID
        self.interval = interval
        self.timeout = timeout
        self.loop = loop
        self.logger = logger
    }

    /// Subscribes and starts publishing. The subscription is re-established by the client after
    /// a reconnect.
    package func start() async throws {
        let sub = try await redis.subscribe(to: [channel], kind: redis.gatewayChannelKind) { [weak self] message in
            self?.received(String(buffer: message.payload))
        }
        let redis = self.redis, channel = self.channel, instanceID = self.instanceID
        let task = loop.scheduleRepeatedTask(initialDelay: .zero, delay: interval) { _ in
            if redis.isCluster {
                _ = redis.send(SPUBLISH(channel: channel, message: .string(instanceID)))
            } else {
                _ = redis.send(PUBLISH(channel: channel, message: .string(instanceID)))
            }
        }
        state.withLockedValue { s in
            s.started = .now()
            s.subscription = sub
            s.task = task
        }
    }

    package func stop() {
        let task = state.withLockedValue { s in
            defer { s.task = nil }
            return s.task
        }
        task?.cancel()
    }

    /// Called when the own canary comes back after being late: the path works again, and what
    /// it may have lost meanwhile is read from history (see ``RedisEngine``).
    let onRecovered = NIOLockedValueBox<(@Sendable () -> Void)?>(nil)

    func received(_ sender: String) {
        let now = NIODeadline.now()
        let timeout = self.timeout
        let recovered = state.withLockedValue { s -> Bool in
            guard sender == instanceID else {
                s.peers[sender] = now
                return false
            }
            defer { s.ownSeen = now }
            guard let since = s.ownSeen ?? s.started else { return false }
            return now - since > timeout
        }
        if recovered {
            logger.info("delivery canary back")
            onRecovered.withLockedValue { $0 }?()
        }
    }

    /// Seconds since this instance's own canary last came back (since start while none has).
    package var ownAge: Double? {
        state.withLockedValue { s in
            guard let since = s.ownSeen ?? s.started else { return nil }
            return Double((NIODeadline.now() - since).nanoseconds) / 1e9
        }
    }

    /// Why the instance is not delivering, or nil while its canary is on time.
    package var lateReason: String? {
        guard let age = ownAge, age * 1e9 > Double(timeout.nanoseconds) else { return nil }
        return String(format: "delivery canary late: own canary not seen for %.1f s", age)
    }

    /// Seconds since each peer's canary was last seen.
    package var peers: [String: Double] {
        let now = NIODeadline.now()
        return state.withLockedValue { s in s.peers.mapValues { Double((now - $0).nanoseconds) / 1e9 } }
    }
}
