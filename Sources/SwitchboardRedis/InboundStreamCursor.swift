/// Where the reader of an inbound stream route stands, and what it does after each batch: a
/// pure state machine, ``RedisInboundRoutes`` carries out what it says.
///
/// The entries of a batch are recorded in one go (pipelined), then their outcomes are looked
/// at in stream order:
/// - The reader moves on past every entry up to the first whose recording failed and is to be
///   tried again, and reads again from there after a backoff. An entry is not lost because
///   Redis refused or dropped its recording for a moment (a failover of the shard holding the
///   history, a full command queue, out of memory): the entries are still in the stream.
/// - The entries after it that were recorded are remembered and not recorded again.
/// - A failure that will pass by itself (``RedisEngine/willPass(_:)``) is retried until the
///   entry is `recordableFor` old (below). Any other (an ACL, a script error, a key of the wrong
///   type) is retried until the entry has been failing for `giveUpAfter` (the entries of a
///   batch failing together expire together); then it is given up, counted and logged. Given
///   up at once, without the wait: any such failure within `giveUpAfter` of an entry given up
///   after failing so for `giveUpAfter` (Redis refuses for good), and any of a destination
///   given up before with none of its entries recorded since. So what Redis will not take holds
///   back the stream for `giveUpAfter` once, not per entry.
/// - A failed entry older than `recordableFor` (its id's time against Redis's `TIME`) is given
///   up whatever the failure: the `once` token of a copy another instance recorded then is
///   gone, and recording it now would deliver it twice. An id whose time is not a plausible
///   Unix time (`1-1`: the producer numbers its entries) has no age.
/// - An entry recorded after one that failed before it (a later entry of the same batch) is
///   numbered before it: the destination's order is then the order of recording, not the
///   stream's.
/// - Instances share how far they read (``sharedThrough``, kept in Redis): an instance that
///   starts reads from there, and one that reads entries at or before it that are older than
///   `recordableFor` skips them (another instance recorded them, and their `once` tokens may
///   be gone).
struct InboundStreamCursor {
    /// An entry's outcome in one batch.
    enum Outcome: Equatable {
        /// Recorded (or delivered here) for `destination`, or skipped (not a message: nil).
        case done(destination: String?)
        /// Its recording for `destination` failed; `transient` when the failure will pass by itself.
        case failed(destination: String, transient: Bool, reason: String)
    }

    struct Entry: Equatable {
        var id: String
        var outcome: Outcome
    }

    /// What the reader does next: count and log the entries given up, then read again, at once
    /// or (`retry`) from an entry whose recording failed after a delay.
    struct Next: Equatable {
        struct GivenUp: Equatable {
            var id: String
            var reason: String
        }
        struct Retry: Equatable {
            var id: String
            var after: Duration
            var reason: String
        }
        var givenUp: [GivenUp] = []
        var retry: Retry?
    }

    /// The last entry done with; nil until the reader found the stream's end.
    var lastID: String?
    /// Entries after ``lastID`` the reader is done with already (recorded while one before
    /// them failed): not recorded again. Only ids of the last batch (the next starts before them).
    private(set) var doneAhead: Set<String> = []
    /// The entry retried, and how many times in a row.
    private var retried: (id: String, attempts: Int)?
    /// Entries of the last batch failing for a reason that does not pass by itself: since when.
    private(set) var refusedSince: [String: ContinuousClock.Instant] = [:]
    /// Destinations with an entry given up and none recorded since (at most
    /// ``maxGivenUpDestinations``: the oldest go first).
    private(set) var givenUpDestinations: [String: ContinuousClock.Instant] = [:]
    /// The last give-up for a reason that does not pass by itself.
    private var lastGiveUp: ContinuousClock.Instant?
    /// How long an entry is retried while it fails for a reason that will not pass by itself.
    let giveUpAfter: Duration
    /// How old an entry may be (its id's time) and still be recorded: less than the `once`
    /// token's 10 minutes.
    let recordableFor: Duration
    static let maxGivenUpDestinations = 10_000

    init(giveUpAfter: Duration = .seconds(30), recordableFor: Duration = .seconds(540)) {
        self.giveUpAfter = giveUpAfter
        self.recordableFor = recordableFor
    }

    /// Whether the entry must be recorded (false: done with already).
    func needsRecording(_ id: String) -> Bool { !doneAhead.contains(id) }

    /// The shared position of the stream (``InboundCursor``): entries after ``sharedFrom``
    /// through ``sharedThrough`` were read past by some instance, which recorded them (or gave
    /// them up).
    var sharedThrough: String?
    var sharedFrom: String?

    /// Whether entry `id` (of a destination that keeps history) is within the shared position
    /// and older than ``recordableFor`` (`wallMilliseconds`: Redis's time now): another
    /// instance recorded it, and its `once` token may be gone, so recording it again would
    /// deliver it twice (an instance cut off from Redis for longer, or fallen that far behind,
    /// recorded its whole backlog again).
    func recordedElsewhere(_ id: String, wallMilliseconds: Int64?) -> Bool {
        guard let through = sharedThrough, let from = sharedFrom, let wallMilliseconds,
            let age = Self.age(of: id, wallMilliseconds: wallMilliseconds)
        else { return false }
        return age >= recordableFor && Self.id(id, isAfter: from) && !Self.id(id, isAfter: through)
    }

