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
    let start = ContinuousClock.now

    @Test func aBatchRecordedInFullIsReadPast() {
        var cursor = InboundStreamCursor()
        cursor.lastID = "0-0"
        #expect(cursor.batchDone([("1-0", .done), ("2-0", .done)], at: start) == .readOn)
        #expect(cursor.lastID == "2-0")
    }

    @Test func theReaderStopsAtTheFirstFailureAndRemembersWhatWasRecordedAfterIt() {
        var cursor = InboundStreamCursor()
        cursor.lastID = "0-0"
        let failed = InboundStreamCursor.Outcome.failed(transient: true, reason: "connection closed")
        let next = cursor.batchDone([("1-0", .done), ("2-0", failed), ("3-0", .done), ("4-0", failed)], at: start)
        #expect(next == .retry(id: "2-0", after: .milliseconds(100), reason: "connection closed"))
        #expect(cursor.lastID == "1-0")
        #expect(!cursor.needsRecording("3-0") && cursor.needsRecording("2-0") && cursor.needsRecording("4-0"))
        // Read again from 2-0: 3-0 is not recorded again (its outcome is `done`).
        let again = cursor.batchDone([("2-0", failed), ("3-0", .done), ("4-0", .done)], at: start + .seconds(1))
        #expect(again == .retry(id: "2-0", after: .milliseconds(200), reason: "connection closed"))
        #expect(cursor.batchDone([("2-0", .done), ("3-0", .done), ("4-0", .done)], at: start + .seconds(2)) == .readOn)
        #expect(cursor.lastID == "4-0" && cursor.needsRecording("3-0"))
    }

    @Test func aFailureThatWillPassIsRetriedForAsLongAsItLasts() {
        var cursor = InboundStreamCursor(giveUpAfter: .seconds(30))
        cursor.lastID = "0-0"
        var next = InboundStreamCursor.Next.readOn
        for minute in 0..<10 {
            next = cursor.batchDone([("1-0", .failed(transient: true, reason: "OOM"))], at: start + .seconds(60 * minute))
        }
        #expect(next == .retry(id: "1-0", after: .seconds(5), reason: "OOM"))
        #expect(cursor.lastID == "0-0")
    }

    @Test func anEntryRefusedForGoodIsGivenUpAfterItsTime() {
        var cursor = InboundStreamCursor(giveUpAfter: .seconds(30))
        cursor.lastID = "0-0"
        let refused = InboundStreamCursor.Outcome.failed(transient: false, reason: "NOPERM")
        #expect(cursor.batchDone([("1-0", refused), ("2-0", .done)], at: start) == .retry(id: "1-0", after: .milliseconds(100), reason: "NOPERM"))
        #expect(cursor.batchDone([("1-0", refused)], at: start + .seconds(29)) == .retry(id: "1-0", after: .milliseconds(200), reason: "NOPERM"))
        #expect(cursor.batchDone([("1-0", refused)], at: start + .seconds(30)) == .gaveUp(id: "1-0", reason: "NOPERM"))
        #expect(cursor.lastID == "1-0" && !cursor.needsRecording("2-0"))
        // The next entry failing starts its own clock.
        #expect(cursor.batchDone([("3-0", refused)], at: start + .seconds(31)) == .retry(id: "3-0", after: .milliseconds(100), reason: "NOPERM"))
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

        init(_ server: RedisServerProcess, giveUpAfter: Duration = .seconds(30)) async throws {
            gateway = try await InterestChurnTests.Gateway(server)
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            routes = RedisInboundRoutes(
                redis: .single(gateway.client), engine: gateway.engine, hub: gateway.hub, messageIDs: MessageIDGenerator(instanceID: "gw"),
                configuration: SessionConfiguration(), logger: logger, giveUpAfter: giveUpAfter)
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
