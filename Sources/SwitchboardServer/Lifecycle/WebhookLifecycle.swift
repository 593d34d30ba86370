import Foundation
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import SwitchboardCore
import SwitchboardRoutes
import SwitchboardWire
import Synchronization

/// Presence and lifecycle events on the embedded broker (no Redis): presence is kept in
/// process (``LocalPresenceState``) and the events are POSTed to `events.webhook.url` as JSON
/// arrays, one batch per POST (``EventDeliveryState``; see docs/lifecycle.md).
///
/// A session calls ``record(_:on:)`` on its own loop: under a short lock the fact is applied
/// to presence and its events are queued (presence is one table for the instance, so the lock
/// is shared by the loops; nothing is sent, encoded or allocated beyond the events there). The
/// first event into an idle queue schedules a send on ``loop``, which runs every POST, retry
/// timer and completion: one POST in flight, retried with backoff until a 2xx answers (a
/// batch rejected with a 4xx five times in a row is dropped, counted in
/// `switchboard_lifecycle_events_rejected_total` and logged).
/// Presence never loses a fact; only events beyond `events.max-queued` are dropped, counted in
/// `switchboard_lifecycle_facts_dropped_total` and logged.
package final class WebhookLifecycle: LifecycleRecorder, Sendable {
    /// Where and how the events are POSTed.
    package struct Target: Sendable {
        package var url: String
        /// The deadline of one POST (connect, request and reply).
        package var timeout: TimeAmount

        package init(url: String, timeout: TimeAmount) {
            self.url = url
            self.timeout = timeout
        }
    }

    struct State: Sendable {
        var presence: LocalPresenceState
        var delivery: EventDeliveryState<LifecycleEvent>
    }

    package let target: Target
    /// Runs the POSTs, their completions and the retry timers.
    package let loop: any EventLoop
    let client: WebhookClient
    let state: Mutex<State>
    let logger: Logger
    let droppedCounter = Metrics.Counter(label: "switchboard_lifecycle_facts_dropped_total")
    let failureCounter = Metrics.Counter(label: "switchboard_lifecycle_batch_failures_total")
    let deliveredCounter = Metrics.Counter(label: "switchboard_lifecycle_events_delivered_total")
    let discardedCounter = Metrics.Counter(label: "switchboard_lifecycle_events_rejected_total")

    /// - Parameters:
    ///   - instance: the instance id, named in the events.
    ///   - incarnation: this process's token; event ids are `<instance>-e-<incarnation>-<n>`.
    ///   - types: the event types sent (empty: all).
    ///   - client: the gateway's shared webhook client.
    package init(
        target: Target, instance: String, incarnation: String, types: Set<LifecycleEventType>, limits: EventDeliveryState<LifecycleEvent>.Limits,
        client: WebhookClient, loop: any EventLoop, logger: Logger
    ) {
        self.target = target
        self.client = client
        self.loop = loop
        self.logger = logger
        let presence = LocalPresenceState(instance: instance, idPrefix: "\(instance)-e-\(incarnation)-", types: types)
        self.state = Mutex(State(presence: presence, delivery: EventDeliveryState(limits: limits)))
    }

    package func record(_ fact: LifecycleFact, on _: any EventLoop) {
        let (scheduleSend, droppedNow, droppedTotal) = state.withLock { s -> (Bool, Int, Int) in
            var schedule = false
            var dropped = 0
            for event in s.presence.apply(fact) {
                switch s.delivery.append(event) {
                case .queued(let scheduleSend): schedule = schedule || scheduleSend
                case .dropped: dropped += 1
                }
            }
            return (schedule, dropped, s.delivery.dropped)
        }
        if droppedNow > 0 { reportDropped(droppedNow, total: droppedTotal) }
        if scheduleSend { loop.execute { self.sendScheduled() } }
    }

    private func reportDropped(_ count: Int, total: Int) {
        droppedCounter.increment(by: Int64(count))
        // The first drop, then one line per thousand.
        if total - count == 0 || total / 1000 != (total - count) / 1000 {
            let limit = state.withLock { $0.delivery.limits.maxQueued }
            logger.warning(
                "lifecycle events dropped: the webhook queue is full", metadata: ["dropped": "\(total)", "limit": "\(limit)", "url": "\(WebhookRoute.shown(target.url))"])
        }
    }

    private func sendScheduled() {
        if let batch = state.withLock({ $0.delivery.sendScheduled() }) { send(batch) }
    }

    private func send(_ batch: EventDeliveryState<LifecycleEvent>.Batch) {
        loop.preconditionInEventLoop()
        let body: ByteBuffer
        do {
            body = try Self.encode(batch.items)
        } catch {
            // Not expected (strings and numbers only); the batch is skipped rather than retried forever.
            logger.error("cannot encode lifecycle events: skipped", metadata: ["error": "\(error)", "events": "\(batch.items.count)"])
            completed(batch, .success(200))
            return
        }
        let headers: HTTPHeaders = ["Content-Type": "application/json", "X-Switchboard-Batch": String(batch.number)]
        client.post(url: target.url, body: body, headers: headers, timeout: target.timeout, on: loop).whenComplete { result in
            // A 2xx accepts the batch whatever its reply's body (docs/lifecycle.md): one too large
            // or stalled after the head made the same batch be sent again for good.
            if case .failure(let failure as WebhookClient.Failure) = result, let status = failure.acceptedStatus {
                self.completed(batch, .success(status))
                return
            }
            self.completed(batch, result.map(\.status))
        }
    }

    private func completed(_ batch: EventDeliveryState<LifecycleEvent>.Batch, _ result: Result<Int, any Error>) {
        if case .success(let status) = result, (200..<300).contains(status) {
            deliveredCounter.increment(by: Int64(batch.items.count))
            if let next = state.withLock({ $0.delivery.succeeded() }) { send(next) }
            return
        }
        failureCounter.increment()
        let plan: EventDeliveryState<LifecycleEvent>.RetryPlan
        if case .success(let status) = result, Self.isRejection(status) {
            switch state.withLock({ $0.delivery.rejected() }) {
            case nil: return
            case .retry(let retry): plan = retry
            case .discarded(let count, let next):
                discardedCounter.increment(by: Int64(count))
                logger.error(
                    "lifecycle events webhook rejected a batch again and again: its events are dropped",
                    metadata: [
                        "url": "\(WebhookRoute.shown(target.url))", "status": "\(status)", "batch": "\(batch.number)", "events": "\(count)",
                        "first": "\(batch.items.first?.id ?? "")", "last": "\(batch.items.last?.id ?? "")",
                    ])
                if let next { send(next) }
                return
            }
        } else {
            guard let retry = state.withLock({ $0.delivery.failed() }) else { return }
            plan = retry
        }
        let why =
            switch result {
            case .success(let status): "answered HTTP \(status)"
            case .failure(let error): "\(error)"
            }
        let level: Logger.Level = plan.delay >= state.withLock({ $0.delivery.limits.maxBackoff }) ? .warning : .debug
        logger.log(
            level: level, "lifecycle events webhook failed; retrying",
            metadata: [
                "url": "\(WebhookRoute.shown(target.url))", "error": "\(why)", "batch": "\(batch.number)", "events": "\(batch.items.count)",
                "retry.ms": "\(plan.delay.nanoseconds / 1_000_000)",
            ])
        loop.scheduleTask(in: plan.delay) {
            if let batch = self.state.withLock({ $0.delivery.retry(token: plan.token) }) { self.send(batch) }
        }
    }

    /// An answer that sending the same batch again will not change: a 4xx other than 408
    /// (timeout), 425 (too early) and 429 (too many requests).
    static func isRejection(_ status: Int) -> Bool {
        (400..<500).contains(status) && ![408, 425, 429].contains(status)
    }

    /// Waits until every queued event was delivered, or `timeout` passed (a batch waiting for
    /// its retry is sent at once).
    package func flush(timeout: Duration) async {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        _ = try? await loop.submit {
            if let batch = self.state.withLock({ $0.delivery.hurry() }) { self.send(batch) }
        }.get()
        while clock.now < deadline {
            if state.withLock({ $0.delivery.isIdle }) { return }
            try? await Task.sleep(for: .milliseconds(10))
        }
        let left = state.withLock { $0.delivery.queued + ($0.delivery.inFlight?.items.count ?? 0) }
        logger.warning("lifecycle events not delivered at shutdown", metadata: ["events": "\(left)", "url": "\(WebhookRoute.shown(target.url))"])
    }

    /// Events dropped because the queue was full, since start.
    package var droppedCount: Int { state.withLock { $0.delivery.dropped } }

    /// The JSON array POSTed for `events`: one object per event, fields absent when empty.
    package static func encode(_ events: [LifecycleEvent]) throws -> ByteBuffer {
        ByteBuffer(bytes: try encoder.encode(events.map(WireEvent.init)))
    }

    private static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()

    /// One event as JSON: the fields of the Redis stream entry, plus `id`.
    struct WireEvent: Encodable {
        var id: String
        var type: String
        var session: String?
        var user: String?
        var instance: String?
        var destination: String?
        var subscription: String?
        var reason: String?
        var time: Int64?
        var gen: UInt64?

        init(_ event: LifecycleEvent) {
            id = event.id
            type = event.type.rawValue
            session = event.session
            user = event.user
            instance = event.instance
            destination = event.destination
            subscription = event.subscription
            reason = event.reason?.rawValue
            time = event.time
            gen = event.generation
        }
    }
}

extension WebhookLifecycle: PresenceSource {
    package func userPresence(_ user: String) async throws -> UserPresence {
        state.withLock { $0.presence.userPresence(user) }
    }

    package func destinationPresence(_ destination: String, limit: Int) async throws -> DestinationPresence {
        // Copied under the lock, sorted outside it: every session's fact takes it.
        LocalPresenceState.sorted(state.withLock { $0.presence.destinationMembers(destination) }, limit: limit)
    }
}
