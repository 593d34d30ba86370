import NIOConcurrencyHelpers
import NIOCore

/// A publish refused because this instance's fan-out backlog did not drain in time: the
/// instance is overloaded (its loops deliver more slowly than messages arrive). Nothing was
/// published; the publisher may retry later.
package struct FanoutOverloaded: Error, CustomStringConvertible {
    package var waited: TimeAmount
    package var description: String {
        "gateway overloaded: its fan-out backlog did not drain within \(waited.nanoseconds / 1_000_000) ms; nothing was published, retry later"
    }
}

/// Publish admission: while a loop's backlog (messages handed to it and not delivered yet) is
/// over ``FanoutHub/maxBacklogBytes``, publishes through this instance wait until every
/// backlog is under it again, for at most ``FanoutHub/admissionTimeout``, then fail with
/// ``FanoutOverloaded``. So publishers slow down to what the instance delivers instead of
/// queueing without a bound (a STOMP publisher's next frames wait behind its `SEND`, an HTTP
/// publisher's answer comes later).
extension FanoutHub {
    struct BacklogState {
        /// Bit `i`: shard `i`'s backlog is over the limit.
        var shards: UInt64 = 0
        var waiters: [AdmissionWaiter] = []
        /// Refused waiters still in ``waiters``, dropped from it in bulk once they are half of
        /// it: a backlog that stays over the limit would otherwise keep every publish refused
        /// meanwhile listed.
        var refusedListed = 0
        /// Per event loop: its publishes waiting, or released and not yet run. A publish on a
        /// loop with some goes behind them, so each connection's publishes keep their order.
        var pending: [ObjectIdentifier: Int] = [:]
        var waits = 0
        var refusals = 0
    }

    /// A publish waiting for admission; its fields are confined to its promise's loop.
    final class AdmissionWaiter: @unchecked Sendable {
        let promise: EventLoopPromise<Void>
        var done = false
        var timer: Scheduled<Void>?
        /// In ``BacklogState/waiters``, and refused while there (both under the backlog lock).
        var listed = false
        var refusedWhileListed = false

        init(promise: EventLoopPromise<Void>) { self.promise = promise }
    }

    /// Nil while no loop's backlog is over ``maxBacklogBytes`` and no publish of `loop` waits
    /// (almost always): publish at once. Otherwise a future on `loop` that succeeds once no
    /// backlog is over the limit and `loop`'s earlier publishes went on, or fails with
    /// ``FanoutOverloaded`` after ``admissionTimeout``. Callers publish in the future's
    /// callback, so publishes of one loop go on in the order they asked.
    package func admission(on loop: any EventLoop) -> EventLoopFuture<Void>? {
        // A loop sees its own publishes' waiting (set on it, under the lock); another loop's
        // backlog going over the limit at this very moment may be missed, as with a lock.
        guard maxBacklogBytes > 0, admissionGate.load(ordering: .acquiring) else { return nil }
        return loop.inEventLoop ? waitForAdmission(on: loop) : loop.flatSubmit { self.waitForAdmission(on: loop) }
    }

    /// Whether a loop's backlog is over ``maxBacklogBytes`` (publishes wait).
    package var isBacklogged: Bool { backlog.withLockedValue { $0.shards } != 0 }

    /// Publishes listed as waiting for a release (refused ones included until dropped).
    package var admissionWaitersListed: Int { backlog.withLockedValue { $0.waiters.count } }

    /// Publishes that waited for admission, and those refused after waiting.
    package var admissionCounts: (waits: Int, refusals: Int) { backlog.withLockedValue { ($0.waits, $0.refusals) } }

    private enum Admission { case now, behindEarlier, wait }

    /// Sets ``admissionGate`` from `b`; call under ``backlog``'s lock after changing it.
    private func updateGate(_ b: inout BacklogState) {
        admissionGate.store(b.shards != 0 || !b.pending.isEmpty, ordering: .releasing)
    }

