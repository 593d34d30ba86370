import Logging
import NIOCore
import NIOEmbedded
import STOMPCodec
import SwitchboardCore
import SwitchboardWire
import Testing

/// An engine whose history registrations answer later, when the test says (as the Redis
/// engine's do): the seam between a replay and the live messages that arrive meanwhile.
final class PendingReplayEngine: BrokerEngine, @unchecked Sendable {
    let hub: FanoutHub
    let through: StreamPosition?
    var replay: EventLoopPromise<HistoryReplay>?
    var name: String { "pending" }
    var publishesSynchronously: Bool { true }

    init(hub: FanoutHub, through: StreamPosition?) {
        self.hub = hub
        self.through = through
    }

    func publish(_ message: PublishedMessage, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        hub.deliver(message)
        return eventLoop.makeSucceededVoidFuture()
    }

    func publish(_ message: PublishedMessage, idempotencyKey: String, on eventLoop: any EventLoop) -> EventLoopFuture<Bool> {
        publish(message, on: eventLoop).map { true }
    }

    func registerWithHistory(_ destination: String, from start: HistoryStart?, on eventLoop: any EventLoop, register: () -> Void) -> HistoryRegistration? {
        register()
        let promise = eventLoop.makePromise(of: HistoryReplay.self)
        replay = promise
        return .pending(through: through, promise.futureResult)
    }
}

/// Where the test keeps the engine the gateway made (one embedded loop: no locking).
final class EngineBox: @unchecked Sendable { var value: PendingReplayEngine? }

@Suite struct ResumeSeamTests {
    static func message(_ epoch: String, _ n: UInt64) -> PublishedMessage {
        PublishedMessage(
            destination: "/topic/h", messageID: "\(epoch)-\(n)", headers: [:], body: ByteBuffer(string: "\(epoch):\(n)"),
            position: StreamPosition(epoch: epoch, sequence: n))
    }

    /// A gateway on the pending engine (registered at e1:5) and a client that resumed from
    /// `from`: its replay waits for `engine.replay`.
    static func resuming(
        from: String, maxPendingOutboundBytes: Int? = nil, through: StreamPosition? = StreamPosition(epoch: "e1", sequence: 5)
    ) throws -> (TestGateway, PendingReplayEngine, TestClient) {
        let box = EngineBox()
        var configuration = SessionConfiguration()
        if let maxPendingOutboundBytes { configuration.maxPendingOutboundBytes = maxPendingOutboundBytes }
        let gateway = TestGateway(configuration: configuration) { hub in
            let engine = PendingReplayEngine(hub: hub, through: through)
            box.value = engine
            return engine
        }
        let client = try gateway.client()
        _ = try client.connect()
        try client.send(.subscribe, ["destination": "/topic/h", "id": "1", "receipt": "r", "x-resume-from": from])
        return (gateway, box.value!, client)
    }

    /// The embedded broker evicted a destination's ring (more destinations than
    /// `history.max-destinations`) while a copy of its old epoch was still queued for a loop,
    /// and a client subscribed there before the loop delivered it: the copy passed the seam
    /// (another epoch) and ended it, so the client got a message published before it
    /// subscribed, and the replayed one again after it.
    @Test(arguments: [false, true])
    func copiesOfAnEvictedEpochQueuedBeforeTheSubscribeDoNotGoOut(republished: Bool) throws {
        var settings = DestinationHistory.Settings()
        settings.maxDestinations = 1
        let history = DestinationHistory(settings: settings, processEpoch: "p")
        let gateway = TestGateway { hub in InMemoryEngine(hub: hub, history: history) }
        defer { gateway.shutdown() }
        let client = try gateway.client()
        _ = try client.connect()
        func plain(_ destination: String, _ body: String) -> PublishedMessage {
            PublishedMessage(destination: destination, messageID: body, headers: [:], body: ByteBuffer(string: body))
        }
        // What sits in the loop's inbox when the SUBSCRIBE is read.
        var queued: [PublishedMessage] = []
        history.record(plain("/topic/h", "old")) { queued.append($0) }
        history.record(plain("/topic/y", "y")) { _ in }  // evicts /topic/h's ring
        if republished { history.record(plain("/topic/h", "new")) { queued.append($0) } }
        try client.send(.subscribe, ["destination": "/topic/h", "id": "1", "receipt": "r", "x-last": "10"])
        for message in queued { gateway.hub.deliver(message) }
        let frames = try client.frames()
        #expect(frames.filter { $0.command == .message }.map(\.bodyString) == (republished ? ["new"] : []))
        history.record(plain("/topic/h", "next")) { gateway.hub.deliver($0) }
        #expect(try client.frames().map(\.bodyString) == ["next"], "a newer copy still goes out")
    }

