import Dispatch
import Logging
import NIOCore
import Redis
import RedisServerTesting
import SwitchboardCore
import SwitchboardWire
import Testing

@testable import SwitchboardRedis

/// The reader of an inbound stream moves past an entry only once its recording in history
/// succeeded: an entry Redis refused to record for a while is read and recorded again, not lost
/// with no gap to show it (every instance fails alike, so nobody records it).
struct InboundStreamCursorTests {
    typealias Entry = InboundStreamCursor.Entry
    let start = ContinuousClock.now
    /// The entries' ids are `<wall>-<n>`: as old as the wall clock says.
    let wall: Int64 = 1_800_000_000_000

    func done(_ n: Int, _ destination: String = "/topic/a") -> Entry { Entry(id: "\(wall)-\(n)", outcome: .done(destination: destination)) }
    func failed(_ n: Int, _ destination: String = "/topic/a", transient: Bool = true, _ reason: String = "connection closed") -> Entry {
        Entry(id: "\(wall)-\(n)", outcome: .failed(destination: destination, transient: transient, reason: reason))
    }
    func retry(_ n: Int, _ delay: Duration, _ reason: String = "connection closed") -> InboundStreamCursor.Next {
        InboundStreamCursor.Next(retry: .init(id: "\(wall)-\(n)", after: delay, reason: reason))
    }
    func cursor(giveUpAfter: Duration = .seconds(30)) -> InboundStreamCursor {
        var cursor = InboundStreamCursor(giveUpAfter: giveUpAfter)
        cursor.lastID = "\(wall)-0"
        return cursor
    }

    @Test func aBatchRecordedInFullIsReadPast() {
        var cursor = cursor()
        #expect(cursor.batchDone([done(1), done(2)], at: start, wallMilliseconds: wall) == .init())
        #expect(cursor.lastID == "\(wall)-2")
    }

    @Test func theReaderStopsAtTheFirstFailureAndRemembersWhatWasRecordedAfterIt() {
        var cursor = cursor()
        #expect(cursor.batchDone([done(1), failed(2), done(3), failed(4)], at: start, wallMilliseconds: wall) == retry(2, .milliseconds(100)))
        #expect(cursor.lastID == "\(wall)-1")
        #expect(!cursor.needsRecording("\(wall)-3") && cursor.needsRecording("\(wall)-2") && cursor.needsRecording("\(wall)-4"))
        // Read again from 2: 3 is not recorded again (its outcome is `done`).
        #expect(cursor.batchDone([failed(2), done(3), done(4)], at: start + .seconds(1), wallMilliseconds: wall) == retry(2, .milliseconds(200)))
        #expect(cursor.batchDone([done(2), done(3), done(4)], at: start + .seconds(2), wallMilliseconds: wall) == .init())
        #expect(cursor.lastID == "\(wall)-4" && cursor.needsRecording("\(wall)-3"))
    }

    @Test func aFailureThatWillPassIsRetriedWhileTheEntryCanStillBeRecordedOnce() {
        var cursor = cursor()
        var next = InboundStreamCursor.Next()
        for minute in 0..<9 {
            next = cursor.batchDone([failed(1, transient: true, "OOM")], at: start + .seconds(60 * minute), wallMilliseconds: wall + Int64(minute) * 59_000)
        }
        #expect(next == retry(1, .seconds(5), "OOM"))
        #expect(cursor.lastID == "\(wall)-0")
        // Past 9 minutes, a copy another instance recorded may have lost its `once` token.
        next = cursor.batchDone([failed(1, transient: true, "OOM"), done(2)], at: start + .seconds(600), wallMilliseconds: wall + 540_000)
        #expect(next.givenUp.map(\.id) == ["\(wall)-1"] && next.retry == nil)
        #expect(cursor.lastID == "\(wall)-2")
    }

