import NIOConcurrencyHelpers
import NIOCore

/// At most ``limit`` webhook calls in flight per backend (`scheme://host:port`): the hard limit
/// `webhooks.max-connections-per-host` promises. AsyncHTTPClient's own per-host limit is a soft
/// one: past it, it opens more connections (a probe saw 150 sockets to a hung backend with
/// the limit at 64). Calls beyond the limit wait in arrival order, each until its deadline.
final class WebhookCallSlots: Sendable {
    struct Waiter {
        var id: UInt64
        var deadline: NIODeadline
        var promise: EventLoopPromise<Void>
    }

    struct Backend {
        var inUse = 0
        var waiting: [Waiter] = []
    }

    struct State {
        var backends: [String: Backend] = [:]
        var nextID: UInt64 = 0
    }

    /// Why a call waiting for a slot failed.
    struct Timeout: Error {}

    let limit: Int
    private let state = NIOLockedValueBox(State())

    init(limit: Int) {
        self.limit = max(1, limit)
    }

    /// A slot for a call to `backend`: at once when one is free, else when one is released
    /// (first come, first served), or failed with ``Timeout`` at `deadline`.
    func acquire(_ backend: String, deadline: NIODeadline, on loop: any EventLoop) -> EventLoopFuture<Void> {
        let limit = self.limit
        let waiter = state.withLockedValue { state -> Waiter? in
            if state.backends[backend, default: Backend()].inUse < limit {
                state.backends[backend, default: Backend()].inUse += 1
                return nil
            }
            state.nextID += 1
            let waiter = Waiter(id: state.nextID, deadline: deadline, promise: loop.makePromise())
            state.backends[backend, default: Backend()].waiting.append(waiter)
            return waiter
        }
        guard let waiter else { return loop.makeSucceededVoidFuture() }
        let id = waiter.id
        loop.scheduleTask(deadline: deadline) {
            let expired = self.state.withLockedValue { state -> Bool in
                guard let index = state.backends[backend]?.waiting.firstIndex(where: { $0.id == id }) else { return false }
                state.backends[backend]?.waiting.remove(at: index)
                return true
            }
            if expired { waiter.promise.fail(Timeout()) }
        }
        return waiter.promise.futureResult
    }

    /// A call to `backend` ended: its slot goes to the first call waiting whose deadline has not
    /// passed, if any (those past it fail with ``Timeout``).
    func release(_ backend: String) {
        let now = NIODeadline.now()
        let (next, expired) = state.withLockedValue { state -> (Waiter?, [Waiter]) in
            guard var entry = state.backends[backend] else { return (nil, []) }
            var expired: [Waiter] = []
            while let first = entry.waiting.first, first.deadline <= now { expired.append(entry.waiting.removeFirst()) }
            if entry.waiting.isEmpty {
                entry.inUse -= 1
                state.backends[backend] = entry.inUse > 0 ? entry : nil
                return (nil, expired)
            }
            let next = entry.waiting.removeFirst()
            state.backends[backend] = entry
            return (next, expired)
        }
        for waiter in expired { waiter.promise.fail(Timeout()) }
        next?.promise.succeed()
    }

    /// Calls in flight and waiting for `backend` (tests).
    func load(_ backend: String) -> (inUse: Int, waiting: Int) {
        state.withLockedValue { ($0.backends[backend]?.inUse ?? 0, $0.backends[backend]?.waiting.count ?? 0) }
    }
}
