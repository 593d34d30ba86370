import NIOCore
import SwitchboardRedis
import SwitchboardWire
import Testing

/// The per-loop batching of lifecycle facts, without I/O: order, one batch in flight, the
/// bounded queue, retries of the same batch.
@Suite("Lifecycle batch state")
struct LifecycleBatchStateTests {
    static func fact(_ n: Int) -> LifecycleFact { LifecycleFact(session: "s\(n)", kind: .connected(user: nil), time: Int64(n)) }

    @Test func queuedFactsGoOutInOrderInBatchesOneAtATime() {
        var state = LifecycleBatchState(limits: .init(maxQueued: 100, maxBatch: 3))
        for n in 1...5 {
            let queued = state.append(Self.fact(n))
            #expect(queued)
        }
        let first = state.nextBatch()
        #expect(first?.number == 1 && first?.facts == (1...3).map(Self.fact))
        let none = state.nextBatch()
        #expect(none == nil)  // one in flight
        let sixth = state.append(Self.fact(6))
        #expect(sixth)
        state.succeeded()
        let second = state.nextBatch()
        #expect(second?.number == 2 && second?.facts == (4...6).map(Self.fact))
        state.succeeded()
        let last = state.nextBatch()
        #expect(last == nil && state.isIdle)
    }

    @Test func aFullQueueDropsNewFactsAndCountsThem() {
        var state = LifecycleBatchState(limits: .init(maxQueued: 2, maxBatch: 10))
        let first = state.append(Self.fact(1))
        let second = state.append(Self.fact(2))
        let third = state.append(Self.fact(3))
        #expect(first && second && !third)
        #expect(state.dropped == 1 && state.queued == 2)
        _ = state.nextBatch()
        let fourth = state.append(Self.fact(4))
        #expect(fourth)
    }

    /// A Redis outage with clients reconnecting: each refused CONNECT queued its `connected`,
    /// then its `disconnected`, and once the queue was full the `disconnected` of sessions whose
    /// `connected` was in were dropped: those sessions stayed in presence for good.
    @Test func theDisconnectOfAQueuedConnectIsNeverDropped() {
        var state = LifecycleBatchState(limits: .init(maxQueued: 2, maxBatch: 10))
        func gone(_ n: Int) -> LifecycleFact { LifecycleFact(session: "s\(n)", kind: .disconnected(.error), time: Int64(n)) }
        let connects = [1, 2, 3].map { state.append(Self.fact($0)) }
        #expect(connects == [true, true, false])
        // s1's and s2's go in past the limit; s3's connected was dropped, so its disconnected is
        // left out (a no-op), not counted as dropped.
        let disconnects = [gone(1), gone(3), gone(2)].map { state.append($0) }
        #expect(disconnects == [true, true, true])
        #expect(state.dropped == 1 && state.skipped == 1 && state.queued == 4)
        let subscribe = state.append(LifecycleFact(session: "s1", kind: .subscribed(id: "0", destination: "/topic/a"), time: 9))
        #expect(!subscribe)
        #expect(state.nextBatch()?.facts == [Self.fact(1), Self.fact(2), gone(1), gone(2)])
    }

    @Test func aFailedBatchIsRetriedUnchangedWithBackoff() {
        var state = LifecycleBatchState(limits: .init(maxQueued: 10, maxBatch: 10))
        _ = state.append(Self.fact(1))
        let batch = state.nextBatch()
        var retried = state.retry()
        #expect(retried == nil)  // nothing failed
        var delay = state.failed()
        #expect(delay == .milliseconds(100))
        _ = state.append(Self.fact(2))
        var next = state.nextBatch()
        #expect(next == nil)
        retried = state.retry()
        #expect(retried == batch)
        delay = state.failed()
        #expect(delay == .milliseconds(200))
        retried = state.retry()
        #expect(retried == batch)
        for _ in 0..<10 { _ = state.failed() }
        delay = state.failed()
        #expect(delay == .seconds(2))
        _ = state.retry()
        state.succeeded()
        next = state.nextBatch()
        #expect(next?.facts == [Self.fact(2)])
    }

    @Test func factsAreNumberedAndEachBatchSaysItsLastNumber() {
        var state = LifecycleBatchState(limits: .init(maxQueued: 3, maxBatch: 2))
        for n in 1...4 { _ = state.append(Self.fact(n)) }  // the fourth is dropped: no number
        #expect(state.appended == 3)
        let first = state.nextBatch()
        #expect(first?.through == 2)
        _ = state.append(Self.fact(5))
        #expect(state.appended == 4)
        _ = state.failed()
        #expect(state.retry()?.through == 2)  // a retry is the same batch
        state.succeeded()
        let second = state.nextBatch()
        #expect(second?.facts == [Self.fact(3), Self.fact(5)] && second?.through == 4)
    }
}