    @Test func entriesRefusedForGoodAreGivenUpTogetherAfterTheirTime() {
        var cursor = cursor()
        let one = failed(1, "/topic/a", transient: false, "NOPERM"), three = failed(3, "/topic/c", transient: false, "NOPERM")
        #expect(cursor.batchDone([one, done(2, "/topic/b"), three], at: start, wallMilliseconds: wall) == retry(1, .milliseconds(100), "NOPERM"))
        // 1 is recorded now; 3, failing since the first batch, keeps its clock.
        #expect(cursor.batchDone([done(1), done(2, "/topic/b"), three], at: start + .seconds(10), wallMilliseconds: wall) == retry(3, .milliseconds(100), "NOPERM"))
        let next = cursor.batchDone([three], at: start + .seconds(30), wallMilliseconds: wall)
        #expect(next.givenUp.map(\.id) == ["\(wall)-3"] && next.retry == nil)
        #expect(cursor.lastID == "\(wall)-3")
    }

    @Test func afterAGiveUpTheNextRefusalsAreGivenUpAtOnce() {
        var cursor = cursor()
        #expect(cursor.batchDone([failed(1, "/topic/a", transient: false, "NOPERM")], at: start, wallMilliseconds: wall).retry != nil)
        #expect(cursor.batchDone([failed(1, "/topic/a", transient: false, "NOPERM")], at: start + .seconds(30), wallMilliseconds: wall).givenUp.count == 1)
        // Another destination refused within 30 s of that give-up: at once.
        #expect(cursor.batchDone([failed(2, "/topic/b", transient: false, "NOPERM")], at: start + .seconds(50), wallMilliseconds: wall).givenUp.count == 1)
        // The destination given up before: at once, later too, until one of its entries is recorded.
        #expect(cursor.batchDone([failed(3, "/topic/a", transient: false, "WRONGTYPE")], at: start + .seconds(300), wallMilliseconds: wall).givenUp.count == 1)
        #expect(cursor.batchDone([done(4, "/topic/a")], at: start + .seconds(301), wallMilliseconds: wall) == .init())
        let again = cursor.batchDone([failed(5, "/topic/a", transient: false, "WRONGTYPE")], at: start + .seconds(400), wallMilliseconds: wall)
        #expect(again == retry(5, .milliseconds(100), "WRONGTYPE"))
        // A transient failure is never given up for the refusals before it.
        #expect(cursor.batchDone([failed(5, "/topic/a", transient: true, "OOM")], at: start + .seconds(401), wallMilliseconds: wall).retry != nil)
    }

    /// One destination refused for good, with steady traffic, must not take away the others'
    /// 30 s: its entries given up at once do not keep the window open.
    @Test func aDestinationGivenUpDoesNotShortenAnothersWait() {
        var cursor = cursor()
        let a = { (n: Int) in self.failed(n, "/topic/a", transient: false, "WRONGTYPE") }
        #expect(cursor.batchDone([a(1)], at: start, wallMilliseconds: wall).retry != nil)
        #expect(cursor.batchDone([a(1)], at: start + .seconds(30), wallMilliseconds: wall).givenUp.count == 1)
        for (n, second) in [(2, 40), (3, 55), (4, 70)] {
            #expect(cursor.batchDone([a(n)], at: start + .seconds(second), wallMilliseconds: wall).givenUp.count == 1)
        }
        let b = cursor.batchDone([failed(5, "/topic/b", transient: false, "NOPERM")], at: start + .seconds(75), wallMilliseconds: wall)
        #expect(b == retry(5, .milliseconds(100), "NOPERM"))
    }

    @Test func onlyIdsOfUnixTimesHaveAnAge() {
        #expect(InboundStreamCursor.age(of: "\(wall)-3", wallMilliseconds: wall + 1_500) == .milliseconds(1_500))
        #expect(InboundStreamCursor.age(of: "1-1", wallMilliseconds: wall) == nil)
        #expect(InboundStreamCursor.age(of: "x", wallMilliseconds: wall) == nil)
        // An entry whose id is not a time is retried while the failure lasts, whatever the clock.
        var cursor = cursor()
        let entry = Entry(id: "7-1", outcome: .failed(destination: "/topic/a", transient: true, reason: "OOM"))
        #expect(cursor.batchDone([entry], at: start, wallMilliseconds: wall).retry != nil)
        // Without Redis's time (TIME failed), no entry is given up for its age.
        #expect(cursor.batchDone([failed(1)], at: start, wallMilliseconds: nil).retry != nil)
    }

