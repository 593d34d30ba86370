import NIOCore

/// Items on their way to a receiver that takes them in batches (the lifecycle events of the
/// embedded broker to their webhook), as a state machine without I/O: its driver asks it what
/// to send and when, and tells it how each send went.
///
/// - Items queue in arrival order, up to ``Limits/maxQueued`` (the batch in flight not
///   counted); past it a new item is dropped and counted (``dropped``), so what is queued stays
///   in order and memory stays bounded while the receiver is down or slower than the events.
/// - One batch (up to ``Limits/maxBatch`` items) is in flight at a time, so batches arrive in
///   order. The first item into an idle queue asks the driver to schedule a send
///   (``Appended/queued(scheduleSend:)``) rather than send at once, so what arrives meanwhile
///   goes in the same batch; after a success the next batch takes everything queued meanwhile.
/// - A failed batch is sent again, unchanged (same number, same items), after a backoff:
///   ``Limits/backoff`` doubling with each failure in a row up to ``Limits/maxBackoff``. It is
///   retried until it succeeds (new items queue, and past the bound are dropped, meanwhile);
///   the receiver may see a batch twice (its reply was lost), so delivery is at-least-once.
/// - A batch the receiver *rejects* (``rejected()``: an answer that sending it again will not
///   change, such as HTTP 400 or 422) is retried the same way, but after
///   ``Limits/maxRejections`` rejections in a row it is discarded and counted (``discarded``),
///   so one batch the receiver cannot take does not hold up every later event forever.
/// - ``hurry()`` (at a graceful stop) sends a batch that waits for its retry at once; a retry
///   timer that fires after it is stale (``retry(token:)`` ignores it).
package struct EventDeliveryState<Item> {
    /// The queue's bound, the batch size and the retry backoff.
    package struct Limits: Sendable, Equatable {
        package var maxQueued: Int
        package var maxBatch: Int
        /// The wait after the first failure in a row.
        package var backoff: TimeAmount
        /// The longest wait between two attempts.
        package var maxBackoff: TimeAmount
        /// Rejections in a row after which a batch is discarded (at least 1).
        package var maxRejections: Int

        package init(
            maxQueued: Int = 10_000, maxBatch: Int = 256, backoff: TimeAmount = .milliseconds(100), maxBackoff: TimeAmount = .seconds(5),
            maxRejections: Int = 5
        ) {
            self.maxQueued = max(1, maxQueued)
            self.maxBatch = max(1, maxBatch)
            self.backoff = max(.nanoseconds(1), backoff)
            self.maxBackoff = max(self.backoff, maxBackoff)
            self.maxRejections = max(1, maxRejections)
        }
    }

    /// Items sent together.
    package struct Batch {
        /// Increasing from 1; a retry keeps its number.
        package var number: UInt64
        package var items: [Item]

        package init(number: UInt64, items: [Item]) {
            self.number = number
            self.items = items
        }
    }

    /// What became of an appended item.
    package enum Appended: Sendable, Equatable {
        /// Queued; with `scheduleSend` the driver schedules a ``sendScheduled()`` (soon, not
        /// inline, so that items arriving meanwhile join the batch).
        case queued(scheduleSend: Bool)
        /// The queue was full: dropped (the total dropped so far).
        case dropped(total: Int)
    }

    /// A failed batch's retry: call ``retry(token:)`` with `token` after `delay`.
    package struct RetryPlan: Sendable, Equatable {
        package var delay: TimeAmount
        package var token: UInt64

        package init(delay: TimeAmount, token: UInt64) {
            self.delay = delay
            self.token = token
        }
    }

    /// What becomes of a rejected batch.
    package enum Rejection {
        /// Retried like a failure.
        case retry(RetryPlan)
        /// Rejected ``Limits/maxRejections`` times in a row: discarded (`count` items); `next`
        /// is the batch to send now, if any.
        case discarded(count: Int, next: Batch?)
    }

    package let limits: Limits
    private var queue = CircularBuffer<Item>(initialCapacity: 16)
    /// The batch sent and not answered yet, or failed and waiting for its retry.
    package private(set) var inFlight: Batch?
    /// The batch in flight failed and waits for its retry.
    package private(set) var awaitingRetry = false
    /// A ``sendScheduled()`` is pending.
    package private(set) var sendPending = false
    private var nextNumber: UInt64 = 1
    private var retryToken: UInt64 = 0
    /// Failures of the batch in flight in a row.
    package private(set) var consecutiveFailures = 0
    /// Items dropped because the queue was full.
    package private(set) var dropped = 0
    /// Items in batches that succeeded.
    package private(set) var delivered = 0
    /// Rejections of the batch in flight in a row.
    package private(set) var consecutiveRejections = 0
    /// Items in batches discarded after ``Limits/maxRejections`` rejections.
    package private(set) var discarded = 0

    package init(limits: Limits = Limits()) { self.limits = limits }

    /// Items waiting, the batch in flight not included.
    package var queued: Int { queue.count }
    /// Nothing queued nor in flight.
    package var isIdle: Bool { queue.isEmpty && inFlight == nil }

    /// Queues `item`, or drops it when the queue is full.
    package mutating func append(_ item: Item) -> Appended {
        guard queue.count < limits.maxQueued else {
            dropped += 1
            return .dropped(total: dropped)
        }
        queue.append(item)
        guard inFlight == nil, !sendPending else { return .queued(scheduleSend: false) }
        sendPending = true
        return .queued(scheduleSend: true)
    }

    /// The scheduled send: the batch to send now (nil when one is in flight or none queued).
    package mutating func sendScheduled() -> Batch? {
        sendPending = false
        return takeBatch()
    }

    /// The batch in flight was delivered: the next batch to send now, if any.
    package mutating func succeeded() -> Batch? {
        guard let batch = inFlight, !awaitingRetry else { return nil }
        delivered += batch.items.count
        inFlight = nil
        consecutiveFailures = 0
        consecutiveRejections = 0
        return takeBatch()
    }

    /// The batch in flight failed (the receiver was unreachable, timed out or answered with
    /// an error that may pass): when to retry it.
    package mutating func failed() -> RetryPlan? {
        guard inFlight != nil, !awaitingRetry else { return nil }
        consecutiveRejections = 0
        return scheduleRetry()
    }

    /// The receiver rejected the batch in flight: a retry, or, after ``Limits/maxRejections``
    /// in a row, the batch discarded and the next one to send.
    package mutating func rejected() -> Rejection? {
        guard let batch = inFlight, !awaitingRetry else { return nil }
        consecutiveRejections += 1
        guard consecutiveRejections >= limits.maxRejections else { return .retry(scheduleRetry()) }
        discarded += batch.items.count
        inFlight = nil
        consecutiveFailures = 0
        consecutiveRejections = 0
        return .discarded(count: batch.items.count, next: takeBatch())
    }

    private mutating func scheduleRetry() -> RetryPlan {
        awaitingRetry = true
        consecutiveFailures += 1
        retryToken += 1
        return RetryPlan(delay: backoff(afterFailures: consecutiveFailures), token: retryToken)
    }

    /// The wait after `failures` failures in a row: the backoff doubled each time, bounded.
    package func backoff(afterFailures failures: Int) -> TimeAmount {
        let ceiling = limits.maxBackoff.nanoseconds
        var delay = limits.backoff.nanoseconds
        for _ in 1..<max(1, failures) where delay < ceiling { delay = delay > ceiling / 2 ? ceiling : delay * 2 }
        return .nanoseconds(min(delay, ceiling))
    }

    /// The failed batch to send again, when `token` is its current retry's (else nil: the
    /// timer is stale).
    package mutating func retry(token: UInt64) -> Batch? {
        guard awaitingRetry, token == retryToken, let batch = inFlight else { return nil }
        awaitingRetry = false
        return batch
    }

    /// The batch waiting for its retry, to send now (its pending retry becomes stale).
    package mutating func hurry() -> Batch? {
        guard awaitingRetry, let batch = inFlight else { return nil }
        awaitingRetry = false
        retryToken += 1
        return batch
    }

    private mutating func takeBatch() -> Batch? {
        guard inFlight == nil, !queue.isEmpty else { return nil }
        let count = min(queue.count, limits.maxBatch)
        var items: [Item] = []
        items.reserveCapacity(count)
        for _ in 0..<count { items.append(queue.removeFirst()) }
        let batch = Batch(number: nextNumber, items: items)
        nextNumber += 1
        inFlight = batch
        return batch
    }
}

extension EventDeliveryState.Batch: Equatable where Item: Equatable {}
extension EventDeliveryState: Sendable where Item: Sendable {}
extension EventDeliveryState.Batch: Sendable where Item: Sendable {}
extension EventDeliveryState.Rejection: Equatable where Item: Equatable {}
extension EventDeliveryState.Rejection: Sendable where Item: Sendable {}
