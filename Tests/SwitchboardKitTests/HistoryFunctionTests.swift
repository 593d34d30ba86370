import NIOCore
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
@Suite("History functions", .enabled(if: RedisServerProcess.isAvailable, "redis-server not installed"))
struct HistoryFunctionTests {
    static let key = "switchboard:{/topic/h}"

    static func publish(_ client: RedisClient, _ body: String, maxLength: Int? = nil, once: String? = nil) async throws -> HistoryPublishResult {
        let message = PublishedMessage(destination: "/topic/h", messageID: "m-\(body)", headers: ["x-k": "v"], body: ByteBuffer(string: body))
        let command = HistoryPublish(key: key, payload: RedisEnvelope.encode(message, origin: "test"), maxLength: maxLength, once: once)
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

    @Test func windowTrimsAndLostHistoryStartsANewEpoch() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        for i in 1...5 { _ = try await Self.publish(client, "\(i)", maxLength: 3) }
        let read = try await HistoryFunctions.call(HistoryRead(key: Self.key, range: .after(0)), on: client).get()
        #expect(read.position.sequence == 5)
        #expect(read.envelopes.map { RedisEnvelope.decode($0)!.position!.sequence } == [3, 4, 5])
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
