import NIOCore
import SwitchboardCore
import SwitchboardWire

/// The order of one destination's messages on this instance (Redis mode): a pure state machine,
/// without I/O, that the engine feeds with what arrives and that says what to deliver and when
/// to read history.
///
/// Messages of a destination that keeps history carry dense positions (`<epoch>:<n>`). The
/// sequencer delivers them in sequence order, each once:
/// - a message right after the last delivered one goes out at once, with any buffered ones
///   that follow it;
/// - a copy of one delivered already is dropped;
/// - a message beyond a hole (Pub/Sub lost one, e.g. the subscriber connection dropped) is
///   buffered and a **repair** is asked for: the engine reads the history after the last
///   delivered position and feeds it to ``repaired(_:)``;
/// - a hole the history cannot fill (trimmed or expired, or the destination's history was
///   lost: a new epoch) is skipped, and counted: subscribers see the jump in `x-position`.
///
/// While the engine is still learning where the destination stands (``position`` is nil, just
/// after the first local subscription) everything is buffered.
struct DestinationSequencer {
    /// What to do after an event.
    struct Actions: Equatable {
        /// Messages to hand to the hub, in this order.
        var deliver: [PublishedMessage] = []
        /// Read the history after this position (one read at a time).
        var repairAfter: StreamPosition?
        /// Messages known lost for good (a hole history could not fill).
        var skipped: UInt64 = 0

        /// Counts `n` more skipped, saturating: a position forged on a destination's channel
        /// (`epoch:18446744073709551615`) must not trap the instance.
        mutating func skip(_ n: UInt64) {
            let (sum, overflow) = skipped.addingReportingOverflow(n)
            skipped = overflow ? .max : sum
        }
        /// Call ``retryRepair(timer:)`` with it after its delay (a failed read; one timer at a
        /// time).
        var retryAfter: RetryTimer?

        static func == (a: Actions, b: Actions) -> Bool {
            a.deliver.map(\.position) == b.deliver.map(\.position) && a.repairAfter == b.repairAfter && a.skipped == b.skipped
                && a.retryAfter == b.retryAfter
        }
    }

    /// The last position handed on; nil until established.
    private(set) var position: StreamPosition?
    /// Messages ahead of a hole (or waiting for the position), by sequence number, of one epoch.
    private var pending: [UInt64: PublishedMessage] = [:]
    private var pendingEpoch: String?
    /// A history read is running.
    private(set) var repairing = false
    /// The position the running read asked after. History is read by sequence number, whatever
    /// the epoch (`switchboard_read` after n): a reply in another epoch covers only its
    /// sequences after this one's.
    private var repairAsked: StreamPosition?
    /// A read is owed that no running one covers: the subscriber connection came back while a
    /// read ran (or before the position was known), or a read failed. Asked for as soon as
    /// nothing runs, whether or not anything is buffered.
    private var repairOwed = false
    /// A live message came too far ahead to buffer (``maxAhead``): a read is owed until one
    /// succeeds (a read refused for good, by an ACL say, is retried with its back-off; the
    /// message is in history, and comes with the first read that works).
    private var farAheadOwed = false
    /// History reads that failed in a row (none succeeded since): the retries back off
    /// (``retryDelay(afterFailures:)``).
    private(set) var repairFailures = 0