    @Test func atMostTenThousandDestinationsAreRememberedAsGivenUp() {
        var cursor = cursor()
        #expect(cursor.batchDone([failed(0, "/topic/first", transient: false, "NOPERM")], at: start, wallMilliseconds: wall).retry != nil)
        #expect(cursor.batchDone([failed(0, "/topic/first", transient: false, "NOPERM")], at: start + .seconds(30), wallMilliseconds: wall).givenUp.count == 1)
        // Within the window, each given up at once and remembered; the oldest goes first.
        let limit = InboundStreamCursor.maxGivenUpDestinations
        for n in 1...limit {
            _ = cursor.batchDone([failed(n, "/topic/d\(n)", transient: false, "NOPERM")], at: start + .seconds(30) + .microseconds(n), wallMilliseconds: wall)
        }
        #expect(cursor.givenUpDestinations.count == limit)
        #expect(cursor.givenUpDestinations["/topic/first"] == nil && cursor.givenUpDestinations["/topic/d\(limit)"] != nil)
    }

    @Test func onlyTheLastBatchIsRemembered() {
        var cursor = cursor()
        #expect(cursor.batchDone([failed(1), done(2), done(3)], at: start, wallMilliseconds: wall).retry != nil)
        #expect(cursor.doneAhead.count == 2)
        #expect(cursor.batchDone([done(1), failed(2, transient: false, "NOPERM"), done(3)], at: start, wallMilliseconds: wall).retry != nil)
        #expect(cursor.doneAhead == ["\(wall)-3"] && cursor.refusedSince.count == 1)
        #expect(cursor.batchDone([done(2), done(3)], at: start, wallMilliseconds: wall) == .init())
        #expect(cursor.doneAhead.isEmpty && cursor.refusedSince.isEmpty)
    }

    /// An entry at or before the instances' shared position and older than its `once` token
    /// was recorded by another instance: an instance that fell that far behind (cut off from
    /// Redis for 15 minutes) recorded its whole backlog again, and subscribers got it twice.
    @Test func entriesWithinTheSharedPositionAndTooOldAreRecordedElsewhere() {
        var cursor = cursor()
        let old = "\(wall - 600_000)-1", young = "\(wall - 60_000)-1", ahead = "\(wall - 600_000)-5"
        // Without a shared position (none stored, or Redis's time unknown), every entry is recorded.
        #expect(!cursor.recordedElsewhere(old, wallMilliseconds: wall))
        cursor.sharedFrom = "0-0"
        cursor.sharedThrough = "\(wall - 600_000)-4"
        #expect(cursor.recordedElsewhere(old, wallMilliseconds: wall))
        #expect(!cursor.recordedElsewhere(old, wallMilliseconds: nil))
        // Young enough for its once token: recorded (the token drops the copy).
        cursor.sharedThrough = "\(wall)-0"
        #expect(!cursor.recordedElsewhere(young, wallMilliseconds: wall))
        // After the shared position: no instance recorded it, whatever its age.
        cursor.sharedThrough = "\(wall - 600_000)-4"
        #expect(!cursor.recordedElsewhere(ahead, wallMilliseconds: wall))
        // At or before where the first instance started: no instance necessarily read it.
        cursor.sharedFrom = "\(wall - 600_000)-1"
        #expect(!cursor.recordedElsewhere(old, wallMilliseconds: wall))
        #expect(cursor.recordedElsewhere("\(wall - 600_000)-2", wallMilliseconds: wall))
        #expect(InboundStreamCursor.id("10-2", isAfter: "9-9") && InboundStreamCursor.id("10-10", isAfter: "10-9"))
        #expect(!InboundStreamCursor.id("10-9", isAfter: "10-9") && !InboundStreamCursor.id("9-99", isAfter: "10-0"))
        #expect(!InboundStreamCursor.id("x", isAfter: "1-0"))
    }

