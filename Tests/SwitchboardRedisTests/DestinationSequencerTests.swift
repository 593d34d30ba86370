import NIOCore
import SwitchboardCore
import SwitchboardWire
import Synchronization
import Testing

@testable import SwitchboardRedis

/// The per-destination order of Redis mode, without I/O: what is delivered, buffered, repaired
/// and skipped.
@Suite struct DestinationSequencerTests {
    static func message(_ sequence: UInt64, epoch: String = "e1") -> PublishedMessage {
        PublishedMessage(
            destination: "/topic/x", messageID: "m\(sequence)", headers: [:], body: ByteBuffer(string: "\(sequence)"),
            position: StreamPosition(epoch: epoch, sequence: sequence))
    }

    static func sequences(_ actions: DestinationSequencer.Actions) -> [UInt64] { actions.deliver.map { $0.position!.sequence } }

    static func at(_ sequence: UInt64, epoch: String = "e1") -> StreamPosition { StreamPosition(epoch: epoch, sequence: sequence) }

    @Test func buffersUntilEstablishedThenDeliversOnlyWhatFollows() {
        var s = DestinationSequencer()
        #expect(Self.sequences(s.receive(Self.message(4))) == [])
        #expect(Self.sequences(s.receive(Self.message(5))) == [])
        #expect(Self.sequences(s.receive(Self.message(6))) == [])
        // The instance's subscription began at 4: 4 predates it.
        let actions = s.established(at: Self.at(4))
        #expect(Self.sequences(actions) == [5, 6])
        #expect(actions.repairAfter == nil && actions.skipped == 0)
        #expect(s.position == Self.at(6))
    }

    /// Anyone who may PUBLISH on a destination's channel can forge `x-position`: the counts
    /// saturate, and the largest sequence is no end of the world (``InterestChurnTests`` runs
    /// the forged position through the engine, whose metric conversion trapped).
    @Test func aForgedPositionAtTheLargestSequenceDoesNotTrap() {
        var skipped = DestinationSequencer.Actions()
        skipped.skip(.max - 1)
        skipped.skip(5)
        #expect(skipped.skipped == .max)
        var s = DestinationSequencer()
        _ = s.established(at: Self.at(1))
        let forged = s.receive(Self.message(.max, epoch: "forged"))
        #expect(forged.deliver.isEmpty && forged.repairAfter == Self.at(0, epoch: "forged"))
        let repaired = s.repaired(newest: Self.at(5), messages: [Self.message(2), Self.message(3), Self.message(4), Self.message(5)])
        // Far ahead, the forged one was not buffered: nothing counted for it, and the real
        // epoch goes on where it was left.
        #expect(Self.sequences(repaired) == [2, 3, 4, 5] && repaired.skipped == 0)
        #expect(s.position?.epoch == "e1")
        // And a position at the largest sequence in the real epoch: later copies are dropped.
        var t = DestinationSequencer()
        _ = t.established(at: Self.at(.max - 1))
        #expect(Self.sequences(t.receive(Self.message(.max))) == [.max])
        #expect(Self.sequences(t.receive(Self.message(.max))) == [])
    }

    /// Forged positions near the top of the range, 10,000 of them, filled the buffer, which was
    /// then given up on: the position jumped there, and every real message after it was dropped
    /// as a copy (and a resume's hole check trapped on the range). Far ahead, a message is not
    /// buffered: history is read, and says where the destination stands.
    @Test func forgedPositionsFarAheadAreNotBuffered() {
        var s = DestinationSequencer(maxPending: 3)
        _ = s.established(at: Self.at(100))
        for i in 0..<5 {
            let actions = s.receive(Self.message(.max - UInt64(i)))
            #expect(actions.deliver.isEmpty)
        }
        #expect(s.pendingCount == 0)
        #expect(s.position == Self.at(100))
        let read = s.repaired(newest: Self.at(100), messages: [])
        #expect(read.deliver.isEmpty && read.skipped == 0)
        #expect(Self.sequences(s.receive(Self.message(101))) == [101], "the real messages go on")
        #expect(!RedisEngine.followOn([Self.message(101)], after: 100, through: .max), "a range past Int.max does not trap")
    }

