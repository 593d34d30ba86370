import NIOCore
import SwitchboardCore
import Testing

/// The delivery of the embedded broker's lifecycle events to their webhook, without I/O:
/// batching, one batch in flight, order, the bounded queue, retries with backoff.
@Suite("Event delivery state")
struct EventDeliveryStateTests {
    typealias State = EventDeliveryState<Int>

    static func limits(maxQueued: Int = 100, maxBatch: Int = 10, backoffMs: Int64 = 100, maxBackoffMs: Int64 = 1_000) -> State.Limits {
        .init(maxQueued: maxQueued, maxBatch: maxBatch, backoff: .milliseconds(backoffMs), maxBackoff: .milliseconds(maxBackoffMs))
    }

    @Test func theFirstItemSchedulesOneSendAndLaterOnesJoinIt() {
        var state = State(limits: Self.limits())
        let first = state.append(1)
        let second = state.append(2)
        #expect(first == .queued(scheduleSend: true) && second == .queued(scheduleSend: false))
        let third = state.append(3)
        #expect(third == .queued(scheduleSend: false) && state.sendPending)
        let batch = state.sendScheduled()
        #expect(batch == State.Batch(number: 1, items: [1, 2, 3]) && !state.sendPending)
        // While a batch is in flight nothing is scheduled: its success sends what queued.
        let fourth = state.append(4)
        #expect(fourth == .queued(scheduleSend: false))
        let next = state.succeeded()
        #expect(next == State.Batch(number: 2, items: [4]) && state.delivered == 3)
        let none = state.succeeded()
        #expect(none == nil && state.isIdle && state.delivered == 4)
        // Idle again: the next item schedules a send again.
        let fifth = state.append(5)
        #expect(fifth == .queued(scheduleSend: true))
    }

    @Test func batchesAreBoundedAndGoOutInOrder() {
        var state = State(limits: Self.limits(maxBatch: 3))
        for n in 1...8 { _ = state.append(n) }
        var sent: [[Int]] = []
        var batch = state.sendScheduled()
        while let current = batch {
            sent.append(current.items)
            batch = state.succeeded()
        }
        #expect(sent == [[1, 2, 3], [4, 5, 6], [7, 8]] && state.isIdle)
    }

    @Test func aScheduledSendWithNothingToDoIsHarmless() {
        var state = State(limits: Self.limits())
        _ = state.append(1)
        let batch = state.sendScheduled()
        let again = state.sendScheduled()
        #expect(batch?.items == [1] && again == nil && state.inFlight?.items == [1])
    }

    @Test func aFailedBatchIsRetriedUnchangedWithDoublingBoundedBackoff() {
        var state = State(limits: Self.limits(backoffMs: 100, maxBackoffMs: 1_000))
        _ = state.append(1)
        _ = state.append(2)
        let batch = state.sendScheduled()
        var delays: [Int64] = []
        for _ in 1...6 {
            _ = state.append(delays.count + 10)  // arrives meanwhile, queued behind the batch
            let plan = state.failed()
            #expect(plan != nil && state.awaitingRetry)
            delays.append((plan?.delay.nanoseconds ?? 0) / 1_000_000)
            let early = state.succeeded()  // no answer is pending while it waits: ignored
            #expect(early == nil && state.awaitingRetry)
            let retried = state.retry(token: plan?.token ?? 0)
            #expect(retried == batch)
        }
        #expect(delays == [100, 200, 400, 800, 1_000, 1_000])
        // Success: the backoff starts over, the events queued meanwhile follow in order.
        let next = state.succeeded()
        #expect(next == State.Batch(number: 2, items: [10, 11, 12, 13, 14, 15]) && state.consecutiveFailures == 0)
        let plan = state.failed()
        #expect(plan?.delay == .milliseconds(100))
    }

    @Test func aFailureOutsideAnAttemptAndAStaleTimerAreIgnored() {
        var state = State(limits: Self.limits())
        let nothing = state.failed()
        #expect(nothing == nil)
        _ = state.append(1)
        _ = state.sendScheduled()
        let plan = state.failed()
        let twice = state.failed()  // the same failure reported twice
        #expect(plan != nil && twice == nil && state.consecutiveFailures == 1)
        let stale = state.retry(token: (plan?.token ?? 0) + 1)
        #expect(stale == nil && state.awaitingRetry)
        let retried = state.retry(token: plan?.token ?? 0)
        let again = state.retry(token: plan?.token ?? 0)
        #expect(retried?.items == [1] && again == nil)
    }