    /// History moved to a new epoch while the replay was read (Redis Cluster: the slot came
    /// back empty): live copies of the new epoch went out before the replay, which holds the
    /// same messages. Before, the client got e2:1…3 twice.
    @Test func liveCopiesOfANewEpochDuringTheReplayAreNotRepeated() throws {
        let (gateway, engine, client) = try Self.resuming(from: "e1:5")
        defer { gateway.shutdown() }
        for n: UInt64 in 1...3 { gateway.hub.deliver(Self.message("e2", n)) }
        gateway.loop.run()
        engine.replay!.succeed(
            HistoryReplay(messages: (UInt64(1)...4).map { Self.message("e2", $0) }, recovered: false, position: StreamPosition(epoch: "e2", sequence: 4)))
        gateway.loop.run()
        for n: UInt64 in 4...5 { gateway.hub.deliver(Self.message("e2", n)) }
        let frames = try client.frames()
        #expect(frames.first?.command == .receipt)
        #expect(frames.filter { $0.command == .message }.map(\.bodyString) == (1...5).map { "e2:\($0)" })
    }

    /// The replay came from a newer epoch than this instance's (Redis started the history
    /// over and this instance has not seen it yet): a late live copy of the old epoch cleared
    /// the seam and went out after the replay, and the instance's repair into the new epoch
    /// then delivered the replayed messages again.
    @Test func aLateCopyOfAnOlderEpochAfterTheReplayNeitherGoesOutNorEndsTheSeam() throws {
        let (gateway, engine, client) = try Self.resuming(from: "e1:5")
        defer { gateway.shutdown() }
        engine.replay!.succeed(
            HistoryReplay(messages: (UInt64(1)...3).map { Self.message("e2", $0) }, recovered: false, position: StreamPosition(epoch: "e2", sequence: 3)))
        gateway.loop.run()
        gateway.hub.deliver(Self.message("e1", 6))
        for n: UInt64 in 1...4 { gateway.hub.deliver(Self.message("e2", n)) }
        let frames = try client.frames()
        #expect(frames.filter { $0.command == .message }.map(\.bodyString) == (1...4).map { "e2:\($0)" })
    }

    /// A client of a newer epoch (it read e2 on another instance) resumed here while this
    /// instance still delivered e1: a live e1 copy that arrived during the read went out after
    /// the e2 replay (a duplicate, out of order, and the client's next resume from it started
    /// e2 over). Kept until the replay came back, it is dropped as of the epoch left.
    @Test func aLiveCopyOfTheInstancesOldEpochDuringAReplayOfANewerOneIsDropped() throws {
        let (gateway, engine, client) = try Self.resuming(from: "e2:2")
        defer { gateway.shutdown() }
        gateway.hub.deliver(Self.message("e1", 6))
        gateway.loop.run()
        engine.replay!.succeed(HistoryReplay(messages: [Self.message("e2", 3)], recovered: true, position: StreamPosition(epoch: "e2", sequence: 3)))
        gateway.loop.run()
        for n: UInt64 in 1...4 { gateway.hub.deliver(Self.message("e2", n)) }
        let frames = try client.frames()
        #expect(frames.first?.command == .receipt)
        #expect(frames.first?.headers["x-recovered"] == "true")
        #expect(frames.filter { $0.command == .message }.map(\.bodyString) == ["e2:3", "e2:4"])
    }

    /// The live copies kept while the replay is read are bounded, by count and with what the
    /// session holds by `limits.max-pending-bytes`: past either the session ends as a slow
    /// consumer at once (the client resumes from what it got), not when the replay comes back.
    @Test(arguments: [false, true])
    func liveCopiesKeptDuringAReplayAreBounded(byBytes: Bool) throws {
        let (gateway, _, client) = try Self.resuming(from: "e2:2", maxPendingOutboundBytes: byBytes ? 4_096 : nil)
        defer { gateway.shutdown() }
        let count = byBytes ? 16 : LocalSubscription.maxDeferredDuringReplay
        for n in 0...UInt64(count) { gateway.hub.deliver(Self.message("e1", 6 + n)) }
        gateway.loop.run()
        let frames = try client.read().compactMap(\.frame)
        #expect(frames.map(\.command) == [.error])
        #expect(frames.last?.headers["message"]?.hasPrefix("slow consumer") == true)
    }

