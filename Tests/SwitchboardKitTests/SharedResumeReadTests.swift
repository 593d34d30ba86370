import Logging
import NIOCore
import NIOPosix
import Redis
import RedisServerTesting
import SwitchboardCore
import SwitchboardRedis
import SwitchboardWire
import Testing

/// Resumes of one destination at once share one history read, decoded once.
@Suite(.enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct SharedResumeReadTests {
    @Test func resumesInFlightTogetherShareOneDecodedRead() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.any()
        let client = try await server.client()
        let engine = RedisEngine(
            redis: .single(client), hub: FanoutHub(eventLoops: [loop]), naming: RedisChannelNaming(), instanceID: "gw",
            messageIDs: MessageIDGenerator(instanceID: "gw"), eventLoop: loop, logger: quietLogger, history: DestinationHistory.Settings())
        try await engine.start()
        for n in 0..<20 {
            try await engine.publish(
                PublishedMessage(destination: "/topic/s", messageID: "m\(n)", headers: [:], body: ByteBuffer(string: "\(n)")), on: loop
            ).get()
        }
        let head = try await engine.sharedResumeRead("/topic/s", after: 0, covering: StreamPosition(epoch: "any", sequence: 0)).get().read.position
        #expect(head.sequence == 20)

        // Redis paused: the first read is in flight while the others start, deterministically.
        server.pause()
        let reads = [5, 10, 19].map { engine.sharedResumeRead("/topic/s", after: $0, covering: head) }
        // From before the one in flight (which starts after 5): it cannot join, its own read.
        let earlier = engine.sharedResumeRead("/topic/s", after: 0, covering: head)
        server.resume()
        var decoded: [RedisEngine.DecodedHistoryRead] = []
        for read in reads { decoded.append(try await read.get()) }
        let own = try await earlier.get()
        #expect(decoded[1] === decoded[0] && decoded[2] === decoded[0], "decoded once for the three")
        #expect(decoded[0].messages.map { String(buffer: $0.body) } == (5..<20).map { "\($0)" })
        #expect(own !== decoded[0])
        #expect(own.messages.map { String(buffer: $0.body) } == (0..<20).map { "\($0)" })

        // Answered before a later position was reached: not joined.
        server.pause()
        let old = engine.sharedResumeRead("/topic/s", after: 0, covering: head)
        let ahead = engine.sharedResumeRead("/topic/s", after: 0, covering: StreamPosition(epoch: head.epoch, sequence: 25))
        server.resume()
        let first = try await old.get()
        let second = try await ahead.get()
        #expect(second !== first, "the read in flight does not reach position 25: read again")

        await engine.shutdown()
        await client.shutdown()
        try await group.shutdownGracefully()
    }
}
