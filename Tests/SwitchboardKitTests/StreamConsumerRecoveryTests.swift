import NIOConcurrencyHelpers
import NIOCore
import Redis
import RedisServerTesting
import SwitchboardCore
import SwitchboardRedis
import SwitchboardRoutes
import SwitchboardWire
import Testing

@testable import SwitchboardKit

@Suite("StreamConsumer: lost groups and slow replicas", .enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
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

    /// How a consumer loses touch while its handler runs.
    enum Interruption { case readingConnectionKilled, runCancelled }

    /// The hold on an entry whose handler runs (for less than `claimMinIdle`) lasts as long as the
    /// handler, although the reading connection is lost (`CLIENT KILL`: the renewals go on on the
    /// client's connection) or `run` is cancelled (the renewal is not cancelled with it): a
    /// replica scanning for idle entries all the time never takes it over, so it is handled once.
    /// Before, the renewals stopped with the connection or the cancellation, and the entry, last
    /// renewed when the batch was read, became claimable while its handler still ran.
    @Test(arguments: [Interruption.readingConnectionKilled, .runCancelled])
    func aHandlerKeepsItsEntryWhenTheConsumerLosesTouch(_ interruption: Interruption) async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        _ = try await client.execute(XGROUPCREATE(key: "OUT", group: "svc", id: "0", makeStream: true))
        try await addGatewayEntry(client, body: "first")
        try await addGatewayEntry(client, body: "second")
        let claimMinIdle = Duration.seconds(3)
        let calls = NIOLockedValueBox<[String: Int]>([:])
        let secondStarted = NIOLockedValueBox(false)
        let secondDone = NIOLockedValueBox(false)
        let takenOver = NIOLockedValueBox(false)
        let a = StreamConsumer(client: client, configuration: testConfiguration(name: "holder", claimMinIdle: claimMinIdle), logger: quietLogger)
        // One batch of two: "second" starts half a second after the batch was read (its hold's
        // last renewal), then runs 2.9 s, under claimMinIdle but past the read + claimMinIdle.
        let aTask = start(a) { message in
            calls.withLockedValue { $0[message.bodyString, default: 0] += 1 }
            guard message.bodyString == "second" else {
                try? await Task.sleep(for: .milliseconds(500))
                return
            }
            secondStarted.withLockedValue { $0 = true }
            let clock = ContinuousClock()
            let end = clock.now + .milliseconds(2_900)
            while clock.now < end, !takenOver.withLockedValue({ $0 }) { try? await Task.sleep(for: .milliseconds(20)) }
            secondDone.withLockedValue { $0 = true }
        }
        #expect(try await eventually { secondStarted.withLockedValue { $0 } })
        switch interruption {
        case .readingConnectionKilled:
            _ = try await client.execute(RawCommand(arguments: ["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]))
        case .runCancelled:
            aTask.cancel()
        }
        let b = StreamConsumer(
            client: client,
            configuration: testConfiguration(name: "scanner", claimMinIdle: claimMinIdle, claimInterval: .milliseconds(100)),
            logger: quietLogger
        )
        let bTask = start(b) { message in
            calls.withLockedValue { $0[message.bodyString, default: 0] += 1 }
            if message.bodyString == "second" { takenOver.withLockedValue { $0 = true } }
        }
        #expect(try await eventually { secondDone.withLockedValue { $0 } })
        #expect(try await eventually { try await pendingCount(client) == 0 })
        #expect(!takenOver.withLockedValue { $0 }, "taken over while its handler ran")
        #expect(calls.withLockedValue { $0 } == ["first": 1, "second": 1])
        #expect(b.statistics.claimed == 0)
        a.stop()
        b.stop()
        try await aTask.value
        try await bTask.value
        await client.shutdown()
    }

    /// A failed entry is tried again after a delay that doubles with each failed attempt (a
    /// fixed delay used up five attempts of an entry within seconds of a dependency's outage),
    /// and an entry waiting for its retry holds back no other.
    @Test func retriesOfAnEntryBackOff() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let attempts = NIOLockedValueBox<[ContinuousClock.Instant]>([])
        let handledWhileBackingOff = NIOLockedValueBox(false)
        let consumer = StreamConsumer(
            client: client, configuration: testConfiguration(retryDelay: .milliseconds(200), maxDeliveries: 5), logger: quietLogger)
        let task = start(consumer) { message in
            guard message.bodyString == "failing" else {
                handledWhileBackingOff.withLockedValue { $0 = attempts.withLockedValue { $0.count } < 5 }
                return
            }
            attempts.withLockedValue { $0.append(.now) }
            throw Boom(description: "down")
        }
        try #require(try await waitUntilReading(consumer, client))
        try await addGatewayEntry(client, body: "failing")
        #expect(try await eventually { attempts.withLockedValue { $0.count } >= 2 })
        try await addGatewayEntry(client, body: "other")
        #expect(try await eventually { try await client.execute(XLEN(key: "OUT:dead")) == 1 })
        let times = attempts.withLockedValue { $0 }
        #expect(times.count == 5)
        let gaps = zip(times.dropFirst(), times).map { $0 - $1 }
        for (gap, least) in zip(gaps, [200, 400, 800, 1_600]) {
            #expect(gap >= .milliseconds(least), "gaps between attempts: \(gaps)")
        }
        #expect(handledWhileBackingOff.withLockedValue { $0 }, "the other entry waited for the failing one")
        consumer.stop()
        try await task.value
        await client.shutdown()
    }

    /// The delay doubles from `retryDelay`, up to `retryDelayMaximum` and `claimMinIdle / 2`.
    @Test func retryDelaysDoubleUpToTheirCaps() {
        let configuration = StreamConsumerConfiguration(
            stream: "s", group: "g", claimMinIdle: .seconds(30), retryDelay: .seconds(1), retryDelayMaximum: .seconds(5))
        #expect((1...5).map { configuration.delayBeforeRetry(afterAttempt: $0) } == [1, 2, 4, 5, 5].map { Duration.seconds($0) })
        let shortIdle = StreamConsumerConfiguration(stream: "s", group: "g", claimMinIdle: .seconds(4), retryDelay: .seconds(1))
        #expect((1...3).map { shortIdle.delayBeforeRetry(afterAttempt: $0) } == [1, 2, 2].map { Duration.seconds($0) })
        #expect(StreamConsumerConfiguration(stream: "s", group: "g").delayBeforeRetry(afterAttempt: 100) == .seconds(15))
    }

    /// Past the limit of retry times kept, those due already go first, then the ones due first
    /// (before, the whole map went, and every waiting entry was retried at once).
    @Test func retryTimesArePrunedByDueTime() {
        let now = ContinuousClock.now
        var times: [String: ContinuousClock.Instant] = [:]
        for i in 0..<5 { times["due-\(i)"] = now - .seconds(1) }
        for i in 0..<20 { times["waiting-\(i)"] = now + .seconds(i + 1) }
        #expect(StreamConsumer.pruned(times, at: now, limit: 30).keys.sorted() == (0..<20).map { "waiting-\($0)" }.sorted())
        let kept = StreamConsumer.pruned(times, at: now, limit: 10)
        #expect(kept.keys.sorted() == (11..<20).map { "waiting-\($0)" }.sorted(), "the latest due are kept")
    }

    /// An entry whose handler ends after the reading connection was lost is acknowledged on the
    /// client's connection. Before, its `XACK` failed with the connection and the entry stayed
    /// pending until this consumer was back: a replica could take it over meanwhile and handle it
    /// again (a loaded run of the test above did). Here the consumer is stopped before the handler
    /// ends, so it is not back at all.
    @Test func anEntryHandledAfterTheReadingConnectionWasLostIsAcknowledged() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        _ = try await client.execute(XGROUPCREATE(key: "OUT", group: "svc", id: "0", makeStream: true))
        try await addGatewayEntry(client, body: "only")
        let started = NIOLockedValueBox(false)
        let released = NIOLockedValueBox(false)
        let calls = NIOLockedValueBox(0)
        let consumer = StreamConsumer(client: client, configuration: testConfiguration(name: "holder"), logger: quietLogger)
        let task = start(consumer) { _ in
            calls.withLockedValue { $0 += 1 }
            started.withLockedValue { $0 = true }
            while !released.withLockedValue({ $0 }) { try? await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(try await eventually { started.withLockedValue { $0 } })
        _ = try await client.execute(RawCommand(arguments: ["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]))
        consumer.stop()
        released.withLockedValue { $0 = true }
        try await task.value
        #expect(try await pendingCount(client) == 0, "acknowledged although the reading connection was gone")
        #expect(calls.withLockedValue { $0 } == 1)
        #expect(consumer.statistics.processed == 1)
        await client.shutdown()
    }

    /// An entry trimmed from the stream (the route's max-length) after this consumer read it, while
    /// it waits in the batch, is still handled: the consumer has its fields, and a renewal meanwhile
    /// keeps it (before, the renewal's `XCLAIM` dropped it from the pending list and the consumer
    /// skipped it, logged at debug level only).
    @Test func anEntryTrimmedAfterItWasReadIsStillHandled() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        _ = try await client.execute(XGROUPCREATE(key: "OUT", group: "svc", id: "0", makeStream: true))
        try await addGatewayEntry(client, body: "first")
        try await addGatewayEntry(client, body: "second")
        let seen = NIOLockedValueBox<[String]>([])
        let firstStarted = NIOLockedValueBox(false)
        let trimmed = NIOLockedValueBox(false)
        // Renewals every 0.5 s: "first" waits for the trim, then outlasts a renewal.
        let consumer = StreamConsumer(
            client: client, configuration: testConfiguration(name: "reader", claimMinIdle: .milliseconds(1_500)), logger: quietLogger)
        let task = start(consumer) { message in
            seen.withLockedValue { $0.append(message.bodyString) }
            guard message.bodyString == "first" else { return }
            firstStarted.withLockedValue { $0 = true }
            while !trimmed.withLockedValue({ $0 }) { try? await Task.sleep(for: .milliseconds(10)) }
            try? await Task.sleep(for: .milliseconds(1_100))
        }
        #expect(try await eventually { firstStarted.withLockedValue { $0 } })
        _ = try await client.execute(RawCommand("XTRIM", "OUT", "MAXLEN", "0"))
        trimmed.withLockedValue { $0 = true }
        #expect(try await eventually { seen.withLockedValue { $0 } == ["first", "second"] })
        #expect(try await eventually { try await pendingCount(client) == 0 })
        #expect(consumer.statistics.trimmed == 0)
        #expect(consumer.statistics.processed == 2)
        consumer.stop()
        try await task.value
        await client.shutdown()
    }

    /// An entry taken again from the consumer's own pending list, trimmed from the stream after
    /// it was read, whose handler then fails: counting the attempt (`XCLAIM`) dropped it from the
    /// pending list (Redis 7), so it was neither retried nor counted as trimmed, only as a failure.
    @Test func aRetriedEntryTrimmedAfterItWasReadAndFailingIsCountedAsTrimmed() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        _ = try await client.execute(XGROUPCREATE(key: "OUT", group: "svc", id: "0", makeStream: true))
        try await addGatewayEntry(client, body: "first")
        let second = try await addGatewayEntry(client, body: "second")
        // Both pending for "r" already (a session of "r" that ended before handling them).
        _ = try await client.execute(RawCommand("XREADGROUP", "GROUP", "svc", "r", "STREAMS", "OUT", ">"))
        let release = NIOLockedValueBox(false)
        let firstStarted = NIOLockedValueBox(false)
        let consumer = StreamConsumer(client: client, configuration: testConfiguration(name: "r"), logger: quietLogger)
        let task = start(consumer) { message in
            if message.bodyString == "first" {
                firstStarted.withLockedValue { $0 = true }
                while !release.withLockedValue({ $0 }) { try? await Task.sleep(for: .milliseconds(10)) }
                return
            }
            throw Boom(description: "second fails")
        }
        #expect(try await eventually { firstStarted.withLockedValue { $0 } })
        _ = try await client.execute(RawCommand("XDEL", "OUT", .string(second)))
        release.withLockedValue { $0 = true }
        #expect(try await eventually { consumer.statistics.trimmed == 1 }, "\(consumer.statistics)")
        #expect(try await eventually { try await pendingCount(client) == 0 })
        consumer.stop()
        try await task.value
        await client.shutdown()
    }

    /// A consumer restarted under the same name finds one of its pending entries trimmed from the
    /// stream: it counts it as lost (`statistics.trimmed`, logged at warning) and acknowledges it.
    /// Before, the renewal's `XCLAIM` dropped it from the pending list, uncounted.
    @Test func aRestartedConsumerCountsItsPendingEntryTrimmedMeanwhile() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let first = StreamConsumer(client: client, configuration: testConfiguration(name: "same", retryDelay: .seconds(60)), logger: quietLogger)
        let failed = NIOLockedValueBox(0)
        let firstTask = start(first) { _ in
            failed.withLockedValue { $0 += 1 }
            throw Boom(description: "down")
        }
        try #require(try await waitUntilReading(first, client))
        try await addGatewayEntry(client, body: "lost")
        #expect(try await eventually { failed.withLockedValue { $0 } == 1 })
        first.stop()
        try await firstTask.value
        _ = try await client.execute(RawCommand("XTRIM", "OUT", "MAXLEN", "0"))
        #expect(try await pendingCount(client) == 1)

        let handled = NIOLockedValueBox(0)
        let second = StreamConsumer(client: client, configuration: testConfiguration(name: "same"), logger: quietLogger)
        let secondTask = start(second) { _ in handled.withLockedValue { $0 += 1 } }
        #expect(try await eventually { second.statistics.trimmed == 1 })
        #expect(try await eventually { try await pendingCount(client) == 0 })
        #expect(handled.withLockedValue { $0 } == 0)
        second.stop()
        try await secondTask.value
        await client.shutdown()
    }
}