    private func waitForAdmission(on loop: any EventLoop) -> EventLoopFuture<Void> {
        let id = ObjectIdentifier(loop)
        // The waiter (its promise) is made only when it waits: a promise never completed is a
        // leak NIO traps on in debug builds.
        let (admission, made) = backlog.withLockedValue { b -> (Admission, AdmissionWaiter?) in
            if b.shards == 0, b.pending[id] == nil { return (.now, nil) }
            let waiter = AdmissionWaiter(promise: loop.makePromise())
            if b.shards != 0 {
                b.waiters.append(waiter)
                waiter.listed = true
                b.waits += 1
            }
            b.pending[id, default: 0] += 1
            updateGate(&b)
            return (b.shards != 0 ? .wait : .behindEarlier, waiter)
        }
        guard let waiter = made else { return loop.makeSucceededVoidFuture() }
        switch admission {
        case .now:
            return loop.makeSucceededVoidFuture()
        case .behindEarlier:
            // The earlier ones were released: their tasks are queued on this loop already.
            loop.execute { self.finish(waiter, on: loop, nil) }
        case .wait:
            let timeout = admissionTimeout
            // Set before a release can run: releases run as tasks on this loop.
            waiter.timer = loop.scheduleTask(in: timeout) { self.finish(waiter, on: loop, FanoutOverloaded(waited: timeout)) }
        }
        return waiter.promise.futureResult
    }

    /// Completes `waiter` on its loop (once): admitted, or refused with `error`.
    private func finish(_ waiter: AdmissionWaiter, on loop: any EventLoop, _ error: FanoutOverloaded?) {
        guard !waiter.done else { return }
        waiter.done = true
        waiter.timer?.cancel()
        let id = ObjectIdentifier(loop)
        backlog.withLockedValue { b in
            // A refused waiter stays listed (done) until the next release skips it, or until the
            // refused ones are half the list: removing each would cost a search of every waiting
            // publish, under the lock, per refusal.
            if error != nil {
                b.refusals += 1
                if waiter.listed {
                    waiter.refusedWhileListed = true
                    b.refusedListed += 1
                    if b.refusedListed >= 32, b.refusedListed * 2 >= b.waiters.count {
                        b.waiters.removeAll { $0.refusedWhileListed }
                        b.refusedListed = 0
                    }
                }
            }
            let left = (b.pending[id] ?? 1) - 1
            b.pending[id] = left > 0 ? left : nil
            updateGate(&b)
        }
        if let error { waiter.promise.fail(error) } else { waiter.promise.succeed() }
    }

    /// Shard `index`'s backlog went over the limit. Called under the shard's inbox lock; true
    /// when no backlog was over it before (then call ``backlogChanged()``, outside the lock).
    func backlogExceeded(shard index: Int) -> Bool {
        backlog.withLockedValue { b in
            let before = b.shards
            b.shards |= 1 << UInt64(index)
            updateGate(&b)
            return before == 0
        }
    }

    /// Calls the observers (``onBacklogChange(_:)``): whether a backlog is over the limit may
    /// have changed. Not under a shard's lock: an observer may read.
    func backlogChanged() {
        for observer in backlogObservers.withLockedValue({ $0 }) { observer() }
    }

    /// Calls `observer` whenever whether any loop's backlog is over the limit may have changed
    /// (the Redis engine pauses reading its subscriber connections meanwhile). It reads
    /// ``isBacklogged`` for the current state; calls from different threads may come in any order.
    package func onBacklogChange(_ observer: @escaping @Sendable () -> Void) {
        backlogObservers.withLockedValue { $0.append(observer) }
    }

    /// Shard `index`'s backlog is under the limit again (called under the shard's inbox lock):
    /// once no shard's is over, the waiting publishes go on, each loop's in order. True when
    /// none is over any more (then call ``backlogChanged()``, outside the lock).
    func backlogDrained(shard index: Int) -> Bool {
        backlog.withLockedValue { b in
            let before = b.shards
            b.shards &= ~(1 << UInt64(index))
            updateGate(&b)
            guard b.shards == 0 else { return false }
            guard !b.waiters.isEmpty else { return before != 0 }
            // Queued under the lock: a publish that finds no backlog any more, and goes behind
            // these (``waitForAdmission(on:)``), is then queued after them on its loop.
            for waiter in b.waiters {
                waiter.listed = false
                let loop = waiter.promise.futureResult.eventLoop
                loop.execute { self.finish(waiter, on: loop, nil) }
            }
            b.waiters.removeAll()
            b.refusedListed = 0
            return before != 0
        }
    }
}
