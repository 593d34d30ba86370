import Logging
import NIOConcurrencyHelpers
import NIOCore
import Redis
import RedisServerTesting
import SwitchboardKit
import SwitchboardWire
import Testing

/// The ``StreamConsumer`` when Redis refuses or loses what it does: a dead-letter refused, a
/// batch cut by a restart, a deep pending list.
/// Adds an entry of 4,100 fields (`message: wide`): too many for the dead-letter script's `unpack`.
private func addWideEntry(_ client: RedisClient) async throws -> String {
    var wide: [(name: String, value: RedisArgument)] = [("message", "wide")]
    for n in 0..<4_100 { wide.append(("f\(n)", "v")) }
    return try await client.execute(XADD(key: "OUT", fields: wide))
}

@Suite("StreamConsumer under faults", .enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct StreamConsumerFaultTests {
    /// A dead-letter Redis refused (here the dead-letter key holds a string: `WRONGTYPE`)
    /// ended the session, and the next one met the same entry first: the consumer never read
    /// again. Now the entry stays pending, the next ones are handled, and it is dead-lettered
    /// once Redis takes it. An entry of 4,100 fields, too many for the script's `unpack`, is
    /// dead-lettered too. With a retry delay of 0 the refused entries were retried in a loop
    /// that never read new entries: they are a second apart at least.
    @Test func aRefusedDeadLetterDoesNotStopTheConsumer() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        _ = try await client.execute(XGROUPCREATE(key: "OUT", group: "svc", id: "$", makeStream: true))
        _ = try await client.execute(RawCommand("SET", "OUT:dead", "not a stream"))
        let poison = try await addGatewayEntry(client, body: "poison")
        let wideID = try await addWideEntry(client)
        let handled = NIOLockedValueBox<[String]>([])
        let consumer = StreamConsumer(
            client: client, configuration: testConfiguration(retryDelay: .zero, maxDeliveries: 1), logger: quietLogger)
        let task = start(consumer) { message in
            if message.bodyString == "poison" || message.bodyString == "wide" { throw Boom(description: "cannot") }
            handled.withLockedValue { $0.append(message.bodyString) }
        }
        #expect(try await eventually { consumer.statistics.deadLetterFailures >= 2 })
        // Read after the refusals: the consumer still reads new entries.
        try await addGatewayEntry(client, body: "fine")
        #expect(try await eventually { handled.withLockedValue { $0 } == ["fine"] })
        // Both still pending, neither lost.
        #expect(try await eventually { try await client.execute(XPENDINGRANGE(key: "OUT", group: "svc", count: 10)).map(\.id) == [poison, wideID] })

        _ = try await client.execute(RawCommand("DEL", "OUT:dead"))
        #expect(try await eventually { try await client.execute(XLEN(key: "OUT:dead")) == 2 })
        #expect(try await eventually { try await pendingCount(client) == 0 })
        let dead = try [RedisStreamEntry](fromRESP: try await client.execute(RawCommand("XRANGE", "OUT:dead", "-", "+")))
        // Each is retried when its own delay is over: in either order.
        #expect(Set(dead.compactMap { $0[field: "original-id"].map { String(buffer: $0) } }) == [poison, wideID])
        #expect(dead.first { $0[field: "original-id"].map { String(buffer: $0) } == wideID }?.fields.count == 4_101 + 5)
        consumer.stop()
        try await task.value
        await client.shutdown()
    }

    /// Redis restarted (with its append-only file) while a handler ran: the entry's `XACK`
    /// failed and the session ended, with the rest of its batch unstarted but counted by
    /// `XREADGROUP … >`. With a limit of one attempt they were dead-lettered unhandled when
    /// Redis came back. The next session gives their attempt back first.
    @Test func entriesNotStartedWhenRedisRestartsKeepTheirAttempts() async throws {
        let server = try await RedisServerProcess.start(["--appendonly", "yes", "--appendfsync", "always"])
        defer { server.stop() }
        let client = try await server.client()
        _ = try await client.execute(XGROUPCREATE(key: "OUT", group: "svc", id: "$", makeStream: true))
        var ids: [String] = []
        for n in 0..<3 { ids.append(try await addGatewayEntry(client, body: "job\(n)")) }
        let messages = NIOLockedValueBox<[String]>([])
        var logger = Logger(label: "kit-test") { _ in RecordingLogHandler(messages: messages) }
        logger.logLevel = .warning
        let handled = NIOLockedValueBox<[IncomingMessage]>([])
        let consumer = StreamConsumer(client: client, configuration: testConfiguration(name: "stable", maxDeliveries: 1), logger: logger)
        let task = start(consumer) { message in
            // Redis dies under the first handler call: its XACK fails, on both connections.
            if handled.withLockedValue({ $0.isEmpty }) { server.kill() }
            handled.withLockedValue { $0.append(message) }
        }
        #expect(
            try await eventually {
                messages.withLockedValue { $0.contains("stream consumer connection failed; reconnecting") }
            })
        try await server.launch()
        #expect(try await eventually { handled.withLockedValue { $0.count } == 3 }, "\(handled.withLockedValue { $0.map(\.id) })")
        // The test's own client may still be reconnecting (its backoff): not connected is "not yet".
        #expect(try await eventually { (try? await pendingCount(client)) == 0 })
        #expect(handled.withLockedValue { $0.map(\.id) } == ids)
        #expect(handled.withLockedValue { $0.map(\.deliveryCount) } == [1, 1, 1])
        #expect(try await client.execute(XLEN(key: "OUT:dead")) == 0)
        consumer.stop()
        try await task.value
        await client.shutdown()
    }

    /// A stop after the reading connection was lost under a handler: the batch went on through
    /// the client's connection (renewal, acknowledgement), but the attempts of the entries not
    /// started were given back on the lost connection only, which failed, and nothing tried
    /// again (no next session after a stop): with a limit of one attempt they were
    /// dead-lettered unhandled. They are given back on the client's connection now.
    @Test func entriesNotStartedAtAStopAfterTheConnectionWasLostKeepTheirAttempts() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        try await expectEntriesNotStartedAtAStopKeepTheirAttempts(on: server) { server in
            // Every connection but the killer's: the consumer's reading one among them (the
            // client's own reconnects by itself).
            let killer = try await server.connect()
            _ = try await killer.execute(RawCommand("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))
            await killer.close()
        }
    }

    /// A stop while Redis is away, with a handled entry to acknowledge and the attempts of the
    /// entries not started to give back: the two waited for the client's reconnect wait one
    /// after the other (twice the wait). They wait side by side now: both are held at once.
    @Test func aStopWhileRedisIsAwayWaitsForItOnceForBothSettlements() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client { $0.reconnectWait = .seconds(5) }
        _ = try await client.execute(XGROUPCREATE(key: "OUT", group: "svc", id: "$", makeStream: true))
        for n in 0..<3 { try await addGatewayEntry(client, body: "job\(n)") }
        let (gate, release) = AsyncStream.makeStream(of: Void.self)
        let started = NIOLockedValueBox(0)
        // No renewal within the test (every 20 s): only the stop's commands wait.
        let consumer = StreamConsumer(client: client, configuration: testConfiguration(claimMinIdle: .seconds(60)), logger: quietLogger)
        let task = start(consumer) { _ in
            started.withLockedValue { $0 += 1 }
            for await _ in gate {}
        }
        #expect(try await eventually { started.withLockedValue { $0 } == 1 })
        server.kill()
        // Seen down: a command written on the dead socket before would fail at once, not wait.
        #expect(try await eventually { client.connectionState(.commands) != .connected })
        consumer.stop()
        release.finish()
        // The handled entry's XACK fails after the wait; then the stop's XACK and give-back wait together.
        #expect(try await eventually(timeout: .seconds(30)) { client.waitingCommands == 2 })
        try await task.value
        #expect(started.withLockedValue { $0 } == 1)
        await client.shutdown()
    }

    /// 2,000 pending entries being handled (not idle) ahead of 1,000 idle ones of a crashed
    /// replica: a claim pass scans 10 rounds of 10 × `batchSize` (1,600 here), and started
    /// from the beginning each time, so the idle ones were never claimed while the others
    /// stayed busy. The next pass now goes on where the last one stopped.
    @Test func idleEntriesBehindADeepPendingListAreClaimed() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        _ = try await client.execute(XGROUPCREATE(key: "OUT", group: "svc", id: "$", makeStream: true))
        var ids: [String] = []
        for n in 0..<3_000 { ids.append(try await client.execute(XADD(key: "OUT", fields: [("message", .string("job\(n)"))]))) }
        _ = try await client.execute(XREADGROUP(group: "svc", consumer: "busy", count: 3_000, streams: [("OUT", ">")]))
        // The last 1,000 were a crashed replica's, idle for a minute.
        for start in stride(from: 2_000, to: 3_000, by: 100) {
            let arguments: [RedisArgument] = ["XCLAIM", "OUT", "svc", "crashed", "0"] + ids[start..<start + 100].map { .string($0) } + ["IDLE", "60000", "JUSTID"]
            _ = try await client.execute(RawCommand(arguments: arguments))
        }
        let handled = NIOLockedValueBox<Set<String>>([])
        let consumer = StreamConsumer(
            client: client, configuration: testConfiguration(name: "rescuer", claimMinIdle: .seconds(30), claimInterval: .milliseconds(20)),
            logger: quietLogger)
        let task = start(consumer) { message in _ = handled.withLockedValue { $0.insert(message.id) } }
        #expect(try await eventually { handled.withLockedValue { $0.count } == 1_000 }, "\(handled.withLockedValue { $0.count })")
        let allIdle = handled.withLockedValue { $0 } == Set(ids[2_000...])
        #expect(allIdle)
        consumer.stop()
        try await task.value
        await client.shutdown()
    }

    /// `stop()` while a read is blocked closed the connection under `XREADGROUP`: a batch Redis
    /// delivered just then was lost with the reply (its entries pending, an attempt counted,
    /// until a claim). The read is ended with `CLIENT UNBLOCK`, which Redis answers in order.
    @Test func stopEndsABlockedReadWithClientUnblock() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        var configuration = testConfiguration()
        configuration.blockTime = .seconds(30)  // blocked for the whole test: stop() finds it so
        let consumer = StreamConsumer(client: client, configuration: configuration, logger: quietLogger)
        let task = start(consumer) { _ in }
        try #require(try await waitUntilBlockedReaders(1, client))
        consumer.stop()
        try await task.value
        let stats = try String(fromRESP: try await client.execute(RawCommand("INFO", "commandstats")))
        #expect(stats.contains("cmdstat_client|unblock:calls=1,"), "\(stats)")
        await client.shutdown()
    }

    /// Redis not answering (stopped) when the consumer is asked to stop: `stop()` waited for
    /// `CLIENT UNBLOCK`'s command timeout (30 s here), then for the read's own. It gives the
    /// unblock half a second now, then closes the connection.
    @Test func stopReturnsWhileRedisDoesNotAnswer() async throws {
        let server = try await RedisServerProcess.start()
        defer {
            server.resume()
            server.stop()
        }
        let client = try await server.client { $0.commandTimeout = .seconds(30) }
        var configuration = testConfiguration()
        configuration.blockTime = .seconds(30)
        let consumer = StreamConsumer(client: client, configuration: configuration, logger: quietLogger)
        let task = start(consumer) { _ in }
        try #require(try await waitUntilBlockedReaders(1, client))
        server.pause()
        let started = ContinuousClock.now
        consumer.stop()
        try await task.value
        // Far below the 30 s a wait for Redis takes, whatever the machine's load.
        #expect(ContinuousClock.now - started < .seconds(15))
        server.resume()
        await client.shutdown()
    }

    /// A dead-letter the two-step way (an entry too wide for the script) whose `XACK` Redis
    /// refused (an ACL without it) added another copy to the dead-letter stream at every try.
    /// A later try only acknowledges it.
    @Test func aDeadLetterWhoseAcknowledgementFailedIsAddedOnce() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        _ = try await client.execute(XGROUPCREATE(key: "OUT", group: "svc", id: "$", makeStream: true))
        let wideID = try await addWideEntry(client)
        _ = try await client.execute(RawCommand("ACL", "SETUSER", "default", "-xack"))
        let consumer = StreamConsumer(client: client, configuration: testConfiguration(maxDeliveries: 1), logger: quietLogger)
        let task = start(consumer) { _ in throw Boom(description: "cannot") }
        #expect(try await eventually { consumer.statistics.deadLetterFailures >= 2 })
        _ = try await client.execute(RawCommand("ACL", "SETUSER", "default", "+xack"))
        #expect(try await eventually { try await pendingCount(client) == 0 })
        let dead = try [RedisStreamEntry](fromRESP: try await client.execute(RawCommand("XRANGE", "OUT:dead", "-", "+")))
        #expect(dead.compactMap { $0[field: "original-id"].map { String(buffer: $0) } } == [wideID])
        consumer.stop()
        try await task.value
        await client.shutdown()
    }

    /// Fields set after `init` were used as they were: a batch size of 0 made every `XAUTOCLAIM`
    /// fail, a negative dead-letter length every dead-letter. The consumer runs with them
    /// within their bounds.
    @Test func fieldsSetAfterInitAreBounded() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        var configuration = StreamConsumerConfiguration(stream: "s", group: "g")
        configuration.batchSize = 0
        configuration.claimMinIdle = .zero
        configuration.maxDeliveries = 0
        configuration.deadLetterMaxLength = -5
        configuration.retryDelay = .seconds(Int64.max)
        let bounded = StreamConsumer(client: client, configuration: configuration, logger: quietLogger).configuration
        #expect(bounded.batchSize == 1 && bounded.claimMinIdle == .milliseconds(1) && bounded.maxDeliveries == 1)
        #expect(bounded.deadLetterMaxLength == 1)
        #expect(bounded.retryDelay == .seconds(365 * 24 * 3600))
        #expect(bounded.delayBeforeRetry(afterAttempt: 3) == bounded.claimMinIdle / 2)
        await client.shutdown()
    }
}