    /// A real message far ahead (two failovers' jumps) whose history read is refused for good
    /// (an ACL, a library that cannot be decoded): it is not buffered, so nothing was pending
    /// and the read was not asked again; the message was lost, uncounted. The read stays owed
    /// until one succeeds, and brings it.
    @Test func aFarAheadMessageKeepsItsReadOwedThroughRefusals() throws {
        var s = DestinationSequencer()
        _ = s.established(at: Self.at(10))
        let far = 10 + DestinationSequencer.maxAhead + 5
        #expect(s.receive(Self.message(far)).repairAfter == Self.at(10))
        for _ in 0..<4 {
            let failed = s.repairFailed(transient: false)
            let timer = try #require(failed.retryAfter, "retried after its back-off")
            #expect(s.retryRepair(timer: timer.number).repairAfter == Self.at(10))
        }
        let read = s.repaired(newest: Self.at(far), messages: [Self.message(far)])
        #expect(Self.sequences(read) == [far])
        #expect(read.skipped == far - 11)
    }

    /// The same with a read already running when the message came: that read (sent before it)
    /// does not clear what is owed for it.
    @Test func aReadSentBeforeTheFarAheadMessageDoesNotSettleIt() throws {
        var s = DestinationSequencer()
        _ = s.established(at: Self.at(10))
        _ = s.receive(Self.message(12))  // a hole: a read runs
        let far = 12 + DestinationSequencer.maxAhead + 5
        #expect(s.receive(Self.message(far)).repairAfter == nil, "a read runs already")
        let first = s.repaired(newest: Self.at(12), messages: [Self.message(11), Self.message(12)])
        #expect(Self.sequences(first) == [11, 12])
        #expect(first.repairAfter == Self.at(12), "another read, for the far-ahead message")
        let failed = s.repairFailed(transient: false)
        let timer = try #require(failed.retryAfter)
        #expect(s.retryRepair(timer: timer.number).repairAfter == Self.at(12), "still owed after a refusal")
    }

    /// The engine's total of skipped messages: a forged count followed by any other trapped.
    @Test func aSaturatingAddNeverTraps() {
        let counter = Atomic<Int>(0)
        RedisEngine.addSaturating(1 << 40, to: counter)
        RedisEngine.addSaturating(.max, to: counter)
        RedisEngine.addSaturating(5, to: counter)
        #expect(counter.load(ordering: .relaxed) == .max)
    }

    @Test func inOrderMessagesGoOutAtOnceAndCopiesAreDropped() {
        var s = DestinationSequencer()
        _ = s.established(at: Self.at(0))
        #expect(Self.sequences(s.receive(Self.message(1))) == [1])
        #expect(Self.sequences(s.receive(Self.message(2))) == [2])
        #expect(Self.sequences(s.receive(Self.message(2))) == [])
        #expect(Self.sequences(s.receive(Self.message(1))) == [])
        #expect(s.position == Self.at(2))
    }

    @Test func holeAsksForOneRepairAndTheRepairFillsItInOrder() {
        var s = DestinationSequencer()
        _ = s.established(at: Self.at(1))
        let first = s.receive(Self.message(4))
        #expect(first.deliver.isEmpty && first.repairAfter == Self.at(1))
        // One read at a time: the next hole waits for it.
        let second = s.receive(Self.message(5))
        #expect(second.deliver.isEmpty && second.repairAfter == nil)
        let repaired = s.repaired(newest: Self.at(5), messages: [Self.message(2), Self.message(3), Self.message(4), Self.message(5)])
        #expect(Self.sequences(repaired) == [2, 3, 4, 5])
        #expect(repaired.skipped == 0 && repaired.repairAfter == nil)
        #expect(s.position == Self.at(5))
        #expect(s.pendingCount == 0)
    }