    /// A retry timer to start: after `delay`, ``retryRepair(timer:)`` with its `number`.
    struct RetryTimer: Equatable {
        var delay: TimeAmount
        var number: UInt64
    }
    /// The number of the last timer started: one whose number is not this any more fires for
    /// nothing.
    private var retryTimerNumber: UInt64 = 0
    /// A ``Actions/retryAfter`` timer is running: a failure meanwhile starts no other (each
    /// failed read started its own timer, and reads that fail at once, like `OOM`'s, kept
    /// several chains of retries going for good).
    private var retryScheduled = false
    /// Failed reads in a row that will not pass by themselves, while the same hole waits
    /// (``repairFailed(transient:)``).
    private var refusals = 0
    /// The epochs this instance has left for another (the last few), with the last sequence
    /// it delivered in each. A copy of one is not a new epoch: at or below that sequence it was
    /// delivered already; above it, it is a late message of the epoch left (still unread on the
    /// subscriber connection when a repair read the new one), or the epoch came back (a
    /// failover to a replica that kept it): it is dropped, and a repair asks history which
    /// epoch is current (one that came back goes on from where it was left).
    private var leftEpochs: [StreamPosition] = []
    /// The first buffered sequence after a read that left it beyond history's newest, and how
    /// many reads in a row did: the first is read again at once (published since, on its way),
    /// later ones after a back-off (a position history never had, forged on the channel, or
    /// lost by a rollback, was read again and again without pause).
    private var beyondHistory: (epoch: String?, sequence: UInt64, reads: Int)?
    /// Beyond this many buffered messages a hole is given up on.
    let maxPending: Int
    /// A live message farther ahead of the position than this is not buffered, only read from
    /// history (a failover's jump of 1,000,000 positions costs one read more).
    static var maxAhead: UInt64 { 1 << 20 }

    init(maxPending: Int = 10_000) { self.maxPending = maxPending }

    var pendingCount: Int { pending.count }

    /// Where the destination stood once the instance was subscribed: messages up to it are
    /// not delivered (they predate the subscriptions), later ones are.
    mutating func established(at start: StreamPosition) -> Actions {
        position = start
        var actions = Actions()
        let buffered = takePending()
        for message in buffered { receive(message, into: &actions) }
        askOwedRepair(into: &actions)
        return actions
    }

    /// A message arrived on the destination's channel.
    mutating func receive(_ message: PublishedMessage) -> Actions {
        var actions = Actions()
        receive(message, into: &actions)
        return actions
    }

    /// The subscriber connection came back: anything published meanwhile is in history.
    mutating func reconnected() -> Actions {
        // Redis is back: a read failing once more is asked again soon, not after the backoff
        // the outage built up (the timer running, up to 5 s away, fires for nothing).
        repairFailures = 0
        if retryScheduled {
            retryScheduled = false
            retryTimerNumber += 1
        }
        guard let position, !repairing else {
            // The running read (or the one establishing the position) may have been taken
            // before the subscriptions were back: read again after it.
            repairOwed = true
            return Actions()
        }
        var actions = Actions()
        askRepair(after: position, into: &actions)
        return actions
    }

    /// A history read (after ``Actions/repairAfter``) came back: `newest` is where history
    /// stands, `messages` what it keeps after the position asked for, oldest first.
    mutating func repaired(newest: StreamPosition, messages: [PublishedMessage]) -> Actions {
        repairFailures = 0
        refusals = 0
        // Not by a read asked before the far-ahead message came (another one is owed then).
        if !repairOwed { farAheadOwed = false }
        var actions = repairedRead(newest: newest, messages: messages)
        askOwedRepair(into: &actions)
        return actions
    }

