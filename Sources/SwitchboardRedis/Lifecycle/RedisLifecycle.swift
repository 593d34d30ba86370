import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import Redis
import SwitchboardCore
import SwitchboardWire
import Synchronization

/// Presence and lifecycle events in Redis mode: the sessions' facts, batched per event loop
/// and written by the `switchboard_events` function (``LifecycleFunctions``), which updates
/// presence and appends the events to the stream in one step.
///
/// A session calls ``record(_:on:)`` on its own loop: the fact is appended to that loop's
/// ``LoopLifecycleBatcher`` (no lock, no hop), which sends what accumulated during the loop
/// tick as one pipelined `FCALL`. A session that waits for its fact to be stored (the CONNECT
/// step, a SUBSCRIBE with a receipt) uses ``record(_:on:stored:)``: its callback is kept with
/// the fact's number and called on the loop when the batch holding it is acknowledged, or
/// when a write of the loop fails (the batch is retried). While Redis is unreachable the
/// session waits for the retries, up to `unreachableWait` after its fact was queued
/// (`redis.unreachable-wait-ms`); any other failure, or a wait of zero, tells it at once.
package final class RedisLifecycle: LifecycleRecorder {
    package let client: RedisClient
    package let settings: LifecycleStreamSettings
    /// The name of this instance's registry (its instance id).
    package let instance: String
    let batchers: [ObjectIdentifier: LoopLifecycleBatcher]
    let logger: Logger
    /// Redis applied a batch of this instance (it has a registry, and reapers know it).
    let appliedOnce: AppliedFlag
    /// The registry losses Redis told this instance of (shared with its ``InstanceLease``).
    package let losses = RegistryLosses()

    /// Set once, from any loop.
    final class AppliedFlag: Sendable {
        let value = Atomic<Bool>(false)
    }

    /// Whether Redis has applied a batch of this instance's facts.
    package var hasApplied: Bool { appliedOnce.value.load(ordering: .relaxed) }

    package init(
        client: RedisClient, settings: LifecycleStreamSettings, instance: String, loops: [any EventLoop],
        limits: LifecycleBatchState.Limits = .init(), unreachableWait: TimeAmount = .zero, logger: Logger,
        onRegistryLost: @escaping @Sendable () -> Void = {}
    ) {
        self.client = client
        self.settings = settings
        self.instance = instance
        self.logger = logger
        var batchers: [ObjectIdentifier: LoopLifecycleBatcher] = [:]
        let applied = AppliedFlag()
        self.appliedOnce = applied
        let dropped = Metrics.Counter(label: "switchboard_lifecycle_facts_dropped_total")
        let failures = Metrics.Counter(label: "switchboard_lifecycle_batch_failures_total")
        for (index, loop) in loops.enumerated() {
            batchers[ObjectIdentifier(loop)] = LoopLifecycleBatcher(
                loop: loop, index: index, limits: limits, client: client, settings: settings, instance: instance,
                dropped: dropped, failures: failures, applied: applied, losses: losses, unreachableWait: unreachableWait, logger: logger,
                onRegistryLost: onRegistryLost)
        }
        self.batchers = batchers
    }

    /// Loads the functions now and on every command connection Redis opens later.
    package func start() async {
        await GatewayRedis.single(client).installFunctions(LifecycleFunctions.self, named: "lifecycle", logger: logger)
    }

    package func record(_ fact: LifecycleFact, on loop: any EventLoop) {
        batchers[ObjectIdentifier(loop)]?.append(fact)
    }

    package func record(_ fact: LifecycleFact, on loop: any EventLoop, stored: @escaping (LifecycleWriteError?) -> Void) {
        guard let batcher = batchers[ObjectIdentifier(loop)] else {
            stored(.noBatcher)
            return
        }
        batcher.append(fact, stored: stored)
    }

    /// A user's presence across every instance.
    package func userPresence(_ user: String) async throws -> UserPresence {
        try await LifecycleFunctions.call(UserPresenceQuery(prefix: settings.prefix, user: user), on: client).get()
    }

    /// A destination's subscribers across every instance, and up to `limit` of their users.
    package func destinationPresence(_ destination: String, limit: Int) async throws -> DestinationPresence {
        try await LifecycleFunctions.call(DestinationPresenceQuery(prefix: settings.prefix, destination: destination, limit: limit), on: client).get()
    }

    /// Facts dropped because a loop's queue was full, since start.
    package func droppedCount() async -> Int {
        var total = 0
        for batcher in batchers.values { total += (try? await batcher.loop.submit { batcher.state.dropped }.get()) ?? 0 }
        return total
    }

    /// Waits until every loop sent what it had queued, or `timeout` passed.
    package func flush(timeout: Duration) async {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            var idle = true
            for batcher in batchers.values where !((try? await batcher.loop.submit { batcher.state.isIdle }.get()) ?? true) {
                idle = false
            }
            if idle { return }
            try? await Task.sleep(for: .milliseconds(10))
        }
        logger.warning("lifecycle facts still queued at shutdown")
    }
}

