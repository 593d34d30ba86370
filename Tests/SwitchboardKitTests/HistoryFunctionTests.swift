import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Redis
import RedisServerTesting
import STOMPCodec
import SwitchboardCore
import SwitchboardKit
import SwitchboardRedis
import SwitchboardWire
import Testing

/// The history functions against a real redis-server: numbering, keeping, publishing in one
/// step, the epoch, trimming, `once`, and SwitchboardKit publishing through them.
@Suite("History functions", .enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct HistoryFunctionTests {
    static let key = "switchboard:{/topic/h}"

    static func publish(
        _ client: RedisClient, _ body: String, maxLength: Int? = nil, once: String? = nil, durable: Bool = false
    ) async throws -> HistoryPublishResult {
        let message = PublishedMessage(destination: "/topic/h", messageID: "m-\(body)", headers: ["x-k": "v"], body: ByteBuffer(string: body))
        let command = HistoryPublish(
            key: key, payload: RedisEnvelope.encode(message, origin: "test"), maxLength: maxLength, once: once, durable: durable)
        return try await HistoryFunctions.call(command, on: client).get()
    }

    @Test func publishNumbersKeepsAndPublishesWithThePosition() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let subscription = try await client.subscribe(to: ["switchboard:dest:/topic/h"])
        // The library is loaded on first use (a Redis that restarted empty has none).
        let first = try await Self.publish(client, "one")
        let second = try await Self.publish(client, "two")
        let epoch = try #require(first.position?.epoch)
        #expect(first.position?.sequence == 1 && second.position == StreamPosition(epoch: epoch, sequence: 2))
        #expect(first.receivers == 1)
        for (n, body) in ["one", "two"].enumerated() {
            let message = try #require(try await nextMessage(subscription))
            let decoded = try #require(RedisEnvelope.decode(message.payload))
            #expect(decoded.position == StreamPosition(epoch: epoch, sequence: UInt64(n + 1)))
            #expect(String(buffer: decoded.body) == body && decoded.headers["x-k"] == "v" && decoded.origin == "test")
            #expect(decoded.messageID == "m-\(body)")
        }
        let read = try await HistoryFunctions.call(HistoryRead(key: Self.key, range: .after(1)), on: client).get()
        #expect(read.position == StreamPosition(epoch: epoch, sequence: 2))
        #expect(read.envelopes.map { String(buffer: RedisEnvelope.decode($0)!.body) } == ["two"])
        let last = try await HistoryFunctions.call(HistoryRead(key: Self.key, range: .last(5)), on: client).get()
        #expect(last.envelopes.count == 2)
        await subscription.unsubscribe()
        await client.shutdown()
    }

    /// A page reads the entries after `after` through `through` only (a long read goes in
    /// pages, each reply small); past the newest or before the first, what exists.
    @Test func aPageReadsOnlyItsRange() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        for i in 1...20 { _ = try await Self.publish(client, "\(i)") }
        func sequences(_ range: HistoryRead.Range) async throws -> [UInt64] {
            let read = try await HistoryFunctions.call(HistoryRead(key: Self.key, range: range), on: client).get()
            #expect(read.position.sequence == 20)
            return read.envelopes.map { RedisEnvelope.decode($0)!.position!.sequence }
        }
        #expect(try await sequences(.page(after: 5, through: 9)) == [6, 7, 8, 9])
        #expect(try await sequences(.page(after: 18, through: 30)) == [19, 20])
        #expect(try await sequences(.page(after: 9, through: 9)) == [])
        #expect(try await sequences(.page(after: 25, through: 30)) == [])
        #expect(try await sequences(.after(18)) == [19, 20])
        await client.shutdown()
    }

    @Test func windowTrimsAndLostHistoryStartsANewEpoch() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        for i in 1...5 { _ = try await Self.publish(client, "\(i)", maxLength: 3) }
        let read = try await HistoryFunctions.call(HistoryRead(key: Self.key, range: .after(0)), on: client).get()
        #expect(read.position.sequence == 5)
        #expect(read.envelopes.map { RedisEnvelope.decode($0)!.position!.sequence } == [3, 4, 5])
        // A page with no entry (trimmed) says where the next one is; one with entries, or
        // with none after it, does not.
        let trimmed = try await HistoryFunctions.call(HistoryRead(key: Self.key, range: .page(after: 0, through: 2)), on: client).get()
        #expect(trimmed.envelopes.isEmpty && trimmed.nextEntry == 3)
        let kept = try await HistoryFunctions.call(HistoryRead(key: Self.key, range: .page(after: 2, through: 4)), on: client).get()
        #expect(kept.envelopes.count == 2 && kept.nextEntry == nil)
        let beyond = try await HistoryFunctions.call(HistoryRead(key: Self.key, range: .page(after: 5, through: 9)), on: client).get()
        #expect(beyond.envelopes.isEmpty && beyond.nextEntry == nil)
        // History lost (FLUSHALL stands for a Redis restarted without persistence).
        _ = try await client.execute(RawCommand("FLUSHALL"))
        let after = try await Self.publish(client, "again")
        #expect(after.position?.sequence == 1)
        #expect(after.position?.epoch != read.position.epoch)
    }

    @Test func onceTokenRecordsOneOfSeveralIdenticalPublishes() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let a = try await Self.publish(client, "in", once: "stream:1-0")
        let b = try await Self.publish(client, "in", once: "stream:1-0")
        let c = try await Self.publish(client, "in", once: "stream:2-0")
        #expect(a.position?.sequence == 1 && b.position == nil && c.position?.sequence == 2)
        // Kept ten minutes: an instance frozen for a minute (connections alive) read its
        // inbound messages on waking and, the 60 s tokens gone, recorded them again.
        let ttl = try Int(fromRESP: try await client.execute(RawCommand("PTTL", .string("\(Self.key):once:stream:1-0"))))
        #expect(ttl > 590_000 && ttl <= 600_000, "\(ttl)")
    }

    @Test func plainPayloadFromRedisCliBecomesATextMessage() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let subscription = try await client.subscribe(to: ["switchboard:dest:/topic/a:b\\c"])
        _ = try await client.execute(LoadHistoryFunctions())
        _ = try await client.execute(RawCommand("FCALL", "switchboard_publish", "1", "switchboard:{/topic/a:b\\c}", "plain body"))
        let message = try #require(try await nextMessage(subscription))
        let decoded = try #require(RedisEnvelope.decode(message.payload))
        #expect(decoded.destination == "/topic/a:b\\c")
        #expect(decoded.position?.sequence == 1)
        #expect(decoded.headers["content-type"] == "text/plain" && String(buffer: decoded.body) == "plain body")
        // A key without a destination is refused, with a message that says so.
        await #expect(throws: RedisServerError.self) {
            _ = try await client.execute(RawCommand("FCALL", "switchboard_publish", "1", "no-braces", "x"))
        }
        await subscription.unsubscribe()
    }

    /// A Kit publisher told that Redis is durable (`appendfsyncAlways`, as the gateway's
    /// `redis.appendfsync-always`) keeps the positions across a Redis restart when its publish
    /// is the destination's first use afterwards (before, it always moved the sequence ahead by
    /// 1,000,000, and subscribers saw a hole where nothing was lost); without, it moves it.
    @Test(arguments: [false, true])
    func kitPublishAfterARestartKeepsThePositionsWhenRedisIsDurable(_ durable: Bool) async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        var client = try await server.client()
        var publisher = SwitchboardPublisher(client: client, origin: "svc-d")
        publisher.appendfsyncAlways = durable
        try await publisher.publish(destination: "/topic/kit", body: "1")
        _ = try await client.execute(RawCommand("SAVE"))
        await client.shutdown()
        server.kill()
        try await server.launch()
        client = try await server.client()
        publisher = SwitchboardPublisher(client: client, origin: "svc-d")
        publisher.appendfsyncAlways = durable
        try await publisher.publish(destination: "/topic/kit", body: "2")
        let n = try await client.execute(RawCommand("HGET", "switchboard:{/topic/kit}:seq", "n")).description
        #expect(n == (durable ? "\"2\"" : "\"1000002\""))
        await client.shutdown()
    }

    @Test func kitPublishRecordsHistoryUnlessTurnedOff() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        var publisher = SwitchboardPublisher(client: client, origin: "svc-h")
        try await publisher.publish(destination: "/topic/kit", body: "kept")
        let results = await publisher.publish([.init(destination: "/topic/kit", body: "kept too")])
        #expect(results.count == 1)
        #expect(try await client.execute(RawCommand("HGET", "switchboard:{/topic/kit}:seq", "n")).description == "\"2\"")
        publisher.recordsHistory = false
        try await publisher.publish(destination: "/topic/kit", body: "not kept")
        #expect(try await client.execute(RawCommand("XLEN", "switchboard:{/topic/kit}:log")).description == "2")
    }
}

