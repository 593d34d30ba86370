import NIOConcurrencyHelpers
import NIOCore

/// At most ``limit`` webhook calls in flight per backend (`scheme://host:port`): the hard limit
/// `webhooks.max-connections-per-host` promises. AsyncHTTPClient's own per-host limit is a soft
/// one: past it, it opens more connections (a probe saw 150 sockets to a hung backend with
/// the limit at 64). Calls beyond the limit wait in arrival order, each until its deadline or
/// until its session closes (``RouteCancellation``): a closed session's call is never sent, and
/// does not hold the live sessions' calls back.
///
/// Every step is O(1) under the lock: a waiter that times out or is cancelled leaves the
/// queue's ring lazily (it is no longer live, and is skipped when it comes to the front).
final class WebhookCallSlots: Sendable {
    struct Waiter {
        var id: UInt64
        var deadline: NIODeadline
        var promise: EventLoopPromise<Void>
    }

    struct Backend {
        var inUse = 0
        /// Waiters in arrival order, some no longer live.
        var queue = CircularBuffer<Waiter>()
        /// The ids of the waiters still waiting.
        var live: Set<UInt64> = []

        /// Drops the waiters at the front that are no longer live.
        mutating func trim() {
            while let first = queue.first, !live.contains(first.id) { queue.removeFirst() }
        }
    }

    struct State {
        var backends: [String: Backend] = [:]
        var nextID: UInt64 = 0
    }

    /// Why a call waiting for a slot failed: its deadline passed.
    struct Timeout: Error {}
    /// Why a call waiting for a slot failed: its session closed.
    struct Cancelled: Error {}

    let limit: Int
    private let state = NIOLockedValueBox(State())

    init(limit: Int) {
        self.limit = max(1, limit)
    }

    /// A slot for a call to `backend`: at once when one is free, else when one is released
    /// (first come, first served), or failed with ``Timeout`` at `deadline`, or with
    /// ``Cancelled`` when `cancellation` is cancelled first.
    func acquire(
        _ backend: String, deadline: NIODeadline, on loop: any EventLoop, cancellation: RouteCancellation? = nil
    ) -> EventLoopFuture<Void> {
        let limit = self.limit
        let waiter = state.withLockedValue { state -> Waiter? in
            if state.backends[backend, default: Backend()].inUse < limit {
                state.backends[backend, default: Backend()].inUse += 1
                return nil
            }
            state.nextID += 1
            let waiter = Waiter(id: state.nextID, deadline: deadline, promise: loop.makePromise())
            state.backends[backend, default: Backend()].queue.append(waiter)
            state.backends[backend, default: Backend()].live.insert(waiter.id)
            return waiter
        }
        guard let waiter else { return loop.makeSucceededVoidFuture() }
        let id = waiter.id
        let timer = loop.scheduleTask(deadline: deadline) {
            if self.leave(backend, id) { waiter.promise.fail(Timeout()) }
        }
        let registration = cancellation?.onCancel {
            if self.leave(backend, id) {
                timer.cancel()
                waiter.promise.fail(Cancelled())
            }
        }
        waiter.promise.futureResult.whenComplete { _ in
            timer.cancel()
            if let registration { cancellation?.remove(registration) }
        }
        return waiter.promise.futureResult
    }

    /// Takes waiter `id` out of `backend`'s queue; false when it is not waiting any more.
    private func leave(_ backend: String, _ id: UInt64) -> Bool {
        state.withLockedValue { state in
            guard state.backends[backend]?.live.remove(id) != nil else { return false }
            state.backends[backend]?.trim()
            return true
        }
    }

    /// A call to `backend` ended: its slot goes to the first call waiting whose deadline has not
    /// passed, if any (those past it fail with ``Timeout``).
    func release(_ backend: String) {
        let now = NIODeadline.now()
        let (next, expired) = state.withLockedValue { state -> (Waiter?, [Waiter]) in
            guard var entry = state.backends[backend] else { return (nil, []) }
            state.backends[backend] = nil  // one copy of the entry while it changes
            var expired: [Waiter] = []
            var next: Waiter?
            while next == nil, let first = entry.queue.popFirst() {
                guard entry.live.remove(first.id) != nil else { continue }
                if first.deadline <= now { expired.append(first) } else { next = first }
            }
            if next == nil { entry.inUse -= 1 }
            if entry.inUse > 0 || !entry.queue.isEmpty { state.backends[backend] = entry }
            return (next, expired)
        }
        for waiter in expired { waiter.promise.fail(Timeout()) }
        next?.promise.succeed()
    }

    /// Calls in flight and waiting for `backend` (tests).
    func load(_ backend: String) -> (inUse: Int, waiting: Int) {
        state.withLockedValue { ($0.backends[backend]?.inUse ?? 0, $0.backends[backend]?.live.count ?? 0) }
    }
}
