import Logging
import Metrics
import NIOCore
import Redis
import SwitchboardWire

/// This instance's lease in Redis, and the reaping of instances whose lease expired.
///
/// Every ``Settings/renewInterval`` the instance renews its lease (`switchboard_lease_renew`:
/// a key expiring after ``Settings/ttl``, and its renewal time in a sorted set), then asks
/// `switchboard_lease_claim` for an instance whose lease expired more than
/// ``Settings/grace`` ago. The claim takes that instance's reaping lock (`SET NX`) and moves
/// its registry aside in one step, so however many instances notice at once, one reaps; it
/// then turns the registry, a chunk at a time, into `disconnected(node-lost)` events and the
/// `user-offline`/`destination-vacated` that follow (`switchboard_lease_reap`). Each session
/// is reaped atomically and removed from the registry in the same step, so even a reaper that
/// dies halfway (its lock expires and another takes over) writes each event once.
///
/// An instance that finds its own lease lost (Redis unreachable for longer than the ttl, and
/// reaped meanwhile, or Redis lost its data) is told through `onLost`, once per loss (see
/// ``RegistryLosses``): its sessions are no longer in presence, so the gateway closes them and
/// they reconnect.
///
/// A reap stopped halfway is finished: a reaper whose call failed claims its own lock again at
/// once, and an instance that came back while its reaper died reaps its own old sessions left
/// aside (they were closed when it was told of the loss).
package final class InstanceLease: Sendable {
    package struct Settings: Sendable, Equatable {
        package var ttl: Duration
        package var renewInterval: Duration
        package var grace: Duration
        /// Sessions reaped per call.
        package var reapChunk: Int
        /// After this instance reconnected to Redis, how long it renews before it reaps again, on
        /// top of the ttl: the longest another live instance may take to get back (its reconnect
        /// backoff).
        package var settle: Duration
        package init(
            ttl: Duration = .seconds(5), renewInterval: Duration = .seconds(1), grace: Duration = .zero, reapChunk: Int = 500,
            settle: Duration = .seconds(10)
        ) {
            self.settle = settle
            self.ttl = ttl
            self.renewInterval = renewInterval
            self.grace = grace
            self.reapChunk = reapChunk
        }
    }

    let client: RedisClient
    let stream: LifecycleStreamSettings
    let instance: String
    let settings: Settings
    let logger: Logger
    let onLost: @Sendable () -> Void
    /// Whether Redis applied a batch of this instance's facts: from then on it is registered
    /// (and known to reapers) even if it never renewed its lease.
    let registered: @Sendable () -> Bool
    /// The registry losses told to this instance (shared with its ``RedisLifecycle``).
    let losses: RegistryLosses
    let reapedCounter = Metrics.Counter(label: "switchboard_lifecycle_instances_reaped_total")

    package init(
        client: RedisClient, stream: LifecycleStreamSettings, instance: String, settings: Settings, logger: Logger,
        registered: @escaping @Sendable () -> Bool = { false }, losses: RegistryLosses = RegistryLosses(), onLost: @escaping @Sendable () -> Void
    ) {
        self.registered = registered
        self.losses = losses
        self.client = client
        self.stream = stream
        self.instance = instance
        self.settings = settings
        self.logger = logger
        self.onLost = onLost
    }

    static func ms(_ d: Duration) -> Int { Int(d.components.seconds) * 1000 + Int(d.components.attoseconds / 1_000_000_000_000_000) }

    /// Renews and reaps until the task is cancelled.
    ///
    /// After the client reconnected to Redis, or after renewals failed (Redis unreachable, also
    /// when this instance started during the outage: its first connection is no reconnect), it
    /// reaps again only once it renewed for the ttl plus ``Settings/settle``: when Redis comes
    /// back after an outage longer than the ttl, every lease has expired, and the first
    /// instance to get through must not reap the others before they reconnected (their
    /// backoff) and renewed theirs. So does a new process that finds other leases expired at
    /// its first renewal (it may have started just after such an outage, before the others
    /// reconnected): it leaves them to instances that renewed all along, or waits as well.
    package func run() async {
        let renewal = Renewal(reconnects: client.commandReconnectCount, now: ContinuousClock.now)
        while !Task.isCancelled {
            do {
                try await renew(renewal)
                if ContinuousClock.now >= renewal.settledAt {
                    // Renewing between the calls of a long reap: a lease that lapsed meanwhile
                    // got this instance reaped by the others.
                    try await reapExpired(between: { try? await self.renewIfDue(renewal) }, mayGoOn: { ContinuousClock.now >= renewal.settledAt })
                }
            } catch {
                logger.debug("lease renewal or reaping failed", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: settings.renewInterval)
        }
    }

    /// The renewal loop's state (one task's).
    final class Renewal {
        var held = false
        /// No renewal succeeded yet in this process.
        var first = true
        var reconnects: Int
        var settledAt: ContinuousClock.Instant
        var renewalFailed = false
        var last: ContinuousClock.Instant
        /// Redis's clock at the last renewal (see ``InstanceLease/forwardStep(from:to:)``).
        var redisClock: ClockSample?
        init(reconnects: Int, now: ContinuousClock.Instant) {
            self.reconnects = reconnects
            self.settledAt = now
            self.last = now
        }
    }

    /// Renews the lease; tells `onLost` of a registry loss it learns of.
    func renew(_ renewal: Renewal) async throws {
        // Registered through its facts before its first renewal: a lease found missing then
        // may have been reaped too.
        if !renewal.held, registered() { renewal.held = true }
        renewal.last = .now
        let renewed: Int
        do {
            let command = LeaseRenew(
                prefix: stream.prefix, instance: instance, ttlMilliseconds: Self.ms(settings.ttl), held: renewal.held, lossesSeen: losses.lastSeen)
            renewed = try await LifecycleFunctions.call(command, on: client).get()
        } catch {
            renewal.renewalFailed = true
            throw error
        }
        if let loss = RegistryLoss(renewAnswer: renewed), losses.told(loss) {
            logger.error("this instance's lease expired and its sessions were reaped: closing them so they reconnect")
            onLost()
        }
        renewal.held = true
        if renewal.first {
            renewal.first = false
            // Unknown (the check failed): as if some had expired.
            if (try? await othersExpired()) ?? true { renewal.settledAt = .now + settings.ttl + settings.settle }
        }
        // The command connection's reconnects only: the subscriber's (Redis drops one that reads
        // too slowly under a broadcast storm) pushed the next reap back each time, and a dead
        // instance stayed unreaped for as long as the storm lasted.
        if client.commandReconnectCount != renewal.reconnects || renewal.renewalFailed {
            renewal.reconnects = client.commandReconnectCount
            renewal.renewalFailed = false
            renewal.settledAt = .now + settings.ttl + settings.settle
        }
        // Redis expires leases by its wall clock. A step forward of it (a VM resumed, the time
        // set by hand, NTP stepping) expires every live instance's lease at once, with no
        // reconnect or failed renewal to hold the reaping back: the first instance to renew
        // reaped all the others. A step is seen against this process's monotonic clock.
        let sent = ContinuousClock.now
        if let time = try? await client.execute(TIME()) {
            let sample = ClockSample(redisMilliseconds: time.milliseconds, sent: sent, received: .now)
            if let previous = renewal.redisClock, Self.forwardStep(from: previous, to: sample) > Self.clockStepTolerance {
                logger.warning(
                    "Redis's clock stepped forward: leases may have expired at once; not reaping until the others renewed",
                    metadata: ["step.ms": "\(Self.ms(Self.forwardStep(from: previous, to: sample)))"])
                renewal.settledAt = .now + settings.ttl + settings.settle
            }
            renewal.redisClock = sample
        }
    }

    /// Redis's clock read by `TIME` between `sent` and `received` (this process's clock).
    struct ClockSample {
        var redisMilliseconds: Int64
        var sent: ContinuousClock.Instant
        var received: ContinuousClock.Instant
    }

    /// A step forward of Redis's clock larger than this holds the reaping back.
    static let clockStepTolerance: Duration = .seconds(1)

    /// How much further Redis's clock moved from `previous` to `current` than this process's
    /// could have (its reading came anywhere between sending and receiving: replies that wait
    /// make no step); zero or less when it did not step forward.
    static func forwardStep(from previous: ClockSample, to current: ClockSample) -> Duration {
        .milliseconds(current.redisMilliseconds - previous.redisMilliseconds) - (current.received - previous.sent)
    }

    /// Whether another instance's lease has expired (not renewed for the ttl, by Redis's clock,
    /// and its lease key gone), as the claim sees it.
    func othersExpired() async throws -> Bool {
        let check = LeaseOthersExpired(prefix: stream.prefix, me: instance, ttlMilliseconds: Self.ms(settings.ttl))
        return try await LifecycleFunctions.call(check, on: client).get() == 1
    }

    func renewIfDue(_ renewal: Renewal) async throws {
        if ContinuousClock.now - renewal.last >= settings.renewInterval { try await renew(renewal) }
    }

    /// Claims and reaps every instance whose lease expired, one at a time; `between` runs
    /// before each call, and no claim is made once `mayGoOn` says no (a renewal in `between`
    /// saw a reconnect: the others may still be in their backoff).
    func reapExpired(between: () async -> Void = {}, mayGoOn: () -> Bool = { true }) async throws {
        while !Task.isCancelled {
            await between()
            guard mayGoOn() else { return }
            let claim = LeaseClaim(
                prefix: stream.prefix, me: instance, ttlMilliseconds: Self.ms(settings.ttl), graceMilliseconds: Self.ms(settings.grace))
            let dead = try await LifecycleFunctions.call(claim, on: client).get()
            guard !dead.isEmpty else { return }
            logger.notice("instance lease expired: reaping its sessions", metadata: ["dead": "\(dead)"])
            try await reap(dead, reason: .nodeLost, between: between)
            reapedCounter.increment()
        }
    }

    /// Reaps the claimed registry of `dead`, a chunk at a time.
    func reap(_ dead: String, reason: DisconnectReason, between: () async -> Void = {}) async throws {
        while true {
            let left = try await LifecycleFunctions.call(
                LeaseReap(settings: stream, dead: dead, me: instance, count: settings.reapChunk, reason: reason), on: client
            ).get()
            if left <= 0 || Task.isCancelled { return }
            await between()
        }
    }

    /// Graceful stop: gives up the lease and writes `disconnected(drain)` for whatever is still
    /// registered (normally nothing: the sessions' own facts were flushed before).
    package func leave() async {
        do {
            let claim = LeaseClaim(prefix: stream.prefix, me: instance, ttlMilliseconds: 0, graceMilliseconds: 0, target: instance)
            _ = try await LifecycleFunctions.call(claim, on: client).get()
            try await reap(instance, reason: .drain)
        } catch {
            logger.warning("giving up the lease failed; other instances reap this one's sessions after the lease expires", metadata: ["error": "\(error)"])
        }
    }
}