    @Test func aFullQueueDropsNewItemsAndCountsThemTheInFlightBatchNotCounted() {
        var state = State(limits: Self.limits(maxQueued: 2, maxBatch: 10))
        _ = state.append(1)
        _ = state.append(2)
        let third = state.append(3)
        #expect(third == .dropped(total: 1) && state.queued == 2)
        _ = state.sendScheduled()  // 1 and 2 in flight: room for two more
        let results = (4...7).map { state.append($0) }
        #expect(results == [.queued(scheduleSend: false), .queued(scheduleSend: false), .dropped(total: 2), .dropped(total: 3)])
        _ = state.failed()
        let fourth = state.retry(token: 1)
        #expect(fourth?.items == [1, 2])
        let next = state.succeeded()
        #expect(next?.items == [4, 5] && state.dropped == 3)
    }

    @Test func hurrySendsAWaitingBatchNowAndMakesItsTimerStale() {
        var state = State(limits: Self.limits())
        let idle = state.hurry()
        #expect(idle == nil)
        _ = state.append(1)
        let batch = state.sendScheduled()
        let inFlight = state.hurry()  // sent, not failed: nothing to hurry
        #expect(inFlight == nil)
        let plan = state.failed()
        let hurried = state.hurry()
        #expect(hurried == batch && !state.awaitingRetry)
        let stale = state.retry(token: plan?.token ?? 0)
        #expect(stale == nil)
        let second = state.failed()
        #expect(second?.delay == .milliseconds(200))  // still the second failure in a row
    }

    @Test func aBatchRejectedMaxRejectionsTimesInARowIsDiscardedAndTheNextGoesOut() {
        var state = State(limits: .init(maxQueued: 100, maxBatch: 2, backoff: .milliseconds(100), maxBackoff: .seconds(1), maxRejections: 3))
        for n in 1...3 { _ = state.append(n) }
        let first = state.sendScheduled()
        #expect(first == State.Batch(number: 1, items: [1, 2]))
        // Two rejections: retried like failures, unchanged, with the backoff growing.
        let once = state.rejected()
        #expect(once == .retry(.init(delay: .milliseconds(100), token: 1)))
        let again = state.retry(token: 1)
        #expect(again == first)
        let twice = state.rejected()
        #expect(twice == .retry(.init(delay: .milliseconds(200), token: 2)) && state.consecutiveRejections == 2)
        _ = state.retry(token: 2)
        // The third in a row: discarded and counted, and the next batch goes out at once.
        let third = state.rejected()
        #expect(third == .discarded(count: 2, next: State.Batch(number: 2, items: [3])))
        #expect(state.discarded == 2 && state.delivered == 0 && state.consecutiveRejections == 0 && state.consecutiveFailures == 0)
        // Outside an attempt a rejection is ignored.
        _ = state.succeeded()
        let stray = state.rejected()
        #expect(stray == nil && state.isIdle && state.delivered == 1)
    }

    @Test func aFailureOrSuccessBetweenRejectionsStartsTheCountAgain() {
        var state = State(limits: .init(maxQueued: 100, maxBatch: 10, backoff: .milliseconds(100), maxBackoff: .seconds(1), maxRejections: 2))
        _ = state.append(1)
        _ = state.sendScheduled()
        _ = state.rejected()
        _ = state.retry(token: 1)
        // An unreachable receiver is not a rejection: the batch stays, and the count restarts.
        _ = state.failed()
        _ = state.retry(token: 2)
        let afterFailure = state.rejected()
        guard case .retry = afterFailure else {
            Issue.record("a rejection after a failure discarded the batch: \(String(describing: afterFailure))")
            return
        }
        _ = state.retry(token: 3)
        let second = state.rejected()
        #expect(second == .discarded(count: 1, next: nil) && state.discarded == 1 && state.isIdle)
    }

    @Test func limitsAreSane() {
        let limits = State.Limits(maxQueued: 0, maxBatch: -1, backoff: .milliseconds(500), maxBackoff: .milliseconds(100))
        #expect(limits.maxQueued == 1 && limits.maxBatch == 1 && limits.maxBackoff == .milliseconds(500) && limits.maxRejections == 5)
        #expect(State.Limits(maxRejections: 0).maxRejections == 1)
        let state = State(limits: Self.limits(backoffMs: 1, maxBackoffMs: 60_000))
        #expect(state.backoff(afterFailures: 1) == .milliseconds(1) && state.backoff(afterFailures: 1_000) == .milliseconds(60_000))
    }
}