    @Test func holeHistoryNoLongerKeepsIsSkippedAndCounted() {
        var s = DestinationSequencer()
        _ = s.established(at: Self.at(1))
        _ = s.receive(Self.message(5))
        // Trimmed: only 4 and 5 are left in history.
        let repaired = s.repaired(newest: Self.at(5), messages: [Self.message(4), Self.message(5)])
        #expect(Self.sequences(repaired) == [4, 5])
        #expect(repaired.skipped == 2)
    }

    @Test func messagesPublishedAfterTheReadTriggerAnotherRead() {
        var s = DestinationSequencer()
        _ = s.established(at: Self.at(1))
        _ = s.receive(Self.message(3))  // 2 lost
        _ = s.receive(Self.message(6))  // 4, 5 lost too, published after the read below
        let repaired = s.repaired(newest: Self.at(3), messages: [Self.message(2), Self.message(3)])
        #expect(Self.sequences(repaired) == [2, 3])
        #expect(repaired.repairAfter == Self.at(3))
        let again = s.repaired(newest: Self.at(6), messages: [Self.message(4), Self.message(5), Self.message(6)])
        #expect(Self.sequences(again) == [4, 5, 6])
        #expect(again.repairAfter == nil && again.skipped == 0)
    }

    /// A buffered message beyond what history holds after a read (a position history never
    /// had, forged on the channel): it was read again at once, after every read, a loop of
    /// reads for as long as it stayed buffered. Read again at once the first time, then after a
    /// back-off; new arrivals and a hole filled go on as before.
    @Test func aBufferedPositionHistoryDoesNotHoldIsReadAgainAfterABackOff() throws {
        var s = DestinationSequencer()
        _ = s.established(at: Self.at(5))
        #expect(s.receive(Self.message(10)).repairAfter == Self.at(5))
        let first = s.repaired(newest: Self.at(5), messages: [])
        #expect(first.repairAfter == Self.at(5) && first.retryAfter == nil)
        let second = s.repaired(newest: Self.at(5), messages: [])
        #expect(second.repairAfter == nil)
        let timer = try #require(second.retryAfter)
        #expect(timer.delay == .milliseconds(200))
        #expect(s.retryRepair(timer: timer.number).repairAfter == Self.at(5))
        let third = s.repaired(newest: Self.at(5), messages: [])
        #expect(third.retryAfter?.delay == .milliseconds(400) && third.repairAfter == nil)
        // Real messages still go out in order meanwhile.
        #expect(Self.sequences(s.receive(Self.message(6))) == [6])
        // History catching up delivers the buffered one.
        _ = s.retryRepair(timer: third.retryAfter!.number)
        let caught = s.repaired(newest: Self.at(10), messages: [Self.message(7), Self.message(8), Self.message(9), Self.message(10)])
        #expect(Self.sequences(caught) == [7, 8, 9, 10])
        #expect(caught.repairAfter == nil && caught.retryAfter == nil && caught.skipped == 0)
    }

    @Test func newEpochGivesUpTheOldHoleAndStartsOver() {
        var s = DestinationSequencer()
        _ = s.established(at: Self.at(1))
        _ = s.receive(Self.message(3))  // waiting for 2
        let actions = s.receive(Self.message(1, epoch: "e2"))
        #expect(actions.deliver.map(\.position) == [Self.at(3), Self.at(1, epoch: "e2")])
        #expect(actions.skipped == 1)
        #expect(s.position == Self.at(1, epoch: "e2"))
        // A repair of the old epoch that comes back late changes nothing.
        let late = s.repaired(newest: Self.at(1, epoch: "e2"), messages: [Self.message(2)])
        #expect(late.deliver.isEmpty && late.skipped == 0)
    }

