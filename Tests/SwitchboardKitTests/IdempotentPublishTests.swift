import Logging
import NIOCore
import NIOPosix
import Redis
import RedisServerTesting
import SwitchboardCore
import SwitchboardKit
import SwitchboardRedis
import SwitchboardWire
import Testing

/// In Redis mode an idempotency key is kept in the step that records the message in the
/// destination's history: a retry on another instance counts once.
@Suite(.enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct IdempotentPublishTests {
    @Test func aKeyPublishedOnOneInstanceIsADuplicateOnAnother() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.any()
        var engines: [RedisEngine] = []
        var clients: [RedisClient] = []
        var history = DestinationHistory.Settings()
        history.disabledPrefixes = ["/topic/nohistory."]
        for instance in ["gw1", "gw2"] {
            let client = try await server.client()
            let engine = RedisEngine(
                redis: .single(client), hub: FanoutHub(eventLoops: [loop]), naming: RedisChannelNaming(), instanceID: instance,
                messageIDs: MessageIDGenerator(instanceID: instance), eventLoop: loop, logger: quietLogger,
                history: history)
            try await engine.start()
            engines.append(engine)
            clients.append(client)
        }
        func message(_ id: String, _ destination: String = "/topic/orders") -> PublishedMessage {
            PublishedMessage(destination: destination, messageID: id, headers: [:], body: ByteBuffer(string: id))
        }
        #expect(try await engines[0].publish(message("a"), idempotencyKey: IdempotencyTokens.api("order-7"), on: loop).get())
        #expect(try await !engines[1].publish(message("b"), idempotencyKey: IdempotencyTokens.api("order-7"), on: loop).get(), "the retry on another instance")
        #expect(try await engines[1].publish(message("c"), idempotencyKey: IdempotencyTokens.api("order-8"), on: loop).get())
        #expect(try await engines[1].publish(message("d", "/topic/other"), idempotencyKey: IdempotencyTokens.api("order-7"), on: loop).get(), "per destination")
        // Recorded once: history holds a and c, not b.
        let read = try await engines[0].sharedResumeRead("/topic/orders", after: 0, covering: StreamPosition(epoch: "any", sequence: 0)).get()
        #expect(read.messages.map { String(buffer: $0.body) } == ["a", "c"])
        // Without history there is no atomic step to keep the key in: refused, not published.
        await #expect(throws: IdempotencyUnavailable.self) {
            _ = try await engines[0].publish(message("e", "/topic/nohistory.x"), idempotencyKey: IdempotencyTokens.api("k"), on: loop).get()
        }
        // A backend publishing through SwitchboardKit shares the key space.
        let publisher = SwitchboardPublisher(client: clients[0], origin: "backend")
        #expect(try await !publisher.publish(destination: "/topic/orders", body: ByteBuffer(string: "f"), idempotencyKey: "order-7"))
        #expect(try await publisher.publish(destination: "/topic/orders", body: ByteBuffer(string: "g"), idempotencyKey: "order-9"))
        #expect(try await !engines[0].publish(message("h"), idempotencyKey: IdempotencyTokens.api("order-9"), on: loop).get())
        var plain = publisher
        plain.recordsHistory = false
        await #expect(throws: SwitchboardPublisherError.idempotencyNeedsHistory) {
            _ = try await plain.publish(destination: "/topic/orders", body: ByteBuffer(string: "i"), idempotencyKey: "order-10")
        }
        await #expect(throws: SwitchboardPublisherError.invalidIdempotencyKey("must be 1 to 256 bytes")) {
            _ = try await publisher.publish(destination: "/topic/orders", body: ByteBuffer(string: "j"), idempotencyKey: "")
        }
        for engine in engines { await engine.shutdown() }
        for client in clients { await client.shutdown() }
        try await group.shutdownGracefully()
    }
}