    /// A stream that ends before the position (it went back) is read on from its end; one
    /// that ends at or after it leaves the position alone.
    @Test func aStreamBehindThePositionIsReadOnFromItsEnd() {
        var cursor = cursor()
        #expect(cursor.batchDone([done(1), failed(2), done(3)], at: start, wallMilliseconds: wall) == retry(2, .milliseconds(100)))
        #expect(cursor.streamEnds(at: "\(wall)-3") == nil && cursor.lastID == "\(wall)-1")
        #expect(cursor.streamEnds(at: "\(wall)-1") == nil && cursor.lastID == "\(wall)-1")
        #expect(cursor.streamEnds(at: "5-1") == "\(wall)-1")
        #expect(cursor.lastID == "5-1")
        // Ids after the old position name other entries now: recorded again.
        #expect(cursor.needsRecording("\(wall)-3"))
        // No stream at all: from its beginning.
        #expect(cursor.streamEnds(at: nil) == "5-1" && cursor.lastID == "0-0")
        #expect(cursor.streamEnds(at: nil) == nil)
        var fresh = InboundStreamCursor()
        #expect(fresh.streamEnds(at: "5-1") == nil && fresh.lastID == nil)
    }

    @Test func retryDelaysDoubleUpToFiveSeconds() {
        #expect((1...9).map { InboundStreamCursor.retryDelay(afterAttempts: $0) } == [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000].map { .milliseconds($0) })
    }
}