    @Test func newEpochSeenByARepairStartsFromItsFirstKeptMessage() {
        var s = DestinationSequencer()
        _ = s.established(at: Self.at(7))
        _ = s.reconnected()
        let repaired = s.repaired(newest: Self.at(2, epoch: "e2"), messages: [Self.message(1, epoch: "e2"), Self.message(2, epoch: "e2")])
        #expect(Self.sequences(repaired) == [1, 2])
        #expect(s.position == Self.at(2, epoch: "e2"))
    }

    /// Redis restarted empty while this instance's subscriber connection was down; publishes
    /// since are e2:1…60. The read asked after e1:48, and history is read by sequence number
    /// whatever the epoch, so it brought e2:49…60 only. Before, e2:1…48 were counted as skipped
    /// although history kept them (a connected subscriber lost 48 acknowledged messages).
    @Test(arguments: [false, true])
    func aReadIntoANewEpochFromTheOldPositionReadsTheNewEpochFromItsStart(liveFirst: Bool) {
        var s = DestinationSequencer()
        _ = s.established(at: Self.at(48))
        #expect(s.reconnected().repairAfter == Self.at(48))
        if liveFirst {
            // The new epoch's next message arrives live before the read's reply.
            let live = s.receive(Self.message(61, epoch: "e2"))
            #expect(live.deliver.isEmpty && live.repairAfter == nil && live.skipped == 0)
        }
        let first = s.repaired(newest: Self.at(60, epoch: "e2"), messages: (49...60).map { Self.message($0, epoch: "e2") })
        #expect(first.deliver.isEmpty && first.skipped == 0)
        #expect(first.repairAfter == Self.at(0, epoch: "e2"))
        let second = s.repaired(newest: Self.at(61, epoch: "e2"), messages: (1...61).map { Self.message($0, epoch: "e2") })
        #expect(Self.sequences(second) == Array(1...61))
        #expect(second.skipped == 0 && second.repairAfter == nil)
        #expect(s.position == Self.at(61, epoch: "e2"))
    }

    /// A read of the old epoch whose reply comes after this instance moved to a new one
    /// (FLUSHALL while it was on its way) is dropped: before, it sent the position back to the
    /// old epoch, delivered old messages after new ones, then the new ones again.
    @Test func aStaleReplyFromTheEpochLeftIsDropped() {
        var s = DestinationSequencer()
        _ = s.established(at: Self.at(5))
        _ = s.reconnected()
        #expect(Self.sequences(s.receive(Self.message(1, epoch: "e2"))) == [1])
        let stale = s.repaired(newest: Self.at(3005), messages: (6...3005).map { Self.message($0) })
        #expect(stale.deliver.isEmpty && stale.skipped == 0 && stale.repairAfter == nil)
        #expect(s.position == Self.at(1, epoch: "e2"))
        #expect(Self.sequences(s.receive(Self.message(2, epoch: "e2"))) == [2])
        // With a hole of the new epoch waiting, the dropped reply is followed by a read of it.
        var t = DestinationSequencer()
        _ = t.established(at: Self.at(5))
        _ = t.reconnected()
        _ = t.receive(Self.message(1, epoch: "e2"))
        _ = t.receive(Self.message(3, epoch: "e2"))
        #expect(t.repaired(newest: Self.at(9), messages: []).repairAfter == Self.at(1, epoch: "e2"))
    }

    /// A reconnect before the destination's position is known (its establishing read in
    /// flight, maybe taken before the subscription was back) is read for once the position is
    /// known; one while a read runs, after it; and a read that finds nothing missing delivers
    /// nothing.
    @Test func reconnectReadsOnceAndNothingMissingDeliversNothing() {
        var s = DestinationSequencer()
        #expect(s.reconnected().repairAfter == nil)  // not established yet
        #expect(s.established(at: Self.at(3)).repairAfter == Self.at(3))
        #expect(s.reconnected().repairAfter == nil)  // one read at a time
        let repaired = s.repaired(newest: Self.at(3), messages: [])
        #expect(repaired.deliver.isEmpty && repaired.skipped == 0 && repaired.repairAfter == Self.at(3))
        let again = s.repaired(newest: Self.at(3), messages: [])
        #expect(again.deliver.isEmpty && again.skipped == 0 && again.repairAfter == nil)
        #expect(s.reconnected().repairAfter == Self.at(3))
    }