    /// Whether stream id `a` comes after `b` (`<ms>-<seq>`; an id not of that form is after none).
    static func id(_ a: String, isAfter b: String) -> Bool {
        guard let x = parse(a), let y = parse(b) else { return false }
        return x.ms != y.ms ? x.ms > y.ms : x.seq > y.seq
    }

    private static func parse(_ id: String) -> (ms: UInt64, seq: UInt64)? {
        guard let dash = id.firstIndex(of: "-"), let ms = UInt64(id[..<dash]), let seq = UInt64(id[id.index(after: dash)...]) else { return nil }
        return (ms, seq)
    }

    /// Where the stream ends now: `lastGenerated` is the greatest id it ever gave an entry
    /// (`XINFO STREAM`), nil when there is no such stream. A stream that ends before the
    /// reader's position went back: Redis restarted from an older snapshot, failed over to a
    /// replica behind, or the key was deleted and added again. Its next entries are read from
    /// its end: read from the old position, they would be skipped until their ids passed it
    /// (ids the producer chose, a new primary's clock behind the old one's). What the stream
    /// holds up to its end now is taken as read. Returns the position left, nil when the
    /// stream is not behind it.
    mutating func streamEnds(at lastGenerated: String?) -> String? {
        let end = lastGenerated ?? "0-0"
        guard let position = lastID, Self.id(position, isAfter: end) else { return nil }
        lastID = end
        // Ids after the old position may be given again, to other entries.
        doneAhead = []
        retried = nil
        refusedSince = [:]
        return position
    }

    /// The outcomes of a batch's entries, in stream order; `now` on the monotonic clock,
    /// `wallMilliseconds` on the clock of the entries' ids (Redis's `TIME`; nil: unknown, no
    /// entry is given up for its age).
    mutating func batchDone(_ entries: [Entry], at now: ContinuousClock.Instant, wallMilliseconds: Int64?) -> Next {
        var next = Next()
        var stop: Int?
        var refused: [String: ContinuousClock.Instant] = [:]
        for (index, entry) in entries.enumerated() {
            switch entry.outcome {
            case .done(let destination):
                if let destination { givenUpDestinations[destination] = nil }
            case .failed(let destination, let transient, let reason):
                if !transient { refused[entry.id] = refusedSince[entry.id] ?? now }
                guard stop == nil else { continue }
                if let wallMilliseconds, let age = Self.age(of: entry.id, wallMilliseconds: wallMilliseconds), age >= recordableFor {
                    next.givenUp.append(.init(id: entry.id, reason: "older than \(recordableFor) and not recorded: \(reason)"))
                } else if !transient, let (why, timedOut) = giveUpReason(destination, since: refused[entry.id]!, now: now) {
                    next.givenUp.append(.init(id: entry.id, reason: "\(why): \(reason)"))
                    // Only an entry that failed for the whole time opens the window: one given
                    // up at once (its destination's) would keep it open for every other.
                    if timedOut { lastGiveUp = now }
                    remember(destination, now: now)
                } else {
                    stop = index
                }
            }
        }
        // Only the entries of this batch: the next starts at the entry retried, or after.
        refusedSince = refused
        guard let stop else {
            if let last = entries.last { lastID = last.id }
            doneAhead = []
            retried = nil
            return next
        }
        if stop > 0 { lastID = entries[stop - 1].id }
        let failed = entries[stop]
        doneAhead = Set(entries[(stop + 1)...].lazy.filter { if case .done = $0.outcome { true } else { false } }.map(\.id))
        let attempts = retried?.id == failed.id ? retried!.attempts + 1 : 1
        retried = (failed.id, attempts)
        guard case .failed(_, _, let reason) = failed.outcome else { return next }
        next.retry = .init(id: failed.id, after: Self.retryDelay(afterAttempts: attempts), reason: reason)
        return next
    }

    /// Why an entry failing for a reason that does not pass by itself is given up now, and
    /// whether it failed for `giveUpAfter`; nil: not yet.
    private func giveUpReason(_ destination: String, since: ContinuousClock.Instant, now: ContinuousClock.Instant) -> (String, timedOut: Bool)? {
        if now - since >= giveUpAfter { return ("refused for \(giveUpAfter) or more", true) }
        if let last = lastGiveUp, now - last < giveUpAfter { return ("refused \(now - last) after an entry refused for \(giveUpAfter)", false) }
        if givenUpDestinations[destination] != nil { return ("refused like the entries of its destination given up before", false) }
        return nil
    }

    private mutating func remember(_ destination: String, now: ContinuousClock.Instant) {
        if givenUpDestinations[destination] == nil, givenUpDestinations.count >= Self.maxGivenUpDestinations,
            let oldest = givenUpDestinations.min(by: { $0.value < $1.value })?.key
        {
            givenUpDestinations[oldest] = nil
        }
        givenUpDestinations[destination] = now
    }

    /// How old entry `id` (`<unix-ms>-<n>`) is; nil for an id not of that form, or whose time is
    /// before 2001 (not a Unix time in milliseconds: ids the producer chose).
    static func age(of id: String, wallMilliseconds: Int64) -> Duration? {
        guard let dash = id.firstIndex(of: "-"), let millis = Int64(id[..<dash]), millis >= 1_000_000_000_000 else { return nil }
        return .milliseconds(wallMilliseconds - millis)
    }

    /// 100 ms after the first failure of an entry, doubled per failure, at most 5 s.
    static func retryDelay(afterAttempts attempts: Int) -> Duration {
        .milliseconds(min(5_000, 100 << min(max(attempts, 1) - 1, 6)))
    }
}
