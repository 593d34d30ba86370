import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Redis
import RedisServerTesting
import STOMPCodec
import SwitchboardCore
import SwitchboardKit
import SwitchboardRedis
import SwitchboardRoutes
import SwitchboardWire
import Testing

/// Collects what a hub shard delivers to its subscriptions (from the shard's loop).
final class CollectingSink: SubscriptionSink, @unchecked Sendable {
    let received = NIOLockedValueBox<[PublishedMessage]>([])
    func deliver(_ message: PublishedMessage, to subscription: LocalSubscription, batch: inout DeliveryBatch) {
        received.withLockedValue { $0.append(message) }
    }
    func flushDeliveries() {}

    func bodies(_ destination: String) -> [String] {
        received.withLockedValue { $0.filter { $0.destination == destination }.map { String(buffer: $0.body) } }
    }
    func sequences(_ destination: String) -> [UInt64] {
        received.withLockedValue { $0.filter { $0.destination == destination }.compactMap { $0.position?.sequence } }
    }
}

/// One gateway's Redis engine on a cluster, with a hub on one loop of its own.
struct ClusterGatewayEngine {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let hub: FanoutHub
    let client: RedisClusterClient
    let engine: RedisEngine
    let sink = CollectingSink()
    var loop: any EventLoop { group.any() }

    init(cluster: RedisClusterProcess, instance: String, prefix: String) async throws {
        let loop = group.any()
        hub = FanoutHub(eventLoops: [loop])
        client = try RedisClusterClient(configuration: clusterConfiguration(cluster), eventLoopGroup: group, logger: quietLogger)
        var history = DestinationHistory.Settings()
        history.disabledPrefixes = ["/queue/plain"]
        engine = RedisEngine(
            redis: .cluster(client), hub: hub, naming: RedisChannelNaming(prefix: prefix), instanceID: instance,
            messageIDs: MessageIDGenerator(instanceID: instance), eventLoop: loop, logger: quietLogger, history: history)
        try await engine.start()
    }

    /// Subscribes `pattern` as a session would (interest in the hub), and waits until the engine
    /// says the subscription is live.
    func subscribe(_ pattern: String, id: String) async throws {
        let parsed = try DestinationPattern(pattern)
        let hub = self.hub, sink = self.sink, loop = self.loop
        try await loop.submit { hub.shard(for: loop).add(LocalSubscription(id: id, pattern: parsed, ackMode: .auto, sink: sink)) }.get()
        try await engine.subscriptionReady(parsed, on: loop)?.get()
    }

    func publish(_ destination: String, _ body: String) async throws {
        let message = PublishedMessage(destination: destination, messageID: "\(destination)-\(body)", headers: [:], body: ByteBuffer(string: body))
        try await engine.publish(message, on: loop).get()
    }

    func shutdown() async {
        await engine.shutdown()
        try? await group.shutdownGracefully()
    }
}

func clusterConfiguration(_ cluster: RedisClusterProcess) -> RedisConfiguration {
    var configuration = RedisConfiguration()
    configuration.password = cluster.password
    configuration.connectTimeout = .seconds(10)
    configuration.commandTimeout = .seconds(10)
    configuration.cluster = RedisClusterConfiguration(nodes: cluster.seeds, retryDelay: .milliseconds(50), topologyRefreshInterval: .seconds(1))
    return configuration
}

/// The gateway's Redis engine, routes and SwitchboardKit on a real Redis Cluster (3 primaries,
/// 3 replicas, made once for the suite's one test: creating a cluster takes seconds).
@Suite("Gateway on Redis Cluster", .serialized, .enabled(if: RedisClusterProcess.isAvailable, "needs redis-server, redis-cli and glibc 2.34+"))
struct ClusterGatewayTests {
    @Test func gatewayOnCluster() async throws {
        let cluster = try await RedisClusterProcess.start()
        defer { cluster.stop() }
        let a = try await ClusterGatewayEngine(cluster: cluster, instance: "gwA", prefix: "t:")
        let b = try await ClusterGatewayEngine(cluster: cluster, instance: "gwB", prefix: "t:")

        // Instances listen on their sharded instance channel.
        #expect(try await eventually { b.client.shardSubscriptions.values.contains { $0.contains("t:{instance:gwB}") } })

        try await sendKeepsOrderPerSlot(cluster)
        try await fanOutAcrossInstances(a, b)
        try await repairAfterSlotMove(cluster, a, b)
        try await publishDuringASlotMigration(cluster, a)
        try await wildcardRefused(b)
        try await kitOnCluster(cluster, b)
        try await canaryOnEveryShard(cluster)
        try await failover(cluster, a, b)
        await a.shutdown()
        await b.shutdown()
    }

