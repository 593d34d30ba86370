import NIOConcurrencyHelpers
import NIOCore
import Redis
import RedisServerTesting
import SwitchboardKit
import Testing

/// The consumer names of a group, sorted.
private func consumerNames(_ client: RedisClient, stream: String = "OUT", group: String = "svc") async throws -> [String] {
    let script = """
        local n = {}
        for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do n[#n + 1] = c[2] end
        return n
        """
    return try [String](fromRESP: try await client.execute(EVAL(script: script, keys: [stream], arguments: [.string(group)]))).sorted()
}

/// Consumer names no longer pile up in the group (a new random name per process, none ever
/// deleted): a consumer stopping with nothing pending deletes its own, and the claim pass
/// deletes idle ones with nothing pending. A name with pending entries is never deleted (that
/// would drop its entries).
@Suite("StreamConsumer: consumer names", .enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct StreamConsumerNamesTests {
    @Test func aConsumerStoppingWithNothingPendingRemovesItsName() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        _ = try await client.execute(XGROUPCREATE(key: "OUT", group: "svc", id: "$", makeStream: true))
        let handled = NIOLockedValueBox(0)
        let done = StreamConsumer(client: client, configuration: testConfiguration(name: "done"), logger: quietLogger)
        let doneTask = start(done) { _ in handled.withLockedValue { $0 += 1 } }
        try await addGatewayEntry(client, body: "a")
        #expect(try await eventually { handled.withLockedValue { $0 } == 1 })
        #expect(try await consumerNames(client) == ["done"])
        done.stop()
        try await doneTask.value
        #expect(try await consumerNames(client) == [])
        // This one stops with an entry pending (its handler fails, the retry is far off): kept.
        let failing = StreamConsumer(client: client, configuration: testConfiguration(name: "failing", retryDelay: .seconds(30)), logger: quietLogger)
        let failingTask = start(failing) { _ in throw Boom(description: "not now") }
        try await addGatewayEntry(client, body: "b")
        #expect(try await eventually { failing.statistics.failures == 1 })
        failing.stop()
        try await failingTask.value
        #expect(try await consumerNames(client) == ["failing"])
        #expect(try await pendingCount(client) == 1)
        await client.shutdown()
    }

    @Test func idleConsumersWithNothingPendingAreRemovedByTheClaimPass() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        _ = try await client.execute(XGROUPCREATE(key: "OUT", group: "svc", id: "$", makeStream: true))
        // A crashed replica whose entries were taken over (nothing pending), and one still holding one.
        _ = try await client.execute(RawCommand("XGROUP", "CREATECONSUMER", "OUT", "svc", "gone"))
        try await addGatewayEntry(client, body: "held")
        _ = try await client.execute(RawCommand("XREADGROUP", "GROUP", "svc", "holding", "COUNT", "1", "STREAMS", "OUT", ">"))
        var configuration = testConfiguration(name: "live", claimInterval: .milliseconds(50))
        configuration.removeIdleConsumersAfter = .milliseconds(300)
        let consumer = StreamConsumer(client: client, configuration: configuration, logger: quietLogger)
        let task = start(consumer) { _ in }
        // Its name exists once it read an entry (Redis 7.0 creates none for a read that blocks).
        try await addGatewayEntry(client, body: "work")
        #expect(try await eventually { consumer.statistics.processed == 1 })
        #expect(try await eventually { consumer.statistics.consumersRemoved == 1 })
        let names = try await consumerNames(client)
        #expect(names == ["holding", "live"], "\(names)")
        // "work" is acknowledged (maybe just after it counted as processed); "held" stays pending.
        #expect(try await eventually { try await client.execute(XPENDINGRANGE(key: "OUT", group: "svc", count: 10)).map(\.consumer) == ["holding"] })
        // A later sweep (it removes another idle name) keeps the holder and the live consumer.
        _ = try await client.execute(RawCommand("XGROUP", "CREATECONSUMER", "OUT", "svc", "gone-too"))
        #expect(try await eventually { consumer.statistics.consumersRemoved == 2 })
        #expect(try await consumerNames(client) == ["holding", "live"])
        consumer.stop()
        try await task.value
        await client.shutdown()
    }
}