    /// One kept copy was dropped for the limit and a smaller one after it kept: the kept one
    /// went out after the replay, and the client resumed past the hole.
    @Test func noKeptCopyFollowsTheReplayOnceOneWasDroppedForTheLimit() throws {
        let (gateway, engine, client) = try Self.resuming(from: "e0:9", maxPendingOutboundBytes: 4_096)
        defer { gateway.shutdown() }
        gateway.hub.deliver(
            PublishedMessage(
                destination: "/topic/h", messageID: "big", headers: [:], body: ByteBuffer(repeating: 0x78, count: 5_000),
                position: StreamPosition(epoch: "e1", sequence: 6)))
        gateway.hub.deliver(Self.message("e1", 7))
        engine.replay!.succeed(
            HistoryReplay(messages: (UInt64(1)...5).map { Self.message("e1", $0) }, recovered: false, position: StreamPosition(epoch: "e1", sequence: 5)))
        gateway.loop.run()
        let frames = try client.read().compactMap(\.frame)
        #expect(!frames.contains { $0.bodyString == "e1:7" }, "\(frames.map(\.bodyString))")
        #expect(frames.last?.command == .error)
    }

    /// History started over after the replay was read: the kept copies of the newer epoch
    /// follow the replay (they were dropped as of another epoch than the replay's).
    @Test func keptCopiesOfAnEpochNewerThanTheReplayFollowIt() throws {
        let (gateway, engine, client) = try Self.resuming(from: "e0:9")
        defer { gateway.shutdown() }
        gateway.hub.deliver(Self.message("e2", 1))
        gateway.loop.run()
        engine.replay!.succeed(
            HistoryReplay(messages: (UInt64(1)...5).map { Self.message("e1", $0) }, recovered: false, position: StreamPosition(epoch: "e1", sequence: 5)))
        gateway.loop.run()
        let frames = try client.frames()
        #expect(frames.filter { $0.command == .message }.map(\.bodyString) == (1...5).map { "e1:\($0)" } + ["e2:1"])
    }

    /// Registered before this instance knew the destination's position (its first subscriber)
    /// while history started over: nothing said which epoch was left, and the kept copies of
    /// the old one went out after the new epoch's replay.
    @Test func keptCopiesOfAnEpochTheReplayLeftAreDroppedWithoutARegistrationPosition() throws {
        let (gateway, engine, client) = try Self.resuming(from: "e2:2", through: nil)
        defer { gateway.shutdown() }
        gateway.hub.deliver(Self.message("e1", 6))
        gateway.loop.run()
        engine.replay!.succeed(HistoryReplay(messages: [Self.message("e2", 3)], recovered: true, position: StreamPosition(epoch: "e2", sequence: 3)))
        gateway.loop.run()
        for n: UInt64 in 3...4 { gateway.hub.deliver(Self.message("e2", n)) }
        let frames = try client.frames()
        #expect(frames.filter { $0.command == .message }.map(\.bodyString) == ["e2:3", "e2:4"])
    }

    /// The other way round: the client's epoch was the older one (history is in this
    /// instance's epoch): the live copies kept meanwhile follow the replay, once each.
    @Test func liveCopiesKeptWhileAReplayOfThisInstancesEpochIsReadFollowIt() throws {
        let (gateway, engine, client) = try Self.resuming(from: "e0:9")
        defer { gateway.shutdown() }
        for n: UInt64 in 6...7 { gateway.hub.deliver(Self.message("e1", n)) }
        gateway.loop.run()
        engine.replay!.succeed(
            HistoryReplay(messages: (UInt64(1)...6).map { Self.message("e1", $0) }, recovered: false, position: StreamPosition(epoch: "e1", sequence: 6)))
        gateway.loop.run()
        gateway.hub.deliver(Self.message("e1", 8))
        let frames = try client.frames()
        #expect(frames.first?.headers["x-recovered"] == "false")
        #expect(frames.filter { $0.command == .message }.map(\.bodyString) == (1...8).map { "e1:\($0)" })
    }