/// `FUNCTION FLUSH` on a live server while one event loop publishes without waiting: the
/// publishes that found the library missing run again before those made since, so positions
/// follow the order of the calls. Before, calls made after the reload's `FUNCTION LOAD`
/// overtook them.
@Suite("History functions reloaded in order", .enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct HistoryFunctionReloadTests {
    /// With a command connection per event loop (the gateway's default: the calls and their
    /// replies on one loop) and with one shared connection on another loop (with Sentinel).
    @Test(arguments: [true, false])
    func aFlushedLibraryIsReloadedWithoutReorderingOneLoopsCalls(connectionPerLoop: Bool) async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        var configuration = server.configuration
        configuration.commandConnectionPerEventLoop = connectionPerLoop
        let client = RedisClient(configuration: configuration)
        client.start()
        try await client.waitUntilConnected(timeout: .seconds(30))
        let admin = try await server.client()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let count = 2_000
        let perTick = 4
        _ = try await HistoryFunctionTests.publish(client, "loaded")
        let futures = NIOLockedValueBox<[EventLoopFuture<HistoryPublishResult>]>([])
        // Calls answered, and how many had been made when the last flush was sent.
        let answered = NIOLockedValueBox(0)
        let madeAtLastFlush = NIOLockedValueBox(0)
        let done = loop.makePromise(of: Void.self)
        // A few calls per loop tick, the next tick after the replies read meanwhile: calls are
        // made while a reload runs, as a session's are.
        @Sendable func step(_ first: Int) {
            for i in first..<min(first + perTick, count) {
                let message = PublishedMessage(destination: "/topic/h", messageID: "m\(i)", headers: [:], body: ByteBuffer(string: "\(i)"))
                let command = HistoryPublish(key: HistoryFunctionTests.key, payload: RedisEnvelope.encode(message, origin: "test"))
                let call = HistoryFunctions.call(command, on: client)
                call.whenComplete { _ in answered.withLockedValue { $0 += 1 } }
                futures.withLockedValue { $0.append(call) }
                // A flush only once every call made before the last one was answered, and not
                // while a reload runs: a call then meets one flush at most. On a loaded machine,
                // flushes close together failed one call three times, its limit, and the call
                // answered "Function not found" (as it should; the order is what is tested).
                if i % 200 == 100, !FunctionReloadGates.isReloading(client), answered.withLockedValue({ $0 }) >= madeAtLastFlush.withLockedValue({ $0 }) {
                    madeAtLastFlush.withLockedValue { $0 = i + 1 }
                    _ = admin.send(RawCommand("FUNCTION", "FLUSH"))
                }
            }
            if first + perTick < count {
                loop.scheduleTask(in: .microseconds(200)) { step(first + perTick) }
            } else {
                done.succeed(())
            }
        }
        loop.execute { step(0) }
        try await done.futureResult.get()
        var sequences: [UInt64] = []
        for future in futures.withLockedValue({ $0 }) { sequences.append(try #require(try await future.get().position).sequence) }
        #expect(sequences == Array(2...UInt64(count + 1)), "first out of order at \(sequences.indices.first { sequences[$0] != UInt64($0 + 2) } ?? -1)")
        #expect(!FunctionReloadGates.isReloading(client))
        // The flushes fell among the calls: the library was loaded again after one at least
        // (besides the first load; flushes close together share a reload).
        let stats = String(describing: try await admin.execute(RawCommand("INFO", "commandstats")))
        let loads = stats.components(separatedBy: "cmdstat_function|load:calls=").dropFirst().first?.prefix { $0.isNumber }
        #expect((loads.flatMap { Int($0) } ?? 0) >= 2, "\(stats)")
        await client.shutdown()
        await admin.shutdown()
    }
}

extension HistoryFunctionTests {
    /// A restart from an older RDB snapshot (Redis's default persistence; AOF with `everysec`
    /// alike) lost the last writes and their positions. The first use afterwards moves the
    /// sequence past every position issued before, so none is issued twice: a probe saw every
    /// subscriber drop the new messages as copies, and a resume across them say `x-recovered:
    /// true`. With `durable` (`redis.appendfsync-always`) a restart keeps the sequence.
    @Test(arguments: [false, true])
    func aRestartNeverIssuesAPositionTwice(durable: Bool) async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        var client = try await server.client()
        _ = try await Self.publish(client, "1", durable: durable)
        _ = try await Self.publish(client, "2", durable: durable)
        _ = try await client.execute(RawCommand("SAVE"))
        // Position 3 is not in the snapshot.
        let lost = try await Self.publish(client, "3", durable: durable)
        let epoch = try #require(lost.position?.epoch)
        await client.shutdown()
        server.kill()
        try await server.launch()
        client = try await server.client()
        // A read first (a resume), then a publish: the sequence moves once.
        let read = try await HistoryFunctions.call(HistoryRead(key: Self.key, range: .after(1), durable: durable), on: client).get()
        let after = try await Self.publish(client, "after", durable: durable)
        #expect(read.position.epoch == epoch && after.position?.epoch == epoch)
        #expect(read.envelopes.count == 1, "position 2 is still in history")
        if durable {
            #expect(read.position.sequence == 2 && after.position?.sequence == 3)
        } else {
            #expect(read.position.sequence == 1_000_002 && after.position?.sequence == 1_000_003)
        }
        await client.shutdown()
    }
}