    private mutating func repairedRead(newest: StreamPosition, messages: [PublishedMessage]) -> Actions {
        repairing = false
        let asked = repairAsked
        repairAsked = nil
        var actions = Actions()
        guard var current = position else { return actions }
        if let asked, asked.epoch != current.epoch, newest.epoch == asked.epoch {
            // A stale reply: read in the epoch this instance has left since (FLUSHALL, a restart
            // while the read was on its way). Its messages are older than those delivered.
            if !pending.isEmpty { askRepair(after: current, into: &actions) }
            return actions
        }
        if newest.epoch != current.epoch {
            // History was lost (Redis restarted empty, or the keys expired): what the old
            // epoch still owed is gone; the new one starts before its first kept message (an
            // epoch left before and current again goes on from where it was left).
            flushPending(&actions)
            let back = leftEpochs.firstIndex { $0.epoch == newest.epoch }.map { leftEpochs.remove(at: $0) }
            leave(position ?? current)
            current = back ?? StreamPosition(epoch: newest.epoch, sequence: 0)
            position = current
        }
        if let asked, asked.sequence > current.sequence {
            // The read began past where this instance stands in the new epoch (it asked after
            // the old epoch's position): keep what it brought, and read from here.
            if pendingEpoch != current.epoch { pending.removeAll() }
            pendingEpoch = current.epoch
            for message in messages {
                if let p = message.position, p.epoch == current.epoch, p.sequence > current.sequence { pending[p.sequence] = message }
            }
            drainPending(&actions)
            askRepair(after: position ?? current, into: &actions)
            return actions
        }
        // Everything up to `newest` is known now: kept in history, buffered here, or lost.
        if pendingEpoch != current.epoch { pending.removeAll() }
        pendingEpoch = current.epoch
        for message in messages {
            if let p = message.position, p.epoch == current.epoch, p.sequence > current.sequence { pending[p.sequence] = message }
        }
        for (sequence, message) in pending.sorted(by: { $0.key < $1.key }) where sequence <= newest.sequence {
            actions.skip(sequence - current.sequence - 1)
            current.sequence = sequence
            actions.deliver.append(message)
            pending[sequence] = nil
        }
        if newest.sequence > current.sequence {
            actions.skip(newest.sequence - current.sequence)
            current.sequence = newest.sequence
        }
        position = current
        drainPending(&actions)
        guard let head = pending.keys.min() else {
            beyondHistory = nil
            return actions
        }
        // Published after the read: on their way, or lost too; read again.
        // (A head delivered since is behind the position: a new one is another sequence, or
        // of another epoch.)
        let same = beyondHistory.map { $0.sequence == head && $0.epoch == pendingEpoch } ?? false
        let reads = same ? beyondHistory!.reads + 1 : 1
        beyondHistory = (pendingEpoch, head, reads)
        if reads == 1 {
            askRepair(after: current, into: &actions)
        } else if !retryScheduled {
            retryScheduled = true
            retryTimerNumber += 1
            actions.retryAfter = RetryTimer(delay: Self.retryDelay(afterFailures: reads - 1), number: retryTimerNumber)
        }
        return actions
    }

    /// A history read failed: the engine retries later (``retryRepair()``); beyond
    /// ``maxPending`` buffered messages the hole is given up.
    ///
    /// - Parameter transient: the failure will pass (Redis unreachable, loading, failing over):
    ///   the read is owed until one succeeds, whether or not anything is buffered. Otherwise
    ///   (e.g. a reply that cannot be decoded, an ACL refusing the read) it is asked for again
    ///   only while messages are buffered, and after ``refusalsBeforeGivingUp`` such failures
    ///   in a row the hole is given up: the buffered messages go out, the jump counted (they
    ///   waited until 10,000 were buffered, and the destination's subscribers got nothing).
    mutating func repairFailed(transient: Bool) -> Actions {
        repairFailures += 1
        repairing = false
        repairAsked = nil
        if transient {
            repairOwed = true
            refusals = 0
        } else if !pending.isEmpty {
            refusals += 1
        }
        var actions = Actions()
        if !retryScheduled {
            retryScheduled = true
            retryTimerNumber += 1
            actions.retryAfter = RetryTimer(delay: Self.retryDelay(afterFailures: repairFailures), number: retryTimerNumber)
        }
        if pending.count >= maxPending || refusals >= Self.refusalsBeforeGivingUp {
            refusals = 0
            flushPending(&actions)
        }
        return actions
    }

    /// Failed reads in a row, none of them transient, after which a hole is given up.
    static var refusalsBeforeGivingUp: Int { 3 }

    /// How long after the `failures`-th failed read in a row the read is asked for again:
    /// 200 ms, doubled per failure, at most 5 s (a Redis refusing reads for minutes, out of
    /// memory say, is not asked five times a second per destination).
    static func retryDelay(afterFailures failures: Int) -> TimeAmount {
        .milliseconds(min(5_000, 200 << min(max(failures, 1) - 1, 5)))
    }

    /// Asks for the repair again after a failure, if one is still needed. `timer`: the one that
    /// fired (nothing if another replaced it); nil: now, whatever timer runs.
    mutating func retryRepair(timer: UInt64? = nil) -> Actions {
        if let timer, timer != retryTimerNumber { return Actions() }
        retryScheduled = false
        guard let position, !repairing, repairOwed || farAheadOwed || !pending.isEmpty else { return Actions() }
        var actions = Actions()
        askRepair(after: position, into: &actions)
        return actions
    }

    // MARK: Internals