    /// Live messages held while the replay was read went past the session's limit in the very
    /// turn the replay came back: the session failed as a slow consumer, yet the SUBSCRIBE's
    /// RECEIPT still went out saying `x-recovered: true`, before the ERROR and without the
    /// replay (a client taking the receipt's `x-position` as its resume point lost it).
    @Test func aSessionFailingAsTheReplayArrivesSendsNoRecoveredReceipt() throws {
        let (gateway, engine, client) = try Self.resuming(from: "e1:5", maxPendingOutboundBytes: 1024)
        defer { gateway.shutdown() }
        // Not flushed before the replay is answered (no loop turn between).
        gateway.hub.deliver(
            PublishedMessage(
                destination: "/topic/h", messageID: "e1-6", headers: [:], body: ByteBuffer(repeating: UInt8(ascii: "x"), count: 2048),
                position: StreamPosition(epoch: "e1", sequence: 6)))
        engine.replay!.succeed(HistoryReplay(messages: [], recovered: true, position: StreamPosition(epoch: "e1", sequence: 5)))
        let frames = try client.read().compactMap(\.frame)  // then the close
        #expect(frames.map(\.command) == [.error], "\(frames.map { ($0.command, $0.headers) })")
        #expect(frames.first?.headers["message"]?.hasPrefix("slow consumer") == true)
    }

    /// The same epoch: live copies after the registration position follow the replay, once each.
    @Test func liveCopiesAfterTheRegistrationFollowTheReplayOnce() throws {
        let (gateway, engine, client) = try Self.resuming(from: "e1:2")
        defer { gateway.shutdown() }
        for n: UInt64 in 4...7 { gateway.hub.deliver(Self.message("e1", n)) }
        gateway.loop.run()
        engine.replay!.succeed(
            HistoryReplay(messages: (UInt64(3)...5).map { Self.message("e1", $0) }, recovered: true, position: StreamPosition(epoch: "e1", sequence: 5)))
        gateway.loop.run()
        gateway.hub.deliver(Self.message("e1", 8))
        let frames = try client.frames()
        #expect(frames.filter { $0.command == .message }.map(\.bodyString) == (3...8).map { "e1:\($0)" })
    }

    /// Delivers `live` while the replay is read, then answers it with `replay`, then delivers
    /// `after`; returns the RECEIPT's x-recovered and the bodies of the MESSAGEs.
    static func resume(
        from: String, live: ClosedRange<UInt64>?, epoch: String = "e1", replay: HistoryReplay, after: ClosedRange<UInt64>
    ) throws -> (recovered: String?, bodies: [String], position: String?) {
        let (gateway, engine, client) = try Self.resuming(from: from)
        defer { gateway.shutdown() }
        for n in live.map(Array.init) ?? [] { gateway.hub.deliver(Self.message(epoch, n)) }
        gateway.loop.run()
        engine.replay!.succeed(replay)
        gateway.loop.run()
        for n in after { gateway.hub.deliver(Self.message(epoch, n)) }
        let frames = try client.frames()
        #expect(frames.first?.command == .receipt)
        return (
            frames.first?.headers["x-recovered"], frames.filter { $0.command == .message }.map(\.bodyString), frames.first?.headers["x-position"]
        )
    }

    /// The client comes from a faster instance: it saw e1:25 where this one had delivered e1:5.
    /// The live copies up to its position, arriving while the replay is read, are its own
    /// already (before, e1:6…25 went out again after the RECEIPT: a probe with three clients).
    @Test func aClientAheadOfThisInstanceGetsNothingItHasAgain() throws {
        let ahead = HistoryReplay(messages: [], recovered: true, position: StreamPosition(epoch: "e1", sequence: 25))
        let both = try Self.resume(from: "e1:25", live: 6...27, replay: ahead, after: 28...28)
        #expect(both.recovered == "true")
        #expect(both.bodies == (26...28).map { "e1:\($0)" })
        let upTo = try Self.resume(from: "e1:25", live: 6...25, replay: ahead, after: 26...27)
        #expect(upTo.bodies == ["e1:26", "e1:27"])
        let none = try Self.resume(from: "e1:25", live: nil, replay: ahead, after: 20...27)
        #expect(none.bodies == ["e1:26", "e1:27"])
    }

