import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Redis
import RedisServerTesting
import STOMPCodec
import SwitchboardKit
import SwitchboardWire
import Testing

@Suite("StreamConsumer against a real redis-server", .enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct StreamConsumerTests {
    @Test func createsGroupHandlesGatewayEntryAndAcksAfterHandler() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let consumer = StreamConsumer(client: client, configuration: testConfiguration(name: "replica-a"), logger: quietLogger)
        let received = NIOLockedValueBox<[IncomingMessage]>([])
        let pendingDuringHandler = NIOLockedValueBox<[Int]>([])
        let task = start(consumer) { message in
            // Not acknowledged yet while the handler runs.
            pendingDuringHandler.withLockedValue { $0.append(-1) }
            let pending = try await pendingCount(client)
            pendingDuringHandler.withLockedValue { $0 = [pending] }
            received.withLockedValue { $0.append(message) }
        }
        try #require(try await waitUntilReading(consumer, client))
        // The group now exists: creating it again is fine (BUSYGROUP).
        try await consumer.createGroup()

        let id = try await addGatewayEntry(client, body: "World", headers: ["x-msg-id": "m-1", "x-trace": "t"])
        #expect(try await eventually { received.withLockedValue { $0.count } == 1 })
        #expect(try await eventually { try await pendingCount(client) == 0 })
        #expect(pendingDuringHandler.withLockedValue { $0 } == [1])

        let message = try #require(received.withLockedValue { $0.first })
        #expect(message.id == id)
        #expect(message.stream == "OUT")
        #expect(message.destination == "/app/greet")
        #expect(message.bodyString == "World")
        #expect(message.contentType == "text/plain")
        #expect(message.session == "sess-1")
        #expect(message.user == "alice")
        #expect(message.instance == "gw-1")
        #expect(message.timestamp == 1_700_000_000_123)
        #expect(message.headers["x-msg-id"] == "m-1" && message.headers["x-trace"] == "t" && message.headers.count == 2)
        #expect(message.deliveryCount == 1)
        #expect(try await eventually { consumer.statistics.processed == 1 })  // counted just after the XACK

        consumer.stop()
        try await task.value
        await client.shutdown()
    }

    @Test func twoConsumersProcessFiftyEntriesExactlyOnce() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let seen = NIOLockedValueBox<[String: Int]>([:])
        let byB = NIOLockedValueBox(0)
        let handler: StreamConsumer.Handler = { message in
            try await Task.sleep(for: .milliseconds(2))
            seen.withLockedValue { $0[message.id, default: 0] += 1 }
        }
        // Both take part whatever the machine's load: a holds its first entry until b has
        // processed one (before, on a loaded machine a could read every entry first).
        let holdsFirst = NIOLockedValueBox(true)
        let handlerA: StreamConsumer.Handler = { message in
            if holdsFirst.withLockedValue({
                let first = $0; $0 = false; return first
            }) {
                let deadline = ContinuousClock.now + .seconds(20)
                while byB.withLockedValue({ $0 }) == 0, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
            }
            try await handler(message)
        }
        let handlerB: StreamConsumer.Handler = { message in
            try await handler(message)
            byB.withLockedValue { $0 += 1 }
        }
        // Long blocking reads: a read of a's ending during the XADDs (and a late next one) would
        // leave b alone to take everything.
        var configurationA = testConfiguration(name: "a", batchSize: 4)
        var configurationB = testConfiguration(name: "b", batchSize: 4)
        configurationA.blockTime = .seconds(30)
        configurationB.blockTime = .seconds(30)
        let a = StreamConsumer(client: client, configuration: configurationA, logger: quietLogger)
        let b = StreamConsumer(client: client, configuration: configurationB, logger: quietLogger)
        let tasks = [start(a, handlerA), start(b, handlerB)]
        try #require(try await waitUntilReading(a, client))
        try #require(try await waitUntilReading(b, client))
        // Both blocked in XREADGROUP before the first entry: Redis serves blocked readers in the
        // order they blocked, so a gets an entry even if b is first (b is busy with it when the next
        // one arrives). Before, a loaded machine could delay a's first read until b had read all.
        try #require(try await waitUntilBlockedReaders(2, client))

        var ids: [String] = []
        for n in 0..<50 { ids.append(try await addGatewayEntry(client, body: "n\(n)")) }
        #expect(try await eventually { seen.withLockedValue { $0.values.reduce(0, +) } >= 50 })
        try await Task.sleep(for: .milliseconds(300))  // give duplicates a chance to show up
        let counts = seen.withLockedValue { $0 }
        #expect(Set(counts.keys) == Set(ids))
        #expect(counts.values.allSatisfy { $0 == 1 })
        #expect(try await eventually { a.statistics.processed + b.statistics.processed == 50 })
        #expect(a.statistics.processed > 0 && b.statistics.processed > 0)
        #expect(try await eventually { try await pendingCount(client) == 0 })

        a.stop()
        b.stop()
        for task in tasks { try await task.value }
        await client.shutdown()
    }

    @Test func failuresAreRetriedThenDeadLettered() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let attempts = NIOLockedValueBox<[String: [Int]]>([:])
        let consumer = StreamConsumer(client: client, configuration: testConfiguration(maxDeliveries: 3), logger: quietLogger)
        let task = start(consumer) { message in
            let tries = attempts.withLockedValue { state -> Int in
                state[message.bodyString, default: []].append(message.deliveryCount ?? -1)
                return state[message.bodyString]!.count
            }
            if message.bodyString == "poison" { throw Boom(description: "cannot greet poison (try \(tries))") }
            if message.bodyString == "flaky", tries < 3 { throw Boom(description: "flaky") }
        }
        try #require(try await waitUntilReading(consumer, client))

        let poisonID = try await addGatewayEntry(client, body: "poison", headers: ["x-msg-id": "p-1"])
        try await addGatewayEntry(client, body: "flaky")
        #expect(try await eventually { try await client.execute(XLEN(key: "OUT:dead")) == 1 })
        #expect(try await eventually { try await pendingCount(client) == 0 })

        let tries = attempts.withLockedValue { $0 }
        #expect(tries["poison"] == [1, 2, 3])
        #expect(tries["flaky"] == [1, 2, 3])
        // Counted just after the XACK: wait for the counters, not only for Redis.
        #expect(
            try await eventually {
                let stats = consumer.statistics
                return stats.deadLettered == 1 && stats.processed == 1 && stats.failures == 5
            })
        let stats = consumer.statistics
        #expect(stats.deadLettered == 1 && stats.processed == 1 && stats.failures == 5)

        let dead = try [RedisStreamEntry](fromRESP: try await client.execute(RawCommand("XRANGE", "OUT:dead", "-", "+")))
        let entry = try #require(dead.first)
        #expect(entry[field: "original-id"].map { String(buffer: $0) } == poisonID)
        #expect(entry[field: "deliveries"].map { String(buffer: $0) } == "3")
        #expect(entry[field: "last-error"].map { String(buffer: $0) } == "cannot greet poison (try 3)")
        #expect(entry[field: "message"].map { String(buffer: $0) } == "poison")
        #expect(entry[field: "destination"].map { String(buffer: $0) } == "/app/greet")
        #expect(entry[field: "x-msg-id"].map { String(buffer: $0) } == "p-1")

        consumer.stop()
        try await task.value
        await client.shutdown()
    }

    @Test func entryBeyondDeliveryLimitIsDeadLetteredWithoutHandling() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        _ = try await client.execute(XGROUPCREATE(key: "OUT", group: "svc", id: "$", makeStream: true))
        let id = try await addGatewayEntry(client, body: "crasher")
        // Two replicas "crashed" while handling it: delivered twice, never acknowledged.
        _ = try await client.execute(XREADGROUP(group: "svc", consumer: "dead-1", count: 1, streams: [("OUT", ">")]))
        _ = try await client.execute(RawCommand("XCLAIM", "OUT", "svc", "dead-2", "0", .string(id)))
        let pending = try await client.execute(XPENDINGRANGE(key: "OUT", group: "svc", count: 10))
        #expect(pending.map(\.deliveryCount) == [2])
        let handled = NIOLockedValueBox(0)
        let consumer = StreamConsumer(
            client: client, configuration: testConfiguration(claimMinIdle: .milliseconds(1), maxDeliveries: 2), logger: quietLogger
        )
        let task = start(consumer) { _ in handled.withLockedValue { $0 += 1 } }
        #expect(try await eventually { try await client.execute(XLEN(key: "OUT:dead")) == 1 })
        #expect(try await eventually { try await pendingCount(client) == 0 })
        #expect(handled.withLockedValue { $0 } == 0)
        consumer.stop()
        try await task.value
        await client.shutdown()
    }

    @Test func idleEntriesOfACrashedConsumerAreClaimed() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        _ = try await client.execute(XGROUPCREATE(key: "OUT", group: "svc", id: "$", makeStream: true))
        var ids: [String] = []
        for n in 0..<5 { ids.append(try await addGatewayEntry(client, body: "job\(n)")) }
        // Consumer A reads all five in one batch and hangs in its handler (a stuck or crashed replica).
        let (gate, release) = AsyncStream.makeStream(of: Void.self)
        let aStarted = NIOLockedValueBox(0)
        let a = StreamConsumer(client: client, configuration: testConfiguration(name: "replica-a"), logger: quietLogger)
        let aTask = start(a) { _ in
            aStarted.withLockedValue { $0 += 1 }
            for await _ in gate {}
            throw Boom(description: "replica-a crashed")
        }
        #expect(try await eventually { aStarted.withLockedValue { $0 } == 1 })
        let summary = try await client.execute(XPENDING(key: "OUT", group: "svc"))
        #expect(summary.count == 5 && summary.consumers.map(\.name) == ["replica-a"])

        // B takes them over once they are idle for 300 ms.
        let bSeen = NIOLockedValueBox<[IncomingMessage]>([])
        let b = StreamConsumer(
            client: client,
            configuration: testConfiguration(name: "replica-b", claimMinIdle: .milliseconds(300), claimInterval: .milliseconds(100)),
            logger: quietLogger
        )
        let bTask = start(b) { message in bSeen.withLockedValue { $0.append(message) } }
        #expect(try await eventually { bSeen.withLockedValue { $0.count } == 5 })
        #expect(try await eventually { try await pendingCount(client) == 0 })
        let seen = bSeen.withLockedValue { $0 }
        #expect(seen.map(\.id) == ids)
        #expect(seen.allSatisfy { $0.deliveryCount == 2 })
        #expect(try await eventually { b.statistics.claimed == 5 && b.statistics.processed == 5 })
        #expect(aStarted.withLockedValue { $0 } == 1)

        // Clean up A: stop it, then let its stuck handler end.
        a.stop()
        release.finish()
        try await aTask.value
        #expect(a.statistics.processed == 0)
        b.stop()
        try await bTask.value
        await client.shutdown()
    }

    /// An entry that crashes every replica in turn (each claims the batch, starts it and dies)
    /// is dead-lettered; the entries read or claimed with it were not attempted, and are handled.
    /// Re-reads and claims added one delivery to every entry they returned: the batch-mates
    /// reached the limit with the crasher and went to the dead-letter stream unhandled.
    @Test func theBatchMatesOfAnEntryThatCrashesReplicasAreHandled() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        _ = try await client.execute(XGROUPCREATE(key: "OUT", group: "svc", id: "$", makeStream: true))
        let poison = try await addGatewayEntry(client, body: "poison")
        var mates: [String] = []
        for n in 0..<3 { mates.append(try await addGatewayEntry(client, body: "job\(n)")) }
        let (gate, release) = AsyncStream.makeStream(of: Void.self)
        let started = NIOLockedValueBox<[String]>([])
        // Replicas that start the poison entry and never come back (a crash, as far as the
        // group can tell): each claims the batch once the previous one went idle. (A minimum
        // idle time of 200 ms was too short on a loaded machine: the next replica claimed the
        // entry between a claim and its attempt's count, and the poison was handled.)
        var stuck: [(StreamConsumer, Task<Void, any Error>)] = []
        for replica in ["a", "b", "c"] {
            let before = started.withLockedValue { $0.count }
            let consumer = StreamConsumer(
                client: client,
                configuration: testConfiguration(
                    name: "replica-\(replica)", claimMinIdle: .seconds(1), claimInterval: .milliseconds(50), maxDeliveries: 3),
                logger: quietLogger)
            let task = start(consumer) { message in
                started.withLockedValue { $0.append("\(replica):\(message.bodyString)") }
                for await _ in gate {}
                throw Boom(description: "crashed")
            }
            #expect(try await eventually { started.withLockedValue { $0.count } > before })
            stuck.append((consumer, task))
        }
        #expect(started.withLockedValue { $0 } == ["a:poison", "b:poison", "c:poison"])
        let handled = NIOLockedValueBox<[String]>([])
        let d = StreamConsumer(
            client: client,
            configuration: testConfiguration(name: "replica-d", claimMinIdle: .seconds(1), claimInterval: .milliseconds(50), maxDeliveries: 3),
            logger: quietLogger)
        let dTask = start(d) { message in handled.withLockedValue { $0.append(message.id) } }
        #expect(try await eventually { handled.withLockedValue { $0.count } == 3 }, "\(handled.withLockedValue { $0 })")
        #expect(handled.withLockedValue { $0 } == mates)
        let dead = try await client.execute(RawCommand("XRANGE", "OUT:dead", "-", "+"))
        let deadIDs = try [RedisStreamEntry](fromRESP: dead).compactMap { entry in
            entry.fields.first { $0.name == "original-id" }.map { String(buffer: $0.value) }
        }
        #expect(deadIDs == [poison])
        d.stop()
        try await dTask.value
        for (consumer, _) in stuck { consumer.stop() }
        release.finish()
        for (_, task) in stuck { try await task.value }
        await client.shutdown()
    }

    /// A consumer stopped in the middle of a batch: `XREADGROUP … >` had counted an attempt for
    /// every entry of it, and with a limit of one attempt the entries not started were
    /// dead-lettered unhandled at the next start. Their attempt is given back now.
    @Test func entriesNotStartedWhenAConsumerStopsKeepTheirAttempts() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        try await expectEntriesNotStartedAtAStopKeepTheirAttempts(on: server)
    }

    /// A claim interval of 0 claimed in a busy loop; a minimum idle time of 0 took every entry
    /// of the other replicas, being handled or not.
    @Test func timingsHaveFloors() {
        let configuration = StreamConsumerConfiguration(
            stream: "s", group: "g", blockTime: .zero, claimMinIdle: .zero, claimInterval: .zero, reconnectBackoffMaximum: .zero)
        #expect(configuration.claimMinIdle == .milliseconds(1) && configuration.claimInterval == .milliseconds(10))
        // Reads without a wait, reconnects without a pause: busy loops too.
        #expect(configuration.blockTime == .milliseconds(10) && configuration.reconnectBackoffMaximum == .milliseconds(100))
    }

    /// Entries trimmed from the stream while pending (the route's max-length reached while a
    /// backend was behind) are lost: counted and logged at warning, not dropped at debug level.
    @Test func pendingEntriesTrimmedAwayAreCountedAsLost() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        _ = try await client.execute(XGROUPCREATE(key: "OUT", group: "svc", id: "$", makeStream: true))
        for n in 0..<5 { _ = try await addGatewayEntry(client, body: "job\(n)") }
        let (gate, release) = AsyncStream.makeStream(of: Void.self)
        let aStarted = NIOLockedValueBox(0)
        let a = StreamConsumer(client: client, configuration: testConfiguration(name: "replica-a"), logger: quietLogger)
        let aTask = start(a) { _ in
            aStarted.withLockedValue { $0 += 1 }
            for await _ in gate {}
            throw Boom(description: "replica-a crashed")
        }
        #expect(try await eventually { aStarted.withLockedValue { $0 } == 1 })
        _ = try await client.execute(RawCommand("XTRIM", "OUT", "MAXLEN", "0"))
        let b = StreamConsumer(
            client: client,
            configuration: testConfiguration(name: "replica-b", claimMinIdle: .milliseconds(300), claimInterval: .milliseconds(100)),
            logger: quietLogger
        )
        let handled = NIOLockedValueBox(0)
        let bTask = start(b) { _ in handled.withLockedValue { $0 += 1 } }
        #expect(try await eventually { b.statistics.trimmed == 5 })
        #expect(try await eventually { try await pendingCount(client) == 0 })
        #expect(handled.withLockedValue { $0 } == 0)
        a.stop()
        release.finish()
        try await aTask.value
        b.stop()
        try await bTask.value
        await client.shutdown()
    }

    @Test func restartedConsumerResumesItsOwnPendingEntries() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let first = StreamConsumer(client: client, configuration: testConfiguration(name: "stable", retryDelay: .seconds(60)), logger: quietLogger)
        let failed = NIOLockedValueBox(0)
        let firstTask = start(first) { _ in
            failed.withLockedValue { $0 += 1 }
            throw Boom(description: "down")
        }
        try #require(try await waitUntilReading(first, client))
        let id = try await addGatewayEntry(client, body: "again")
        #expect(try await eventually { failed.withLockedValue { $0 } == 1 })
        first.stop()
        try await firstTask.value
        #expect(try await pendingCount(client) == 1)

        let handled = NIOLockedValueBox<[IncomingMessage]>([])
        let second = StreamConsumer(client: client, configuration: testConfiguration(name: "stable"), logger: quietLogger)
        let secondTask = start(second) { message in handled.withLockedValue { $0.append(message) } }
        #expect(try await eventually { handled.withLockedValue { $0.count } == 1 })
        #expect(handled.withLockedValue { $0.first?.id } == id)
        #expect(handled.withLockedValue { $0.first?.deliveryCount } == 2)
        #expect(try await eventually { try await pendingCount(client) == 0 })
        second.stop()
        try await secondTask.value
        await client.shutdown()
    }

    @Test func survivesARedisRestartAndRecreatesTheGroup() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let bodies = NIOLockedValueBox<[String]>([])
        let consumer = StreamConsumer(client: client, configuration: testConfiguration(), logger: quietLogger)
        let task = start(consumer) { message in bodies.withLockedValue { $0.append(message.bodyString) } }
        try #require(try await waitUntilReading(consumer, client))
        try await addGatewayEntry(client, body: "before")
        #expect(try await eventually { bodies.withLockedValue { $0 } == ["before"] })

        server.kill()  // the stream and the group are gone with it
        try await server.launch()
        #expect(try await eventually { consumer.statistics.connects >= 2 })
        #expect(try await eventually { (try? await pendingCount(client)) != nil })  // group re-created
        try await addGatewayEntry(client, body: "after")
        #expect(try await eventually { bodies.withLockedValue { $0 } == ["before", "after"] })
        consumer.stop()
        try await task.value
        await client.shutdown()
    }

    @Test func cancellingFinishesTheInFlightHandlerAndAcks() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let consumer = StreamConsumer(client: client, configuration: testConfiguration(), logger: quietLogger)
        let started = NIOLockedValueBox(false)
        let finished = NIOLockedValueBox(false)
        let task = start(consumer) { _ in
            started.withLockedValue { $0 = true }
            try await Task.sleep(for: .milliseconds(400))  // would throw if the cancellation reached it
            finished.withLockedValue { $0 = true }
        }
        try #require(try await waitUntilReading(consumer, client))
        try await addGatewayEntry(client, body: "slow")
        #expect(try await eventually { started.withLockedValue { $0 } })
        task.cancel()
        try await task.value
        #expect(finished.withLockedValue { $0 })
        #expect(try await eventually { consumer.statistics.processed == 1 })  // counted just after the XACK
        #expect(try await pendingCount(client) == 0)
        #expect(!consumer.isRunning)

        // An idle consumer stops promptly although its blocking read waits 30 s.
        var configuration = testConfiguration(name: "idle")
        configuration.blockTime = .seconds(30)
        let idle = StreamConsumer(client: client, configuration: configuration, logger: quietLogger)
        let idleTask = start(idle) { _ in }
        try #require(try await waitUntilReading(idle, client))
        try await Task.sleep(for: .milliseconds(100))
        let clock = ContinuousClock()
        let stopStart = clock.now
        idle.stop()
        try await idleTask.value
        #expect(clock.now - stopStart < .seconds(20), "stopped without waiting out its 30 s blocking read")
        await client.shutdown()
    }
}
