import NIOCore
import STOMPCodec
import SwitchboardWire

/// Subscriptions and the destinations' history: registering a subscription under the
/// history's lock, the `RECEIPT` headers that tell the outcome, and the replay.
///
/// A `SUBSCRIBE` to one destination that keeps history is registered inside
/// ``DestinationHistory/resume(_:from:register:)``, which also reads what to replay
/// (`x-resume-from`, `x-last`). Its `RECEIPT` carries `x-position` (where the destination
/// stands) and, when the client asked to resume, `x-recovered: true|false`; the replayed
/// messages follow the `RECEIPT` (as fast as the connection takes them: see
/// ``pumpReplay(context:)``), then the live ones, which waited behind the step and the replay.
/// Live copies of messages the replay already holds (up to ``LocalSubscription/replayedThrough``)
/// are skipped, so the seam has no gap and no duplicate.
extension STOMPSessionHandler {
    /// What a `SUBSCRIBE` step found in history, written with its receipt.
    struct SubscribeOutcome {
        var subscription: LocalSubscription
        /// Nil: the destination keeps no history here.
        var replay: HistoryReplay?
        /// Whether the client asked to resume (`x-resume-from` or `x-last`).
        var asked: Bool
    }

    /// Registers `subscription` in the loop's shard: through the engine when its destination
    /// keeps history, keeping what the step's receipt must tell and replay. Returns the replay
    /// to wait for before the step is answered, when the engine reads history asynchronously.
    func register(_ subscription: LocalSubscription, start: HistoryStart?, step: Machine.StepID) -> EventLoopFuture<HistoryReplay>? {
        let pattern = subscription.pattern
        let registration =
            pattern.isWildcard
            ? nil
            : services.engine.registerWithHistory(pattern.text, from: start, on: shard.eventLoop) { shard.add(subscription) }
        switch registration {
        case nil:
            shard.add(subscription)
            if start != nil { subscribeOutcomes[step] = SubscribeOutcome(subscription: subscription, replay: nil, asked: true) }
            return nil
        case .ready(let replay)?:
            subscription.replayedThrough = replay.position
            // The embedded broker's (Redis answers `.ready` only for a destination not yet
            // sequenced, with no epoch to compare).
            subscription.replayedInStep = services.engine.history != nil
            subscribeOutcomes[step] = SubscribeOutcome(subscription: subscription, replay: replay, asked: start != nil)
            return nil
        case .pending(let through, let replay)?:
            subscription.replayedThrough = through
            subscription.registeredEpoch = through?.epoch
            // The client may have seen more than this instance has delivered yet (it comes from
            // a faster one, maybe in a newer epoch): the live copies up to its position are its own.
            if case .after(let claimed)? = start, through.map({ claimed.epoch != $0.epoch || claimed.sequence > $0.sequence }) ?? true {
                subscription.claimedThrough = claimed
            }
            subscription.replayPending = true
            return replay
        }
    }

    /// A replay read asynchronously came back: kept for the step's receipt.
    func replayArrived(_ replay: HistoryReplay, for subscription: LocalSubscription, asked: Bool, step: Machine.StepID) {
        var replay = replay
        // Registered before the position was known, or resuming from further than it: live
        // copies up to the replay's position are the replay's (or the client's already).
        if let live = subscription.liveDuringReplay, live.first.epoch == replay.position.epoch {
            // Live copies went out meanwhile: those after the last one go on (the replay stops
            // before the first), unless the client is further still (it resumed from a position
            // this instance had not reached: nothing to replay, and nothing up to it again).
            let clientAhead = replay.messages.isEmpty && replay.position.sequence > live.last.sequence
            subscription.replayedThrough = clientAhead ? replay.position : live.last
        } else {
            let behind = subscription.replayedThrough.map { $0.epoch != replay.position.epoch || $0.sequence < replay.position.sequence } ?? true
            if behind { subscription.replayedThrough = replay.position }
        }
        if let registered = subscription.registeredEpoch, registered != replay.position.epoch {
            subscription.leavingEpoch = registered
        }
        subscription.registeredEpoch = nil
        if let claimed = subscription.claimedThrough {
            if claimed.epoch != replay.position.epoch {
                // History is in another epoch: the replay and the live copies settle the seam.
                subscription.claimedThrough = nil
            } else if claimed.sequence > replay.position.sequence && !replay.recovered {
                // Ahead of history itself (a position it never had): the subscription goes on
                // from where history stands, or from the last copy skipped meanwhile as the
                // client's, not once the destination gets that far.
                subscription.claimedThrough = nil
                if let skipped = subscription.skippedAsClientsThrough, skipped.epoch == claimed.epoch,
                    skipped.sequence > replay.position.sequence
                {
                    subscription.replayedThrough = skipped
                    // The RECEIPT's x-position is where the subscription goes on from.
                    replay.position = skipped
                }
            }
        }
        subscription.skippedAsClientsThrough = nil
        subscribeOutcomes[step] = SubscribeOutcome(subscription: subscription, replay: replay, asked: asked)
    }