    /// The client read a newer epoch elsewhere (Redis restarted empty) than this instance had
    /// registered at: the copies of that epoch up to its position, reaching this instance while
    /// the replay is read, are its own (before, e2:1…3 went out again).
    @Test func aClientAheadInANewerEpochGetsNothingItHasAgain() throws {
        let newer = HistoryReplay(
            messages: (UInt64(4)...5).map { Self.message("e2", $0) }, recovered: true, position: StreamPosition(epoch: "e2", sequence: 5))
        let both = try Self.resume(from: "e2:3", live: 1...5, epoch: "e2", replay: newer, after: 6...6)
        #expect(both.recovered == "true")
        #expect(both.bodies == ["e2:4", "e2:5", "e2:6"])
        let quiet = try Self.resume(from: "e2:3", live: nil, epoch: "e2", replay: newer, after: 1...6)
        #expect(quiet.bodies == ["e2:4", "e2:5", "e2:6"])
    }

    /// A client position ahead of history itself (x-recovered:false): the subscription is not
    /// parked there until the destination gets that far; it goes on from where it stands.
    @Test func aClientPositionAheadOfHistoryIsNotWaitedFor() throws {
        let behind = HistoryReplay(messages: [], recovered: false, position: StreamPosition(epoch: "e1", sequence: 5))
        let skipped = try Self.resume(from: "e1:1000", live: 6...8, replay: behind, after: 9...10)
        #expect(skipped.recovered == "false")
        #expect(skipped.bodies == ["e1:9", "e1:10"])
        // Where it goes on from: after the copies skipped meanwhile (before, history's e1:5,
        // and the client saw a hole at e1:6…8).
        #expect(skipped.position == "e1:8")
        let quiet = try Self.resume(from: "e1:1000", live: nil, replay: behind, after: 6...7)
        #expect(quiet.recovered == "false")
        #expect(quiet.bodies == ["e1:6", "e1:7"])
        #expect(quiet.position == "e1:5")
    }

    struct ReadFailed: Error, CustomStringConvertible {
        var description: String { "redis unreachable for 5000 ms" }
    }

    /// The replay's read failed (Redis too slow): the live messages that arrived meanwhile were
    /// written before the SUBSCRIBE's ERROR, and the client, resuming from the last position it
    /// got, skipped the history in between (found with 40 KB messages and a 300 ms command
    /// timeout). Nothing of that subscription comes before the ERROR now.
    @Test func aFailedReplayWritesNoLiveMessageBeforeItsError() throws {
        let (gateway, engine, client) = try Self.resuming(from: "e1:2")
        defer { gateway.shutdown() }
        for n: UInt64 in 6...9 { gateway.hub.deliver(Self.message("e1", n)) }
        gateway.loop.run()
        engine.replay!.fail(ReadFailed())
        gateway.loop.run()
        let out = try client.read()
        let frames = out.compactMap(\.frame)
        #expect(out.count == frames.count + 1, "the close follows the ERROR")
        #expect(frames.map(\.command) == [.error], "\(frames.map(\.command))")
        #expect(frames.first?.headers["receipt-id"] == "r")
    }

    /// Held behind a resuming SUBSCRIBE past the pending-bytes limit: written early, the live
    /// messages came before the replay; the session ends as a slow consumer instead.
    @Test func liveMessagesPastTheLimitBehindAReplayEndTheSession() throws {
        let (gateway, _, client) = try Self.resuming(from: "e1:2", maxPendingOutboundBytes: 4096)
        defer { gateway.shutdown() }
        let big = String(repeating: "x", count: 1_000)
        for n: UInt64 in 6...15 {
            gateway.hub.deliver(
                PublishedMessage(
                    destination: "/topic/h", messageID: "e1-\(n)", headers: [:], body: ByteBuffer(string: big),
                    position: StreamPosition(epoch: "e1", sequence: n)))
            gateway.loop.run()
        }
        let out = try client.read()
        let frames = out.compactMap(\.frame)
        #expect(out.count == frames.count + 1, "the close follows the ERROR")
        #expect(frames.map(\.command) == [.error], "\(frames.map(\.command))")
        #expect(frames.first?.headers["message"]?.hasPrefix("slow consumer") == true, "\(frames)")
    }
}
