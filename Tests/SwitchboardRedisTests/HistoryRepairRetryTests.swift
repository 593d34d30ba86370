import NIOCore
import Redis
import RedisServerTesting
import SwitchboardCore
import SwitchboardWire
import Testing

@testable import SwitchboardRedis

/// A history read that Redis refuses for a while is asked again until it succeeds, though
/// nothing waits in the buffer: what the instance missed is delivered once the refusal passes,
/// not at the next publish (which may never come).
@Suite(.enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct HistoryRepairRetryTests {
    @Test func aReadRefusedWhileRedisIsOutOfMemoryIsMadeAgainOnceItPasses() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        // The subscriber connection, killed below, is back only after 4 to 8 s (the backoff's
        // jitter halves it at most): time to publish what this gateway then misses, and to
        // take Redis past its memory limit.
        let gateway = try await InterestChurnTests.Gateway(server) {
            $0.reconnectBackoffMinimum = .seconds(8)
            $0.reconnectBackoffMaximum = .seconds(8)
        }
        let publisher = try await InterestChurnTests.Gateway(server)
        let pattern = try DestinationPattern("/topic/kept")
        let subscription = LocalSubscription(id: "s", pattern: pattern, ackMode: .auto, sink: gateway.sink)
        let hub = gateway.hub, loop = gateway.loop
        try await loop.submit { hub.shard(for: loop).add(subscription) }.get()
        try await gateway.engine.subscriptionReady(pattern, on: loop)?.get()
        @Sendable func message(_ body: String) -> PublishedMessage {
            PublishedMessage(destination: "/topic/kept", messageID: body, headers: [:], body: ByteBuffer(string: body))
        }
        try await publisher.engine.publish(message("one"), on: publisher.loop).get()
        #expect(try await gateway.delivered(1) == ["one"])

        let admin = try await server.connect()
        let reconnects = gateway.client.reconnectCount
        _ = try await admin.execute(RawCommand("CLIENT", "KILL", "TYPE", "pubsub"))
        try await publisher.engine.publish(message("two"), on: publisher.loop).get()
        _ = try await admin.execute(RawCommand("CONFIG", "SET", "maxmemory", "1"))
        try #require(gateway.client.reconnectCount == reconnects, "the subscriber was back before Redis was out of memory: window missed")
        // Back: the read of what it missed is refused (`OOM`).
        let interest = try #require(gateway.interest(pattern))
        #expect(
            try await eventually {
                gateway.client.reconnectCount > reconnects && interest.sequenced!.withLockedValue { $0.sequencer.repairFailures } > 0
            })
        #expect(gateway.sink.bodies == ["one"])
        _ = try await admin.execute(RawCommand("CONFIG", "SET", "maxmemory", "0"))
        #expect(try await gateway.delivered(2) == ["one", "two"], "missed while the read was refused")
        await admin.close()
        await publisher.shutdown()
        await gateway.shutdown()
    }
}