/// One event loop's batcher: ``LifecycleBatchState`` run on the loop, its batches sent as
/// ``LifecycleEventsBatch`` commands. Its state is touched on `loop` only.
final class LoopLifecycleBatcher: @unchecked Sendable {
    let loop: any EventLoop
    let index: Int
    let client: RedisClient
    let settings: LifecycleStreamSettings
    let instance: String
    let droppedCounter: Metrics.Counter
    let failureCounter: Metrics.Counter
    let applied: RedisLifecycle.AppliedFlag
    let losses: RegistryLosses
    let logger: Logger
    let onRegistryLost: @Sendable () -> Void
    var state: LifecycleBatchState
    /// A send is scheduled for the end of this loop tick.
    private var scheduled = false
    /// Sessions waiting for their fact to be stored, by the fact's number (increasing), with
    /// how long they wait while Redis is unreachable (increasing too: queued on this loop).
    private var waiting = CircularBuffer<(fact: UInt64, stored: (LifecycleWriteError?) -> Void, deadline: NIODeadline)>(initialCapacity: 4)
    /// How long a waiting session waits for the retries while Redis is unreachable.
    let unreachableWait: TimeAmount
    /// Why the last write failed, while the writes fail.
    private var lastFailure: (any Error)?
    /// The check of the oldest waiting session's deadline, while writes fail.
    private var expiry: Scheduled<Void>?

    init(
        loop: any EventLoop, index: Int, limits: LifecycleBatchState.Limits, client: RedisClient, settings: LifecycleStreamSettings,
        instance: String, dropped: Metrics.Counter, failures: Metrics.Counter, applied: RedisLifecycle.AppliedFlag, losses: RegistryLosses,
        unreachableWait: TimeAmount = .zero, logger: Logger, onRegistryLost: @escaping @Sendable () -> Void
    ) {
        self.unreachableWait = unreachableWait
        self.applied = applied
        self.losses = losses
        self.onRegistryLost = onRegistryLost
        self.loop = loop
        self.index = index
        self.client = client
        self.settings = settings
        self.instance = instance
        self.droppedCounter = dropped
        self.failureCounter = failures
        self.logger = logger
        self.state = LifecycleBatchState(limits: limits)
    }

    /// On `loop`: queues the fact; what arrives in the same loop tick goes in one batch.
    /// `stored`, if any, is called when the batch holding the fact is acknowledged, or with
    /// the error when the fact was dropped or a write of this loop failed.
    func append(_ fact: LifecycleFact, stored: ((LifecycleWriteError?) -> Void)? = nil) {
        loop.preconditionInEventLoop()
        let before = state.appended
        guard state.append(fact) else {
            droppedCounter.increment()
            if state.dropped == 1 || state.dropped % 1000 == 0 {
                logger.warning("lifecycle queue full: facts dropped", metadata: ["dropped": "\(state.dropped)", "limit": "\(state.limits.maxQueued)"])
            }
            stored?(.queueFull(limit: state.limits.maxQueued))
            return
        }
        // Left out (a `disconnected` whose `connected` was dropped): nothing to wait for.
        guard state.appended != before else {
            stored?(nil)
            return
        }
        if let stored { waiting.append((state.appended, stored, NIODeadline.now() + unreachableWait)) }
        guard !scheduled, state.inFlight == nil else { return }
        scheduled = true
        loop.execute { self.sendNext() }
    }

    private func sendNext() {
        scheduled = false
        guard let batch = state.nextBatch() else { return }
        send(batch)
    }

    private func send(_ batch: LifecycleBatchState.Batch) {
        // Sent again unchanged on a retry but for the instance's state, which only grows: a
        // retry of a batch whose loss was told meanwhile (on another loop) is answered as such.
        let command = LifecycleEventsBatch(
            settings: settings, instance: instance, loop: index, batch: batch.number, facts: batch.facts,
            known: applied.value.load(ordering: .relaxed), lossesSeen: losses.lastSeen)
        LifecycleFunctions.call(command, on: client).hop(to: loop).whenComplete { result in
            switch result {
            case .success(let written):
                self.applied.value.store(true, ordering: .relaxed)
                self.lastFailure = nil
                self.expiry?.cancel()
                self.expiry = nil
                if let loss = RegistryLoss(eventsAnswer: written), self.losses.told(loss) {
                    self.logger.error("Redis lost this instance's presence registry: closing its sessions so they register again")
                    self.onRegistryLost()
                }
                self.state.succeeded()
                // A session told here may record more facts: they go in the next batch.
                while let first = self.waiting.first, first.fact <= batch.through {
                    self.waiting.removeFirst()
                    first.stored(nil)
                }
                self.sendNext()
            case .failure(let error):
                self.failureCounter.increment()
                let delay = self.state.failed()
                self.logger.debug("lifecycle batch failed; retrying", metadata: ["error": "\(error)", "retry.ms": "\(delay.nanoseconds / 1_000_000)"])
                // Whoever waits on this loop is told now (their facts stay queued and are
                // written when Redis takes them), unless Redis is only unreachable: then each
                // waits for the retries until its deadline.
                self.lastFailure = error
                if self.unreachableWait > .zero && RedisEngine.isUnreachable(error) {
                    self.failWaiters(expiredBy: .now())
                } else {
                    self.failWaiters(expiredBy: nil)
                }
                self.loop.scheduleTask(in: delay) {
                    if let batch = self.state.retry() { self.send(batch) }
                }
            }
        }
    }

    /// Tells the waiting sessions that the last write failed: those whose deadline passed by
    /// `now`, or all (nil); then checks the next deadline when it comes.
    private func failWaiters(expiredBy now: NIODeadline?) {
        guard let error = lastFailure else { return }
        let reason: LifecycleWriteError =
            now == nil
            ? .writeFailed(error)
            : .writeFailed(RedisEngine.unreachable(for: unreachableWait, " (\(error))"))
        while let first = waiting.first, now.map({ first.deadline <= $0 }) ?? true {
            waiting.removeFirst()
            first.stored(reason)
        }
        guard let next = waiting.first?.deadline, expiry == nil else { return }
        expiry = loop.scheduleTask(deadline: next) {
            self.expiry = nil
            self.failWaiters(expiredBy: .now())
        }
    }
}