    @Test func expiredMessagesAreSkippedUpToTheNewest() {
        var s = DestinationSequencer()
        _ = s.established(at: Self.at(3))
        _ = s.reconnected()
        // 4..6 were published but expired before the read.
        let repaired = s.repaired(newest: Self.at(6), messages: [])
        #expect(repaired.skipped == 3)
        #expect(s.position == Self.at(6))
        #expect(Self.sequences(s.receive(Self.message(7))) == [7])
    }

    @Test func failedRepairIsRetriedAndTooManyBufferedGivesUp() {
        var s = DestinationSequencer(maxPending: 3)
        _ = s.established(at: Self.at(1))
        #expect(s.receive(Self.message(3)).repairAfter == Self.at(1))
        #expect(s.repairFailed(transient: true).deliver.isEmpty)
        #expect(s.retryRepair().repairAfter == Self.at(1))
        _ = s.repairFailed(transient: true)
        _ = s.receive(Self.message(4))
        // The limit: everything buffered goes out in order, the hole counted.
        let flushed = s.receive(Self.message(5))
        #expect(Self.sequences(flushed) == [3, 4, 5])
        #expect(flushed.skipped == 1)
        #expect(s.retryRepair().repairAfter == nil)
    }

    /// Reads that keep failing are asked again less and less often (every 200 ms for good
    /// before, per destination), and a read that succeeds starts the count over.
    @Test func failedRepairsBackOffUntilOneSucceeds() {
        var s = DestinationSequencer()
        _ = s.established(at: Self.at(7))
        #expect(s.reconnected().repairAfter == Self.at(7))
        for failures in 1...3 {
            if failures > 1 { #expect(s.retryRepair().repairAfter == Self.at(7)) }
            _ = s.repairFailed(transient: true)
            #expect(s.repairFailures == failures)
        }
        #expect(s.retryRepair().repairAfter == Self.at(7))
        _ = s.repaired(newest: Self.at(7), messages: [])
        #expect(s.repairFailures == 0)
        let delays = (1...8).map { DestinationSequencer.retryDelay(afterFailures: $0).nanoseconds / 1_000_000 }
        #expect(delays == [200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000])
    }

    /// One retry timer at a time: a read started meanwhile (a reconnect, a gap) that fails too
    /// starts no second one (each failure started its own, and reads refused at once kept
    /// several chains of retries going for good). A reconnect starts the backoff over.
    @Test func aFailureWhileARetryWaitsStartsNoOtherTimer() throws {
        var s = DestinationSequencer()
        _ = s.established(at: Self.at(7))
        #expect(s.reconnected().repairAfter == Self.at(7))
        let first = try #require(s.repairFailed(transient: true).retryAfter)
        #expect(first.delay == .milliseconds(200))
        #expect(s.receive(Self.message(9)).repairAfter == Self.at(7))  // a gap, while the timer runs
        #expect(s.repairFailed(transient: true).retryAfter == nil, "a second timer")
        #expect(s.retryRepair(timer: first.number).repairAfter == Self.at(7))  // the timer fires
        let second = try #require(s.repairFailed(transient: true).retryAfter)
        #expect(second.delay == .milliseconds(800))
        // Redis is back while that timer runs: the backoff starts over, and the running timer
        // (800 ms away) fires for nothing.
        #expect(s.reconnected().repairAfter == Self.at(7))
        let third = try #require(s.repairFailed(transient: true).retryAfter, "a timer after the reconnect")
        #expect(third.delay == .milliseconds(200))
        #expect(s.retryRepair(timer: second.number).repairAfter == nil, "the replaced timer")
        #expect(s.retryRepair(timer: third.number).repairAfter == Self.at(7))
    }

    /// Reads refused for a reason that does not pass (an ACL, a reply that cannot be decoded)
    /// give the hole up after three in a row: the buffered messages go out, the jump counted
    /// (they waited until 10,000 were buffered, and the subscribers got nothing meanwhile).
    @Test func aHoleIsGivenUpAfterThreeRefusalsInARow() {
        var s = DestinationSequencer()
        _ = s.established(at: Self.at(1))
        #expect(s.receive(Self.message(3)).repairAfter == Self.at(1))
        #expect(s.repairFailed(transient: false).deliver.isEmpty)
        #expect(s.retryRepair().repairAfter == Self.at(1))
        _ = s.repairFailed(transient: true)  // a transient failure between starts the count over
        #expect(s.retryRepair().repairAfter == Self.at(1))
        #expect(s.repairFailed(transient: false).deliver.isEmpty)
        #expect(s.retryRepair().repairAfter == Self.at(1))
        #expect(s.repairFailed(transient: false).deliver.isEmpty)
        #expect(s.receive(Self.message(4)).repairAfter == Self.at(1))  // waits, and asks again
        let given = s.repairFailed(transient: false)
        #expect(Self.sequences(given) == [3, 4])
        #expect(given.skipped == 1)
        #expect(s.retryRepair().repairAfter == nil, "nothing owed any more")
        #expect(Self.sequences(s.receive(Self.message(5))) == [5])
        // Two refusals for a hole that a late copy then closes do not count against the next.
        #expect(s.receive(Self.message(7)).repairAfter == Self.at(5))
        _ = s.repairFailed(transient: false)
        _ = s.retryRepair()
        _ = s.repairFailed(transient: false)
        #expect(Self.sequences(s.receive(Self.message(6))) == [6, 7])
        #expect(s.receive(Self.message(9)).repairAfter == Self.at(7))
        #expect(s.repairFailed(transient: false).deliver.isEmpty, "given up at the new hole's first refusal")
    }

    @Test func messagesWithoutPositionPassStraightThrough() {
        var s = DestinationSequencer()
        let plain = PublishedMessage(destination: "/topic/x", messageID: "p", headers: [:], body: ByteBuffer(string: "raw"))
        #expect(s.receive(plain).deliver.count == 1)
    }

    /// A replay is complete when it holds every position after the start through the end.
    @Test func aReplayFollowsOnOnlyWithoutAHole() {
        let run = (5...8).map { Self.message($0) }
        #expect(RedisEngine.followOn(run, after: 4, through: 8))
        #expect(!RedisEngine.followOn(run, after: 3, through: 8))  // 4 missing
        #expect(!RedisEngine.followOn(run, after: 4, through: 9))  // 9 missing
        #expect(!RedisEngine.followOn([5, 6, 8].map { Self.message($0) }, after: 4, through: 8))
        #expect(RedisEngine.followOn([PublishedMessage](), after: 8, through: 8))
        #expect(!RedisEngine.followOn([PublishedMessage](), after: 7, through: 8))
        #expect(!RedisEngine.followOn(run, after: 9, through: 8))
    }

    /// The subscriber connection comes back while a repair runs: that read may have been taken
    /// before the subscriptions were back, so another follows it, although nothing is buffered
    /// (before, the reconnect was dropped, and what was published while the connection was down
    /// the second time was not delivered until the next publish).
    @Test func aReconnectDuringARepairAsksForAnotherReadAfterIt() {
        var s = DestinationSequencer()
        _ = s.established(at: Self.at(100))
        #expect(s.reconnected().repairAfter == Self.at(100))
        #expect(s.reconnected().repairAfter == nil)  // one read at a time
        let first = s.repaired(newest: Self.at(102), messages: [Self.message(101), Self.message(102)])
        #expect(Self.sequences(first) == [101, 102])
        #expect(first.repairAfter == Self.at(102))
        let second = s.repaired(newest: Self.at(104), messages: [Self.message(103), Self.message(104)])
        #expect(Self.sequences(second) == [103, 104])
        #expect(second.repairAfter == nil)
        #expect(!s.repairing)
    }

    /// A repair asked for by a reconnect fails, with nothing buffered: it is asked for again
    /// (before, the retry asked only when messages were buffered, and the reconnect's read was
    /// given up).
    @Test func aFailedReconnectRepairIsRetriedWithNothingBuffered() {
        var s = DestinationSequencer()
        _ = s.established(at: Self.at(7))
        #expect(s.reconnected().repairAfter == Self.at(7))
        #expect(s.repairFailed(transient: true).repairAfter == nil)
        #expect(s.retryRepair().repairAfter == Self.at(7))
        #expect(s.retryRepair().repairAfter == nil)  // running
        let done = s.repaired(newest: Self.at(8), messages: [Self.message(8)])
        #expect(Self.sequences(done) == [8] && done.repairAfter == nil)
        #expect(s.retryRepair().repairAfter == nil)  // nothing owed any more
        // A failure that does not pass is not retried with nothing buffered.
        #expect(s.reconnected().repairAfter == Self.at(8))
        #expect(s.repairFailed(transient: false).repairAfter == nil)
        #expect(s.retryRepair().repairAfter == nil)
    }

    /// A copy of an epoch the instance left (Redis restarted empty; the copy was still unread
    /// on the subscriber connection when a repair read the new epoch) was taken for a new
    /// epoch: the instance went back to it, then forward again, and every subscriber got the
    /// new epoch's messages twice, the old one's in between.
    @Test func aLateCopyOfALeftEpochIsDroppedNotANewEpoch() {
        var s = DestinationSequencer()
        _ = s.established(at: Self.at(0, epoch: "e1"))
        #expect(Self.sequences(s.receive(Self.message(1, epoch: "e1"))) == [1])
        #expect(s.reconnected().repairAfter == Self.at(1, epoch: "e1"))
        let repaired = s.repaired(newest: Self.at(2, epoch: "e2"), messages: [Self.message(1, epoch: "e2"), Self.message(2, epoch: "e2")])
        #expect(repaired.deliver.map(\.position) == [Self.at(1, epoch: "e2"), Self.at(2, epoch: "e2")])
        // (It had read from sequence 1 on: once more from the start of the new epoch's rest.)
        #expect(repaired.repairAfter == Self.at(2, epoch: "e2"))
        #expect(s.repaired(newest: Self.at(2, epoch: "e2"), messages: []) == DestinationSequencer.Actions())
        // A copy of one delivered: dropped.
        #expect(s.receive(Self.message(1, epoch: "e1")) == DestinationSequencer.Actions())
        // A later one: skipped, and history asked which epoch is current (still e2).
        let late = s.receive(Self.message(2, epoch: "e1"))
        #expect(late.deliver.isEmpty && late.repairAfter == Self.at(2, epoch: "e2") && late.skipped == 1, "\(late)")
        #expect(s.repaired(newest: Self.at(2, epoch: "e2"), messages: []) == DestinationSequencer.Actions())
        #expect(s.position == Self.at(2, epoch: "e2"))
        #expect(Self.sequences(s.receive(Self.message(3, epoch: "e2"))) == [3])
        // e1 comes back (a failover to a replica that kept it): it goes on from where it was left.
        let back = s.receive(Self.message(4, epoch: "e1"))
        #expect(back.deliver.isEmpty && back.repairAfter == Self.at(3, epoch: "e2"))
        let resumed = s.repaired(newest: Self.at(4, epoch: "e1"), messages: (2...4).map { Self.message($0, epoch: "e1") })
        #expect(resumed.deliver.map(\.position) == (2...4).map { Self.at($0, epoch: "e1") })
        #expect(s.position == Self.at(4, epoch: "e1"))
        // A newer epoch still switches.
        let newer = s.receive(Self.message(1, epoch: "e3"))
        #expect(newer.deliver.map(\.position) == [Self.at(1, epoch: "e3")])
    }
}