    /// The `RECEIPT` of step `step`, with the history outcome of a `SUBSCRIBE`.
    func receiptFrame(_ receipt: String, outcome: SubscribeOutcome?) -> STOMPFrame {
        var headers: STOMPHeaders = ["receipt-id": receipt]
        if let outcome {
            if let replay = outcome.replay { headers.add("x-position", replay.position.description) }
            if outcome.asked { headers.add("x-recovered", outcome.replay?.recovered == true ? "true" : "false") }
        }
        return STOMPFrame(.receipt, headers: headers)
    }

    /// Writes the replayed messages of a `SUBSCRIBE` (right after its receipt), as fast as the
    /// connection takes them (see ``pumpReplay(context:)``).
    func writeReplay(_ outcome: SubscribeOutcome, context: ChannelHandlerContext) {
        let live = outcome.subscription.liveDuringReplay
        outcome.subscription.replayPending = false
        outcome.subscription.liveDuringReplay = nil
        guard let replay = outcome.replay, !replay.messages.isEmpty, outcome.subscription.slot >= 0 else { return }
        var messages = replay.messages[...]
        // From the first live copy on, the live messages (written after the replay) have them.
        if let live,
            let cut = messages.firstIndex(where: { message in
                message.position.map { $0.epoch == live.first.epoch && $0.sequence >= live.first.sequence } ?? false
            })
        {
            messages = messages[..<cut]
        }
        guard !messages.isEmpty else { return }
        if replayBacklog == nil {
            // Before the first write, even if the replay then goes out at once: with the unsent
            // limit set after it, the kernel took megabytes of a large replay in the first flush.
            replayBacklog = CircularBuffer(initialCapacity: 1)
            machine.replayPacing(true, at: shard.tick)  // the client's next frames wait for the replay
            limitUnsentBytes(true, context: context)
        }
        replayBacklog!.append(ReplayRemainder(subscription: outcome.subscription, messages: messages))
        pumpReplay(context: context)
    }

    /// The live messages of another epoch than the client's kept while the replay was read
    /// (``LocalSubscription/deferredDuringReplay``) follow the replay if it is in their epoch
    /// (through the seam: those it holds are dropped); of an older epoch, one the replay left
    /// behind, they are dropped; of a newer one (history started over after the read), they
    /// follow. `replayEpoch`: nil without a replay (they all go through the seam).
    func deliverDeferred(_ subscription: LocalSubscription, replayEpoch: String?, context: ChannelHandlerContext) {
        // One was dropped for the limit: none goes out after the replay (the client would resume
        // past the hole), the session fails.
        if deferredOverLimit {
            failDeferredOverLimit()
            return
        }
        guard !subscription.deferredDuringReplay.isEmpty else { return }
        let messages = subscription.deferredDuringReplay
        subscription.deferredDuringReplay = []
        var batch = DeliveryBatch(tick: shard.tick)
        for message in messages {
            deferredBytes -= Self.deferredSize(message)
            // Of an epoch older than the replay's: left. (A newer one began after the read.)
            if let replayEpoch, let epoch = message.position?.epoch, Self.epoch(epoch, isOlderThan: replayEpoch) { continue }
            deliver(message, to: subscription, batch: &batch)
        }
        shard.counters.record(batch)
        if let buffer = takeUndelivered() { hold(buffer, behind: machine.newestStep, context: context) }
    }

    /// Whether epoch `a` began before `b`. Redis's epochs are the server's time when history
    /// started (``HistoryFunctions``, fixed-width hex): they sort as text of one length. The
    /// embedded broker's are the process's prefix and a generation in base 36 without leading
    /// zeros (``DestinationHistory``): a longer one is newer, and of one length they sort as text
    /// (`0`–`9` before `a`–`z`).
    static func epoch(_ a: String, isOlderThan b: String) -> Bool {
        a.utf8.count != b.utf8.count ? a.utf8.count < b.utf8.count : a < b
    }

    /// What a kept live message counts against the session's pending bytes: its body and an
    /// estimate of its frame's head.
    static func deferredSize(_ message: PublishedMessage) -> Int { message.body.readableBytes + 256 }

    /// Kept live messages went past their limit (``LocalSubscription/maxDeferredDuringReplay``,
    /// or `limits.max-pending-bytes` with what the session holds): the session ends as a slow
    /// consumer (the client resumes from the last message it got).
    func failDeferredOverLimit() {
        deferredOverLimit = false
        for subscription in subscriptions.values { subscription.deferredDuringReplay = [] }
        deferredBytes = 0
        machine.errorOccurred(
            SessionFailure(
                "slow consumer: more live messages of another epoch than the session may hold (\(config.maxPendingOutboundBytes) bytes, "
                    + "\(LocalSubscription.maxDeferredDuringReplay) messages) arrived while a replay was read",
                kind: .slowConsumer))
        runActions()
    }
}