    private mutating func receive(_ message: PublishedMessage, into actions: inout Actions) {
        guard let p = message.position else {
            actions.deliver.append(message)
            return
        }
        guard var current = position else {
            buffer(message, p)
            return
        }
        if p.epoch != current.epoch {
            if let left = leftEpochs.first(where: { $0.epoch == p.epoch }) {
                // From an epoch left already: delivering it would go back in time (and start
                // over the epoch it came from). A copy of one delivered is dropped; a later
                // one is counted as skipped, and history says whether its epoch came back.
                if p.sequence > left.sequence {
                    actions.skip(1)
                    // A read running may have read Redis before the epoch came back: one more.
                    if repairing { repairOwed = true } else { askRepair(after: current, into: &actions) }
                }
                return
            }
            // A new epoch: the old one's hole can never be filled.
            flushPending(&actions)
            leave(position ?? current)
            current = StreamPosition(epoch: p.epoch, sequence: 0)
            position = current
        }
        if p.sequence <= current.sequence { return }  // a copy
        if p.sequence - current.sequence > Self.maxAhead {
            // Not buffered: history says where the destination stands, and holds the message if
            // it is real. A position forged on the channel near the top of the range, buffered
            // until 10,000 were, moved the position there for good: every real message after
            // it was dropped as a copy.
            farAheadOwed = true
            if repairing { repairOwed = true } else { askRepair(after: current, into: &actions) }
            return
        }
        if p.sequence == current.sequence &+ 1 {
            position = p
            actions.deliver.append(message)
            drainPending(&actions)
            return
        }
        buffer(message, p)
        if pending.count >= maxPending {
            flushPending(&actions)
        } else if !repairing {
            askRepair(after: current, into: &actions)
        }
    }

    /// Records the epoch of `position`, left for another, and how far it was delivered.
    private mutating func leave(_ position: StreamPosition) {
        leftEpochs.removeAll { $0.epoch == position.epoch }
        if leftEpochs.count >= 8 { leftEpochs.removeFirst() }
        leftEpochs.append(position)
    }

    /// Starts a history read after `position` (one at a time).
    private mutating func askRepair(after position: StreamPosition, into actions: inout Actions) {
        repairOwed = false
        repairing = true
        repairAsked = position
        actions.repairAfter = position
    }

    /// Asks for a read owed (``repairOwed``) once none runs and the position is known.
    private mutating func askOwedRepair(into actions: inout Actions) {
        guard repairOwed, !repairing, let position else { return }
        askRepair(after: position, into: &actions)
    }

    private mutating func buffer(_ message: PublishedMessage, _ p: StreamPosition) {
        // A new hole: the refusals of the reads of an earlier one (closed by a late copy, say)
        // do not count against it.
        if pending.isEmpty { refusals = 0 }
        if pendingEpoch != p.epoch {
            pending.removeAll()
            pendingEpoch = p.epoch
        }
        if pending.count < maxPending || position != nil { pending[p.sequence] = message }
    }

    /// Delivers the buffered messages that follow ``position`` without a hole.
    private mutating func drainPending(_ actions: inout Actions) {
        guard var current = position, !pending.isEmpty, pendingEpoch == current.epoch else { return }
        while let next = pending.removeValue(forKey: current.sequence &+ 1) {
            current.sequence += 1
            actions.deliver.append(next)
        }
        position = current
        pending = pending.filter { $0.key > current.sequence }
    }

    /// Gives up on the holes: delivers everything buffered, in order, counting what is missing.
    private mutating func flushPending(_ actions: inout Actions) {
        guard !pending.isEmpty else { return }
        let epoch = pendingEpoch
        for message in takePending() {
            guard let p = message.position else { continue }
            if var current = position, current.epoch == epoch {
                guard p.sequence > current.sequence else { continue }
                actions.skip(p.sequence - current.sequence - 1)
                current.sequence = p.sequence
                position = current
            } else {
                position = p
            }
            actions.deliver.append(message)
        }
    }

    private mutating func takePending() -> [PublishedMessage] {
        let out = pending.sorted { $0.key < $1.key }.map(\.value)
        pending.removeAll()
        return out
    }
}
