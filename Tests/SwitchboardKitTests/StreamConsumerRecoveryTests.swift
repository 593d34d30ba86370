import NIOConcurrencyHelpers
import NIOCore
import Redis
import RedisServerTesting
import SwitchboardCore
import SwitchboardKit
import SwitchboardRedis
import SwitchboardRoutes
import SwitchboardWire
import Testing

@Suite("StreamConsumer: lost groups and slow replicas", .enabled(if: RedisServerProcess.isAvailable, "redis-server not installed"))
struct StreamConsumerRecoveryTests {
    /// Redis loses its data (FLUSHALL) and the gateway stores an entry before anyone re-created the
    /// group: the consumer re-creates it at 0 and processes that entry.
    @Test func groupLostWithRedisDataIsRecreatedAtZero() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let seen = NIOLockedValueBox<[String]>([])
        let consumer = StreamConsumer(client: client, configuration: testConfiguration(name: "survivor"), logger: quietLogger)
        let task = start(consumer) { message in seen.withLockedValue { $0.append(message.bodyString) } }
        try #require(try await waitUntilReading(consumer, client))
        try await addGatewayEntry(client, body: "before")
        #expect(try await eventually { seen.withLockedValue { $0 } == ["before"] })

        // Data lost and a new entry stored, in one step: the stream now exists without the group.
        try await client.withDedicatedConnection { connection in
            _ = try await connection.execute(RawCommand("MULTI"))
            _ = try await connection.execute(RawCommand("FLUSHALL"))
            let message = AppMessage(
                destination: "/app/greet", body: ByteBuffer(string: "after"), headers: [:], contentType: "text/plain",
                sessionID: "sess-1", user: nil, instanceID: "gw-1", timestamp: 1
            )
            _ = try await connection.execute(RawCommand(arguments: ["XADD", "OUT", "*"] + RedisStreamRoute.fields(for: message).flatMap { [.string($0.name), $0.value] }))
            let replies = try [RESPToken](fromRESP: try await connection.execute(RawCommand("EXEC")))
            #expect(replies.count == 2)
        }
        #expect(try await eventually { seen.withLockedValue { $0 } == ["before", "after"] })
        #expect(try await eventually { try await pendingCount(client) == 0 })
        #expect(try await client.execute(XLEN(key: "OUT")) == 1)

        consumer.stop()
        try await task.value
        await client.shutdown()
    }

    /// The handler succeeds but its `XACK` is lost with the connection (`CLIENT KILL` while the
    /// handler runs; on a cluster a `MOVED` during a slot move, or a primary that dies before
    /// replicating the ack, ends the same way): the entry comes back pending to this consumer,
    /// which acknowledges it again without handling it a second time.
    @Test func handledEntryWhoseAckIsLostIsNotHandledAgain() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let calls = NIOLockedValueBox(0)
        let release = NIOLockedValueBox(false)
        let consumer = StreamConsumer(client: client, configuration: testConfiguration(name: "acker"), logger: quietLogger)
        let task = start(consumer) { _ in
            calls.withLockedValue { $0 += 1 }
            while !release.withLockedValue({ $0 }) { try await Task.sleep(for: .milliseconds(10)) }
        }
        try #require(try await waitUntilReading(consumer, client))
        try await addGatewayEntry(client, body: "once")
        #expect(try await eventually { calls.withLockedValue { $0 } == 1 })
        // Every other connection goes, the consumer's among them: its XACK will fail.
        _ = try await client.execute(RawCommand(arguments: ["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]))
        release.withLockedValue { $0 = true }
        #expect(try await eventually { consumer.statistics.connects >= 2 })
        #expect(try await eventually { (try? await pendingCount(client)) == 0 })
        #expect(calls.withLockedValue { $0 } == 1)
        #expect(consumer.statistics.processed == 1)

        consumer.stop()
        try await task.value
        await client.shutdown()
    }

    /// A slow replica's batch takes longer than `claimMinIdle`; a fast replica scans for idle entries
    /// all the time. The slow one renews its hold, so every entry is processed exactly once.
    @Test func slowAndFastReplicasProcessThousandEntriesExactlyOnce() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        _ = try await client.execute(XGROUPCREATE(key: "OUT", group: "svc", id: "0", makeStream: true))
        let total = 1_000
        for n in 0..<total { try await addGatewayEntry(client, body: "n\(n)") }
        let seen = NIOLockedValueBox<[String: Int]>([:])
        func handler(delay: Duration) -> StreamConsumer.Handler {
            { message in
                try await Task.sleep(for: delay)
                seen.withLockedValue { $0[message.id, default: 0] += 1 }
            }
        }
        // 16 entries × 150 ms = 2.4 s per batch of the slow replica, longer than claimMinIdle: 2 s,
        // so its renewals (every third of it) have more than a second of slack on a loaded machine.
        let timing = (claimMinIdle: Duration.milliseconds(2_000), claimInterval: Duration.milliseconds(50))
        let slow = StreamConsumer(
            client: client,
            configuration: testConfiguration(name: "slow", claimMinIdle: timing.claimMinIdle, claimInterval: timing.claimInterval),
            logger: quietLogger
        )
        let fast = StreamConsumer(
            client: client,
            configuration: testConfiguration(name: "fast", claimMinIdle: timing.claimMinIdle, claimInterval: timing.claimInterval),
            logger: quietLogger
        )
        let slowTask = start(slow, handler(delay: .milliseconds(150)))
        #expect(try await eventually { try await pendingCount(client) > 0 })
        let fastTask = start(fast, handler(delay: .zero))

        #expect(
            try await eventually(timeout: .seconds(60)) {
                try await pendingCount(client) == 0 && seen.withLockedValue { $0.count } == total
            })
        slow.stop()
        fast.stop()
        try await slowTask.value
        try await fastTask.value
        let counts = seen.withLockedValue { $0 }
        #expect(counts.count == total)
        let twice = counts.filter { $0.value != 1 }
        #expect(twice.isEmpty, "processed more than once: \(twice.count) entries")
        #expect(slow.statistics.processed > 0 && fast.statistics.processed > 0)
        await client.shutdown()
    }
}
