/// Where the reader of an inbound stream route stands, and what it does after each batch: a
/// pure state machine, ``RedisInboundRoutes`` carries out what it says.
///
/// The entries of a batch are recorded in one go (pipelined), then their outcomes are looked
/// at in stream order:
/// - The reader moves on past every entry up to the first whose recording failed, and reads
///   again from there after a backoff. An entry is not lost because Redis refused or dropped
///   its recording for a moment (a failover of the shard holding the history, a full command
///   queue, an ACL, out of memory): the entries are still in the stream.
/// - The entries after the failed one that were recorded are remembered and not recorded
///   again (their `once` token would make a second recording a no-op only while Redis keeps it).
/// - A failure that will pass by itself (``RedisEngine/willPass(_:)``: Redis unreachable, out of
///   memory, read-only for a failover) is retried for as long as it lasts. Any other (an ACL
///   refusal, a script error) is retried until the entry has been failing for `giveUpAfter`:
///   then the entry is given up (counted and logged), so one entry Redis will never take does
///   not hold back the stream.
/// - An entry recorded after one that failed before it (a later entry of the same batch) is
///   numbered before it: the destination's order is then the order of recording, not the
///   stream's.
struct InboundStreamCursor {
    /// An entry's outcome in one batch.
    enum Outcome: Equatable {
        /// Recorded, delivered here, or skipped (not a message): the reader is done with it.
        case done
        /// Its recording failed; `transient` when the failure will pass by itself.
        case failed(transient: Bool, reason: String)
    }

    /// What the reader does next.
    enum Next: Equatable {
        /// Reads the next batch.
        case readOn
        /// Reads again from the failed entry after `delay`.
        case retry(id: String, after: Duration, reason: String)
        /// The entry `id` is given up; reads on after it.
        case gaveUp(id: String, reason: String)
    }

    /// The last entry done with; nil until the reader found the stream's end.
    var lastID: String?
    /// Entries after ``lastID`` the reader is done with already (recorded while one before
    /// them failed): not recorded again.
    private(set) var doneAhead: Set<String> = []
    /// The entry failing first in stream order: since when, and how many times in a row.
    private(set) var failing: (id: String, since: ContinuousClock.Instant, attempts: Int)?
    /// How long an entry whose recording keeps failing for a reason that will not pass by
    /// itself is tried.
    let giveUpAfter: Duration

    init(giveUpAfter: Duration = .seconds(30)) { self.giveUpAfter = giveUpAfter }

    /// Whether the entry must be recorded (false: done with already).
    func needsRecording(_ id: String) -> Bool { !doneAhead.contains(id) }

    /// The outcomes of a batch's entries, in stream order.
    mutating func batchDone(_ outcomes: [(id: String, outcome: Outcome)], at now: ContinuousClock.Instant) -> Next {
        guard let first = outcomes.firstIndex(where: { $0.outcome != .done }) else {
            if let last = outcomes.last { lastID = last.id }
            doneAhead = []
            failing = nil
            return .readOn
        }
        if first > 0 { lastID = outcomes[first - 1].id }
        let failed = outcomes[first]
        for later in outcomes[(first + 1)...] where later.outcome == .done { doneAhead.insert(later.id) }
        guard case .failed(let transient, let reason) = failed.outcome else { return .readOn }
        let attempts = failing?.id == failed.id ? failing!.attempts + 1 : 1
        let since = failing?.id == failed.id ? failing!.since : now
        if !transient && now - since >= giveUpAfter {
            lastID = failed.id
            failing = nil
            return .gaveUp(id: failed.id, reason: reason)
        }
        failing = (failed.id, since, attempts)
        return .retry(id: failed.id, after: Self.retryDelay(afterAttempts: attempts), reason: reason)
    }

    /// 100 ms after the first failure of an entry, doubled per failure, at most 5 s.
    static func retryDelay(afterAttempts attempts: Int) -> Duration {
        .milliseconds(min(5_000, 100 << min(max(attempts, 1) - 1, 6)))
    }
}