    /// Commands sent one after the other (not awaited) to one slot run in that order, also the
    /// first ones, sent while the node's connection is still opening.
    func sendKeepsOrderPerSlot(_ cluster: RedisClusterProcess) async throws {
        let client = try RedisClusterClient(configuration: clusterConfiguration(cluster), logger: quietLogger)
        client.start()
        _ = try await client.refreshTopology()
        let futures = (0..<300).map { client.send(RawCommand(arguments: ["RPUSH", "{order}", .integer($0)], keys: ["{order}"])) }
        for future in futures { _ = try await future.get() }
        let items = try [String](fromRESP: try await client.execute(RawCommand(arguments: ["LRANGE", "{order}", "0", "-1"], keys: ["{order}"])))
        #expect(items == (0..<300).map(String.init))
        await client.shutdown()
    }

    /// The delivery canary watches one channel on every primary and each comes back; after the
    /// slot of `{canary}` moves to another primary, the channels are planned again on the new
    /// map: still one on every primary, all back in time.
    func canaryOnEveryShard(_ cluster: RedisClusterProcess) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let client = try RedisClusterClient(configuration: clusterConfiguration(cluster), eventLoopGroup: group, logger: quietLogger)
        client.start()
        let naming = RedisChannelNaming(prefix: "canary-test:")
        let canary = DeliveryCanary(
            redis: .cluster(client), naming: naming, instanceID: "gwC", interval: .milliseconds(100), timeout: .seconds(3), loop: group.any(),
            logger: quietLogger)
        try await canary.start()
        @Sendable func covered() async throws -> Bool {
            let topology = try #require(client.topology)
            let owners = Set(canary.watchedChannels.compactMap { topology.primary(for: HashSlot(key: $0)) })
            return canary.watchedChannels == naming.canaryChannels(for: topology).sorted() && owners == Set(topology.primaries)
                && canary.lateReason == nil && (canary.ownAge ?? 99) < 1
        }
        #expect(try await eventually { try await covered() }, "one channel on each primary, each back: \(canary.watchedChannels)")
        #expect(canary.watchedChannels.count == 3)