@Suite(.enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct InboundStreamRetryTests {
    /// A gateway reading the inbound stream `in`, with one subscriber of `/topic/kept`.
    struct Reader {
        let gateway: InterestChurnTests.Gateway
        let routes: RedisInboundRoutes

        init(_ server: RedisServerProcess, giveUpAfter: Duration = .seconds(30), maxBacklogBytes: Int = 64 * 1024 * 1024) async throws {
            gateway = try await InterestChurnTests.Gateway(server, maxBacklogBytes: maxBacklogBytes)
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            routes = RedisInboundRoutes(
                redis: .single(gateway.client), engine: gateway.engine, hub: gateway.hub, messageIDs: MessageIDGenerator(instanceID: "gw"),
                configuration: SessionConfiguration(), logger: logger, giveUpAfter: giveUpAfter, quietEndCheckInterval: .zero)
            let pattern = try DestinationPattern("/topic/kept")
            let subscription = LocalSubscription(id: "s", pattern: pattern, ackMode: .auto, sink: gateway.sink)
            let hub = gateway.hub, loop = gateway.loop
            try await loop.submit { hub.shard(for: loop).add(subscription) }.get()
            try await gateway.engine.subscriptionReady(pattern, on: loop)?.get()
            try await routes.start([.stream(stream: "in")])
        }

        func shutdown() async {
            await routes.stop()
            await gateway.shutdown()
        }
    }

    static func add(_ body: String, on admin: RedisConnection) async throws {
        _ = try await admin.execute(RawCommand("XADD", "in", "*", "topic", "/topic/kept", "message", .string(body)))
    }

    /// The reader is at the stream's end once an entry added now comes through.
    static func readerIsLive(_ reader: Reader, _ admin: RedisConnection) async throws {
        let sink = reader.gateway.sink
        #expect(
            try await eventually(timeout: .seconds(30)) {
                if sink.bodies.isEmpty { try await add("zero", on: admin) }
                return !sink.bodies.isEmpty
            })
        // Any other `zero` still on its way comes before this.
        try await add("ready", on: admin)
        #expect(try await eventually { sink.bodies.last == "ready" })
        try #require(Set(sink.bodies) == ["zero", "ready"])
    }

    @Test func entriesRedisRefusedToRecordAreRecordedOnceItTakesThem() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let reader = try await Reader(server)
        let admin = try await server.connect()
        try await Self.readerIsLive(reader, admin)
        let before = reader.gateway.sink.bodies.count
        // The gateway's user (the default one) may no longer call functions: every recording
        // is refused (`NOPERM`), while the reads go on.
        _ = try await admin.execute(RawCommand("ACL", "SETUSER", "default", "-fcall"))
        for body in ["one", "two", "three"] { try await Self.add(body, on: admin) }
        let engine = reader.gateway.engine
        #expect(try await eventually { engine.inboundRecordRetries.load(ordering: .relaxed) >= 2 })
        _ = try await admin.execute(RawCommand("ACL", "SETUSER", "default", "+fcall"))
        try await Self.add("four", on: admin)
        let bodies = try await reader.gateway.delivered(before + 4)
        #expect(Array(bodies.dropFirst(before)) == ["one", "two", "three", "four"])
        #expect(engine.inboundEntriesGivenUp.load(ordering: .relaxed) == 0)
        await admin.close()
        await reader.shutdown()
    }

    /// While the fan-out backlog is over its limit the reader stops reading (as the subscriber
    /// connections do): what it read went to the loops' inboxes with no bound. It reads on where
    /// it stopped once the backlog is under the limit.
    @Test func theReaderPausesWhileTheFanoutBacklogIsOverItsLimit() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let reader = try await Reader(server, maxBacklogBytes: 64 * 1024)
        let admin = try await server.connect()
        try await Self.readerIsLive(reader, admin)
        let hub = reader.gateway.hub, loop = reader.gateway.loop, engine = reader.gateway.engine
        // Without history: delivered straight to the hub, nothing waits for Redis or the loop.
        let plain = LocalSubscription(id: "p", pattern: try DestinationPattern("/topic/plain.in"), ackMode: .auto, sink: reader.gateway.sink)
        try await loop.submit { hub.shard(for: loop).add(plain) }.get()
        let before = reader.gateway.sink.bodies.count
        let release = DispatchSemaphore(value: 0)
        loop.execute { release.wait() }
        // 100 messages of 1 KiB wait behind the held loop: over the 64 KiB limit.
        let padding = String(repeating: "x", count: 1_024)
        for i in 0..<100 {
            hub.deliver(PublishedMessage(destination: "/topic/plain.in", messageID: "b\(i)", headers: [:], body: ByteBuffer(string: padding)))
        }
        #expect(hub.isBacklogged)
        for body in ["one", "two"] {
            _ = try await admin.execute(RawCommand("XADD", "in", "*", "topic", "/topic/plain.in", "message", .string(body)))
        }
        #expect(try await eventually { engine.inboundStreamReadPauses.load(ordering: .relaxed) >= 1 })
        release.signal()
        let bodies = try await reader.gateway.delivered(before + 102)
        #expect(Array(bodies.dropFirst(before + 100)) == ["one", "two"])
        #expect(!hub.isBacklogged)
        await admin.close()
        await reader.shutdown()
    }

    /// A reader that read the stream and stopped; then `bodies` added. Returns the admin connection.
    static func addedWhileNoInstanceRead(_ bodies: [String], _ server: RedisServerProcess) async throws -> RedisConnection {
        let admin = try await server.connect()
        let first = try await Reader(server)
        try await readerIsLive(first, admin)
        await first.shutdown()
        for body in bodies { try await add(body, on: admin) }
        return admin
    }

    /// Every instance started at the stream's end: entries added while none ran (one instance
    /// killed and started again, a full restart) were never read.
    @Test func entriesAddedWhileNoInstanceReadAreReadByTheNextToStart() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let admin = try await Self.addedWhileNoInstanceRead(["one", "two", "three"], server)
        let next = try await Reader(server)
        #expect(try await next.gateway.delivered(3) == ["one", "two", "three"])
        try await Self.add("four", on: admin)
        #expect(try await next.gateway.delivered(4).last == "four")
        await admin.close()
        await next.shutdown()
    }

    /// The stream went back while no instance read (Redis restarted from an older snapshot, or
    /// the key was deleted and added again) and its producer numbers its entries: a reader
    /// starting at the shared position skipped every new entry until their ids passed it.
    @Test func aStreamThatWentBackWhileNoInstanceReadIsReadFromItsEnd() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let admin = try await Self.addedWhileNoInstanceRead([], server)
        _ = try await admin.execute(RawCommand("DEL", "in"))
        _ = try await admin.execute(RawCommand("XADD", "in", "1-1", "topic", "/topic/kept", "message", "before"))
        let next = try await Reader(server)
        #expect(try await eventually { next.gateway.engine.inboundStreamRewinds.load(ordering: .relaxed) == 1 })
        _ = try await admin.execute(RawCommand("XADD", "in", "1-2", "topic", "/topic/kept", "message", "after"))
        #expect(try await next.gateway.delivered(1) == ["after"])
        await admin.close()
        await next.shutdown()
    }

    /// The same while the reader runs: a stream deleted and added again with lower ids left its
    /// blocked read waiting for ids past the old position, for good.
    @Test func aStreamThatGoesBackWhileReadIsFollowed() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let admin = try await server.connect()
        let reader = try await Reader(server)
        try await Self.readerIsLive(reader, admin)
        let before = reader.gateway.sink.bodies.count
        _ = try await admin.execute(RawCommand("DEL", "in"))
        let engine = reader.gateway.engine
        #expect(try await eventually { engine.inboundStreamRewinds.load(ordering: .relaxed) == 1 })
        _ = try await admin.execute(RawCommand("XADD", "in", "1-1", "topic", "/topic/kept", "message", "renumbered"))
        let bodies = try await reader.gateway.delivered(before + 1)
        #expect(Array(bodies.dropFirst(before)) == ["renumbered"])
        // The shared position went back with it: the next instance to start reads what was
        // added while none ran (it started past the stream's end, and took it as read).
        await reader.shutdown()
        _ = try await admin.execute(RawCommand("XADD", "in", "1-2", "topic", "/topic/kept", "message", "while none ran"))
        let next = try await Reader(server)
        #expect(try await next.gateway.delivered(1) == ["while none ran"])
        #expect(next.gateway.engine.inboundStreamRewinds.load(ordering: .relaxed) == 0)
        await admin.close()
        await next.shutdown()
    }

    /// The shared position refused for good (an ACL written for the keys of an older version,
    /// FCALL not allowed): the route still runs, from the stream's end as before positions were
    /// shared (it must not wait for good: without history it needs no function at all).
    @Test func aRouteWhosePositionCannotBeSharedStillReads() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let admin = try await Self.addedWhileNoInstanceRead(["one", "two"], server)
        // The gateway's user may use the stream and the history keys, not the position's key.
        _ = try await admin.execute(RawCommand("ACL", "SETUSER", "default", "resetkeys", "~in", "~switchboard:{*"))
        let next = try await Reader(server)
        let sink = next.gateway.sink
        #expect(
            try await eventually {
                if sink.bodies.isEmpty { try await Self.add("three", on: admin) }
                return !sink.bodies.isEmpty
            })
        #expect(!sink.bodies.contains("one") && !sink.bodies.contains("two"))
        _ = try await admin.execute(RawCommand("ACL", "SETUSER", "default", "allkeys"))
        await admin.close()
        await next.shutdown()
    }

    /// A refusal while running (the position's key denied for a while) is logged and the next
    /// batch shares again: it turned sharing off until the instance restarted (one that started
    /// next began at a stale position and recorded the entries after it again).
    @Test func aRefusalWhileRunningDoesNotStopSharing() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let admin = try await server.connect()
        let reader = try await Reader(server)
        try await Self.readerIsLive(reader, admin)
        _ = try await admin.execute(RawCommand("ACL", "SETUSER", "default", "resetkeys", "~in", "~switchboard:{*"))
        try await Self.add("refused", on: admin)
        #expect(try await eventually { reader.gateway.sink.bodies.last == "refused" })
        _ = try await admin.execute(RawCommand("ACL", "SETUSER", "default", "allkeys"))
        try await Self.add("shared", on: admin)
        #expect(try await eventually { reader.gateway.sink.bodies.last == "shared" })
        let last = try await admin.execute(RawCommand("XREVRANGE", "in", "+", "-", "COUNT", "1"))
        let newest = try #require(try [RedisStreamEntry](fromRESP: last).first?.id)
        #expect(
            try await eventually {
                let through = try await admin.execute(RawCommand("HGET", "switchboard:inbound:in:cursor", "through"))
                return (try? String(fromRESP: through)) == newest
            })
        await admin.close()
        await reader.shutdown()
    }

    /// A stream that cannot be read (a key of another type) is counted, not only logged at
    /// debug level.
    @Test func aStreamThatCannotBeReadIsCounted() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let admin = try await server.connect()
        _ = try await admin.execute(RawCommand("SET", "in", "not a stream"))
        let reader = try await Reader(server)
        let engine = reader.gateway.engine
        #expect(try await eventually { engine.inboundReadFailures.load(ordering: .relaxed) >= 2 })
        // Readable again: the reader goes on.
        _ = try await admin.execute(RawCommand("DEL", "in"))
        try await Self.readerIsLive(reader, admin)
        await admin.close()
        await reader.shutdown()
    }

    /// Inbound messages dropped were only logged (throttled: one line may stand for many).
    @Test func droppedInboundMessagesAreCountedByReason() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let admin = try await server.connect()
        let reader = try await Reader(server)
        try await Self.readerIsLive(reader, admin)
        _ = try await admin.execute(RawCommand("XADD", "in", "*", "text", "no topic"))
        _ = try await admin.execute(RawCommand("XADD", "in", "*", "topic", "/elsewhere/x", "message", "m"))
        _ = try await admin.execute(RawCommand("XADD", "in", "*", "topic", "/topic/bad\u{1}name", "message", "m"))
        reader.routes.onBroadcast(ByteBuffer(string: "not json"), channel: "c")
        reader.routes.onBroadcast(ByteBuffer(string: #"{"user":"alice","topic":"/topic/x","message":"m"}"#), channel: "c")
        try await Self.add("after", on: admin)
        #expect(try await eventually { reader.gateway.sink.bodies.last == "after" })
        let drops = reader.gateway.engine.inboundDropped
        #expect(drops.count(.badStreamEntry) == 1)
        #expect(drops.count(.notBrokerDestination) == 2)
        #expect(drops.count(.badDestination) == 1)
        #expect(drops.count(.badPayload) == 1)
        #expect(drops.count(.notRecorded) == 0)
        await admin.close()
        await reader.shutdown()
    }

    @Test func anEntryRefusedForLongerThanItsTimeIsGivenUpAndTheNextGoOn() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let reader = try await Reader(server, giveUpAfter: .milliseconds(300))
        let admin = try await server.connect()
        try await Self.readerIsLive(reader, admin)
        let before = reader.gateway.sink.bodies.count
        _ = try await admin.execute(RawCommand("ACL", "SETUSER", "default", "-fcall"))
        try await Self.add("refused", on: admin)
        let engine = reader.gateway.engine
        #expect(try await eventually { engine.inboundEntriesGivenUp.load(ordering: .relaxed) == 1 })
        _ = try await admin.execute(RawCommand("ACL", "SETUSER", "default", "+fcall"))
        try await Self.add("next", on: admin)
        let bodies = try await reader.gateway.delivered(before + 1)
        #expect(Array(bodies.dropFirst(before)) == ["next"])
        await admin.close()
        await reader.shutdown()
    }
}
