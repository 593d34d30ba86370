import Logging
import NIOConcurrencyHelpers
import NIOCore
import Redis
import ServiceLifecycle
import SwitchboardCore
import SwitchboardRedis
import SwitchboardWire

/// Closes sessions at shutdown (runs before the listener stops).
struct DrainService: Service {
    let services: GatewayServices
    let admission: ConnectionAdmission
    let pending: PendingHandshakes
    /// The Redis clients whose held commands fail when sessions close.
    let redis: [GatewayRedis]
    /// Between "not ready" and closing sessions.
    let delay: TimeAmount
    /// Longest wait for sessions to close.
    let grace: TimeAmount
    /// The API port's loops: their connections still in their first request are left to the
    /// API listener (it stops last).
    let apiLoops: [any EventLoop]
    let logger: Logger
    /// When the graceful shutdown began.
    let started = NIOLockedValueBox<ContinuousClock.Instant?>(nil)

    func run() async throws {
        try? await gracefulShutdown()
        started.withLockedValue { $0 = .now }
        // 1. Not ready, no new sessions (the load balancer stops sending clients here).
        admission.stopAdmitting()
        let open = services.stats.connectionsOpen.load()
        logger.notice("draining: not ready, refusing new sessions", metadata: ["sessions": "\(open)", "delay.ms": "\(delay.nanoseconds / 1_000_000)"])
        // 2. Give the load balancer time to notice before clients reconnect.
        //    (Cancelled, by a second signal or past the bound: no delay, no grace, and sessions
        //    are closed without waiting for their steps.)
        try? await Task.sleep(nanoseconds: UInt64(max(delay.nanoseconds, 0)))
        // 3. Publishes held for a Redis connection that is not back fail now, with their explicit
        //    refusal (503, ERROR), before the sessions and the API connections close: they
        //    would be cut off unanswered. Every session gets an ERROR (after its step in
        //    flight, whose receipt goes out).
        for client in redis { client.stopWaiting() }
        logger.notice("shutting down: closing sessions", metadata: ["sessions": "\(services.stats.connectionsOpen.load())"])
        for shard in services.hub.shards { shard.closeAll(reason: "server shutting down, reconnect") }
        // (A second signal during this wait ends it: the sessions are closed at once below.)
        await sessionsClosed(within: grace, untilCancelled: true)
        // Connections still sending their first request go now (not at the start: an
        // upgrade under way gets its 503, an API call its answer, during the drain).
        pending.closeAll(sparing: apiLoops)
        // 4. Sessions still waiting for a step (a slow webhook, a SUBSCRIBE waiting for Redis)
        //    are closed now; their clients get the ERROR without the step's receipt.
        let busy = services.stats.connectionsOpen.load()
        guard busy > 0 else { return }
        logger.warning("shutting down: sessions still busy after the grace; closing them", metadata: ["sessions": "\(busy)"])
        for shard in services.hub.shards { shard.closeAll(reason: "server shutting down, reconnect", waitForStep: false) }
        await sessionsClosed(within: .seconds(1))
    }

    /// Returns once no session is open, or after `time`, or (`untilCancelled`) once cancelled.
    /// Otherwise cancelled, it still waits (for the closes under way to go out), without
    /// spinning: its sleeps are not cancelled.
    private func sessionsClosed(within time: TimeAmount, untilCancelled: Bool = false) async {
        let deadline = NIODeadline.now() + time
        while services.stats.connectionsOpen.load() > 0 && NIODeadline.now() < deadline && !(untilCancelled && Task.isCancelled) {
            await Task.detached { try? await Task.sleep(for: .milliseconds(20)) }.value
        }
    }
}

/// Starts the Redis side (engine, consumer groups, inbound routes) and stops it last.
struct RedisService: Service {
    let parts: SwitchboardGateway.RedisParts
    let services: GatewayServices
    let logger: Logger

    func run() async throws {
        parts.replication?.redis.start()
        do {
            try await parts.engine.start()
        } catch {
            await parts.replication?.redis.shutdown()
            throw error
        }
        let replicaCheck = parts.replication.map { replication in Task { await replication.warnIfTooFewReplicas(logger: services.routesLogger) } }
        await parts.lifecycle?.start()
        let leaseTask = parts.lease.map { lease in Task { await lease.run() } }
        // Consumer groups are created as soon as Redis answers (it may not be up yet), and
        // re-created whenever Redis lost them; the instance is not ready until they exist.
        let groupsTask = Task {
            await withTaskGroup(of: Void.self) { tasks in
                for groups in parts.streamRoutes.compactMap(\.groups) {
                    tasks.addTask { await groups.maintain(logger: services.routesLogger) }
                }
            }
        }
        let inbound = RedisInboundRoutes(
            redis: parts.redis, engine: parts.engine, hub: services.hub, messageIDs: services.messageIDs,
            configuration: services.configuration, logger: services.routesLogger)
        try await inbound.start(parts.inbound)
        try? await gracefulShutdown()
        groupsTask.cancel()
        // Its last check completes before the Redis client and the event loops go.
        await groupsTask.value
        await inbound.stop()
        // The sessions' last facts (`disconnected(drain)`), the lease renewed meanwhile (a
        // flush slower than a short `events.lease-ttl-ms` got the stopping instance reaped as
        // `node-lost`), then the lease given up: whatever is still registered is written as
        // drained, and nobody reaps this instance.
        await parts.lifecycle?.flush(timeout: .seconds(3))
        leaseTask?.cancel()
        await leaseTask?.value
        await parts.lease?.leave()
        await parts.engine.shutdown()
        replicaCheck?.cancel()
        await replicaCheck?.value
        await parts.replication?.redis.shutdown()
    }
}

/// Delivers the embedded broker's lifecycle events at a graceful stop: it is stopped after
/// the sessions were closed (services stop in reverse order), so their `disconnected(drain)`
/// events are queued, and waits for them within `drainTimeout`.
struct EventsWebhookService: Service {
    let events: WebhookLifecycle
    let drainTimeout: Duration

    func run() async throws {
        try? await gracefulShutdown()
        await events.flush(timeout: drainTimeout)
    }
}