        let slot = HashSlot(key: naming.canaryChannel(sharded: true))
        let source = try #require(try await cluster.owner(of: slot))
        let target = try #require(try await cluster.primaries().first { $0 !== source })
        let before = canary.watchedChannels
        try await cluster.migrateSlot(slot, from: source, to: target)
        #expect(
            try await eventually(timeout: .seconds(20)) { try await covered() && canary.watchedChannels != before },
            "planned again on the new map: \(canary.watchedChannels)")
        canary.stop()
        await client.shutdown()
        try await group.shutdownGracefully()
    }

    /// A publish on gateway A reaches the subscriber on gateway B, with and without history, on
    /// the destination's shard channel (its history keys' slot).
    func fanOutAcrossInstances(_ a: ClusterGatewayEngine, _ b: ClusterGatewayEngine) async throws {
        for destination in ["/topic/news", "/topic/scores", "/queue/plain"] {
            try await b.subscribe(destination, id: destination)
        }
        for index in 1...5 {
            for destination in ["/topic/news", "/topic/scores", "/queue/plain"] { try await a.publish(destination, "m\(index)") }
        }
        #expect(try await eventually { b.sink.bodies("/topic/news").count == 5 && b.sink.bodies("/queue/plain").count == 5 })
        #expect(b.sink.bodies("/topic/news") == ["m1", "m2", "m3", "m4", "m5"])
        #expect(b.sink.sequences("/topic/news") == [1, 2, 3, 4, 5], "history positions, in order")
        #expect(try await eventually { b.sink.bodies("/topic/scores").count == 5 })
        #expect(b.sink.bodies("/queue/plain") == ["m1", "m2", "m3", "m4", "m5"])
        #expect(b.sink.sequences("/queue/plain").isEmpty, "no history: a plain SPUBLISH")
        let subscribed = b.client.shardSubscriptions.values.reduce(into: Set<String>()) { $0.formUnion($1) }
        #expect(subscribed.isSuperset(of: ["t:{/topic/news}:dest", "t:{/topic/scores}:dest", "t:{/queue/plain}:dest"]))
    }

    /// A message the subscriber's instance missed (recorded in history without reaching its
    /// shard channel) is read from history when the destination's slot moves and the instance
    /// subscribes again on the new owner: no further publish is needed to notice.
    func repairAfterSlotMove(_ cluster: RedisClusterProcess, _ a: ClusterGatewayEngine, _ b: ClusterGatewayEngine) async throws {
        let destination = "/topic/moving"
        try await b.subscribe(destination, id: "moving")
        try await a.publish(destination, "before")
        #expect(try await eventually { b.sink.bodies(destination) == ["before"] })
        // Recorded (n = 2) and published on the classic channel, which B does not listen to.
        let key = "t:{\(destination)}"
        let missed = HistoryPublish(key: key, payload: ByteBuffer(string: "missed"), sharded: false)
        _ = try await a.client.execute(missed)
        let repairs = b.engine.historyRepairs.load(ordering: .relaxed)

        let slot = HashSlot(key: key)
        let source = try #require(try await cluster.owner(of: slot))
        let target = try #require(try await cluster.primaries().first { $0 !== source })
        try await cluster.migrateSlot(slot, from: source, to: target)
        #expect(
            try await eventually(timeout: .seconds(20)) {
                b.client.shardSubscriptions[RedisServerAddress(host: "127.0.0.1", port: target.port)]?.contains("t:{\(destination)}:dest") ?? false
            }, "subscribed again on the new owner")
        #expect(try await eventually(timeout: .seconds(20)) { b.sink.bodies(destination) == ["before", "missed"] }, "repaired from history")
        #expect(b.sink.sequences(destination) == [1, 2])
        #expect(b.engine.historyRepairs.load(ordering: .relaxed) > repairs)
        try await a.publish(destination, "after")
        #expect(try await eventually { b.sink.bodies(destination) == ["before", "missed", "after"] })
        // The slot moved with its keys intact: the sequence goes on (a restart would move it).
        #expect(b.sink.sequences(destination) == [1, 2, 3])
    }

    /// A publish while its destination's slot is migrating, its keys not moved yet: held off
    /// (`TRYAGAIN`) until the migration ends. The functions used to declare only `t:{D}`, a key that never
    /// exists, so the source sent every call to the importing node (`ASK`), which lacked the
    /// sequence: the publish started a new epoch there, and the `MIGRATE` of the sequence then
    /// failed (`BUSYKEY`).
    func publishDuringASlotMigration(_ cluster: RedisClusterProcess, _ a: ClusterGatewayEngine) async throws {
        let destination = "/topic/resharded"
        let key = "t:{\(destination)}"
        try await a.publish(destination, "m1")
        let slot = HashSlot(key: key)
        let source = try #require(try await cluster.owner(of: slot))
        let target = try #require(try await cluster.primaries().first { $0 !== source })
        @Sendable func refused() async throws -> Int {
            let stats = try await cluster.command(source, RawCommand("INFO", "commandstats"))
            guard let line = stats.split(whereSeparator: \.isNewline).first(where: { $0.hasPrefix("cmdstat_fcall:") }),
                let field = line.split(separator: ",").first(where: { $0.hasPrefix("rejected_calls=") })
            else { return 0 }
            return Int(field.dropFirst("rejected_calls=".count)) ?? 0
        }
        let refusedBefore = try await refused()
        try await cluster.migrateSlot(slot, from: source, to: target, moveKeys: false, finish: false)
        let finished = NIOLockedValueBox(false)
        let during = Task {
            defer { finished.withLockedValue { $0 = true } }
            try await a.publish(destination, "m2")
        }
        // Sent: refused by the source (held off), or carried out somewhere.
        #expect(try await eventually { try await refused() > refusedBefore || finished.withLockedValue { $0 } })
        try await cluster.migrateSlot(slot, from: source, to: target)
        try await during.value
        let history = try await a.client.execute(HistoryRead(key: key, range: .after(0)))
        let positions = history.envelopes.compactMap { RedisEnvelope.decode($0)?.position }
        #expect(history.envelopes.map { RedisEnvelope.decode($0).map { String(buffer: $0.body) } } == ["m1", "m2"])
        #expect(Set(positions.map(\.epoch)).count == 1 && positions.map(\.sequence) == [1, 2], "one epoch, one sequence: \(positions)")
    }

    /// `kill -9` of the primary owning a destination: its replica is promoted, the subscriber's
    /// instance subscribes there and delivery resumes; every publish that succeeded reaches it,
    /// in order (after the promotion the positions jump, see docs/recovery.md).
    func failover(_ cluster: RedisClusterProcess, _ a: ClusterGatewayEngine, _ b: ClusterGatewayEngine) async throws {
        let destination = "/topic/failover"
        try await b.subscribe(destination, id: "failover")
        let victim = try #require(try await cluster.owner(of: HashSlot(key: "t:{\(destination)}")))
        try await a.publish(destination, "p0")
        #expect(try await eventually { b.sink.bodies(destination) == ["p0"] })
        victim.kill()
        var published = ["p0"]
        var index = 1
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(30)
        // Publish until a few went through on the promoted replica.
        while published.count < 4, clock.now < deadline {
            do {
                try await a.publish(destination, "p\(index)")
                published.append("p\(index)")
            } catch {
                try await Task.sleep(for: .milliseconds(100))
            }
            index += 1
        }
        #expect(published.count == 4, "publishing resumed after the failover")
        let expected = published
        #expect(try await eventually(timeout: .seconds(20)) { b.sink.bodies(destination) == expected }, "\(b.sink.bodies(destination)) != \(expected)")
        let sequences = b.sink.sequences(destination)
        #expect(sequences == sequences.sorted(), "one order")
    }

    /// A wildcard SUBSCRIBE fails with an explanation (sharded Pub/Sub has no pattern form).
    func wildcardRefused(_ b: ClusterGatewayEngine) async throws {
        do {
            try await b.subscribe("/topic/a.*", id: "wild")
            Issue.record("a wildcard subscription on a cluster must fail")
        } catch {
            #expect("\(error)".contains("wildcard subscriptions are not available on Redis Cluster"), "\(error)")
        }
    }

    /// SwitchboardKit on the cluster: a stream route's entry is read by a StreamConsumer (group
    /// created on the stream's primary), whose publisher's answer (FCALL switchboard_spublish on
    /// the destination's primary) reaches the gateway's subscriber.
    func kitOnCluster(_ cluster: RedisClusterProcess, _ b: ClusterGatewayEngine) async throws {
        try await b.subscribe("/topic/greetings", id: "greetings")
        let backend = try RedisClusterClient(configuration: clusterConfiguration(cluster), logger: quietLogger)
        backend.start()
        var configuration = testConfiguration(stream: "GREET_OUT", group: "svc", name: "svc-1")
        configuration.channelNaming = RedisChannelNaming(prefix: "t:")
        let consumer = StreamConsumer(redis: .cluster(backend), configuration: configuration, logger: quietLogger)
        let running = start(consumer) { message in
            try await consumer.publish(destination: "/topic/greetings", body: "Hello, \(message.bodyString)!")
        }
        let route = RedisStreamRoute(stream: "GREET_OUT", maxLength: 1000, redis: .cluster(b.client), groups: ["svc"], eventLoop: b.loop)
        for name in ["ada", "bob"] {
            let message = AppMessage(
                destination: "/app/greet", body: ByteBuffer(string: name), headers: [:], contentType: "text/plain", sessionID: "s1", user: nil,
                instanceID: "gwB", timestamp: 1)
            _ = try await route.handle(message, on: b.loop).get()
        }
        #expect(try await eventually { b.sink.bodies("/topic/greetings") == ["Hello, ada!", "Hello, bob!"] })
        #expect(b.sink.sequences("/topic/greetings") == [1, 2], "recorded in history by switchboard_spublish")
        #expect(try await eventually { consumer.statistics.processed == 2 }, "acknowledged after the handler returned")

        // A plain publisher (no history) on the cluster: SPUBLISH on the shard channel.
        var plain = SwitchboardPublisher(redis: .cluster(backend), origin: "plain", naming: RedisChannelNaming(prefix: "t:"))
        plain.recordsHistory = false
        #expect(try await plain.publish(destination: "/queue/plain", body: "direct") == 1, "one instance (B) subscribed")
        #expect(try await eventually { b.sink.bodies("/queue/plain").last == "direct" })
        consumer.stop()
        try await running.value

        // Dead-lettering when the stream and `<stream>:dead` are in different slots: XADD, then XACK.
        #expect(HashSlot(key: "FAIL_OUT") != HashSlot(key: "FAIL_OUT:dead"))
        let failing = StreamConsumer(
            redis: .cluster(backend), configuration: testConfiguration(stream: "FAIL_OUT", group: "svc", name: "svc-2", maxDeliveries: 1),
            logger: quietLogger)
        let failingRun = start(failing) { _ in throw Boom(description: "always") }
        _ = try await backend.execute(XADD(key: "FAIL_OUT", fields: [("message", .string("doomed"))]))
        #expect(try await eventually { (try? await backend.execute(XLEN(key: "FAIL_OUT:dead"))) == 1 }, "dead-lettered")
        #expect(try await eventually { (try? await backend.execute(XPENDING(key: "FAIL_OUT", group: "svc")).count) == 0 }, "acknowledged")
        failing.stop()
        try await failingRun.value
        await backend.shutdown()
    }
}
