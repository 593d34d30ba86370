import NIOCore
import SwitchboardWire

/// The lifecycle facts of one event loop on their way to Redis, as a state machine without
/// I/O (``LoopLifecycleBatcher`` runs it on the loop).
///
/// - Facts queue in arrival order, up to ``Limits/maxQueued``; past it a new fact is dropped
///   and counted (``dropped``): the queue only fills while Redis is unreachable or slower
///   than the sessions, and dropping the newest keeps what is queued in order. A dropped
///   `connected` makes the session's later facts no-ops (its `disconnected` is left out,
///   ``skipped``). The `disconnected` of a session whose `connected` was queued is never
///   dropped (it is queued past the limit, at most one per such session): dropped, it left the
///   session in presence, its user online, until its instance stopped; a Redis outage with
///   clients reconnecting filled the queue with refused CONNECTs' pairs and did that in bulk.
/// - One batch (up to ``Limits/maxBatch`` facts) is in flight at a time, so batches reach
///   Redis in order; the next one takes everything queued meanwhile (a burst is a few
///   batches, not one command per fact).
/// - A failed batch is sent again, unchanged and with the same number, after a backoff
///   (100 ms doubling to 2 s); the Redis function skips a number it applied already, so a
///   batch whose reply was lost is not applied twice.
/// - Facts are numbered as they queue (``appended``), and each batch says the number of its
///   last fact (``Batch/through``): a session waiting for its fact to be stored (CONNECT)
///   waits for the batch whose `through` reaches its number.
package struct LifecycleBatchState {
    package struct Limits: Sendable, Equatable {
        package var maxQueued: Int
        package var maxBatch: Int
        package init(maxQueued: Int = 10_000, maxBatch: Int = 256) {
            self.maxQueued = max(1, maxQueued)
            self.maxBatch = max(1, maxBatch)
        }
    }

    package struct Batch: Equatable {
        /// Increasing from 1 on this loop.
        package var number: UInt64
        package var facts: [LifecycleFact]
        /// The number (see ``LifecycleBatchState/appended``) of the batch's last fact.
        package var through: UInt64
    }

    package let limits: Limits
    private var queue = CircularBuffer<LifecycleFact>(initialCapacity: 16)
    package private(set) var inFlight: Batch?
    /// A failed batch waits for its retry.
    package private(set) var awaitingRetry = false
    private var nextNumber: UInt64 = 1
    private var consecutiveFailures = 0
    /// Facts dropped because the queue was full.
    package private(set) var dropped = 0
    /// `disconnected` facts left out because their session's `connected` was dropped.
    package private(set) var skipped = 0
    /// Facts queued so far: the number of the last one (the first is 1; dropped ones do not count).
    package private(set) var appended: UInt64 = 0
    /// The number of the last fact taken into a batch.
    private var taken: UInt64 = 0
    /// Sessions whose `connected` was dropped and whose `disconnected` did not come yet (only
    /// while the queue overflows: a set of every live session cost memory all the time).
    private var droppedConnects = Set<String>()

    package init(limits: Limits = Limits()) { self.limits = limits }

    /// Facts waiting, the batch in flight not included.
    package var queued: Int { queue.count }
    /// Nothing queued nor in flight.
    package var isIdle: Bool { queue.isEmpty && inFlight == nil }

    /// Queues `fact`; false when the queue is full and it was dropped. The `disconnected` of a
    /// session whose `connected` was dropped is left out (a no-op in Redis; ``skipped``) and
    /// answers true.
    package mutating func append(_ fact: LifecycleFact) -> Bool {
        switch fact.kind {
        case .disconnected where !droppedConnects.isEmpty && droppedConnects.remove(fact.session) != nil:
            skipped += 1
            return true
        case .disconnected:
            break  // past the limit too: its `connected` is in (each session records one)
        case _ where queue.count >= limits.maxQueued:
            if case .connected = fact.kind { droppedConnects.insert(fact.session) }
            dropped += 1
            return false
        default:
            break
        }
        queue.append(fact)
        appended += 1
        return true
    }

    /// The batch to send now: the queued facts (up to the limit) when none is in flight.
    package mutating func nextBatch() -> Batch? {
        guard inFlight == nil, !queue.isEmpty else { return nil }
        let count = min(queue.count, limits.maxBatch)
        var facts: [LifecycleFact] = []
        facts.reserveCapacity(count)
        for _ in 0..<count { facts.append(queue.removeFirst()) }
        taken += UInt64(count)
        let batch = Batch(number: nextNumber, facts: facts, through: taken)
        nextNumber += 1
        inFlight = batch
        return batch
    }

    /// Redis applied the batch in flight (or had applied it before).
    package mutating func succeeded() {
        inFlight = nil
        awaitingRetry = false
        consecutiveFailures = 0
    }

    /// The batch in flight failed: how long to wait before ``retry()``.
    package mutating func failed() -> TimeAmount {
        awaitingRetry = true
        consecutiveFailures += 1
        let ms = min(2_000, 100 << min(consecutiveFailures - 1, 5))
        return .milliseconds(Int64(ms))
    }

    /// The failed batch, to send again.
    package mutating func retry() -> Batch? {
        guard awaitingRetry, let batch = inFlight else { return nil }
        awaitingRetry = false
        return batch
    }
}
