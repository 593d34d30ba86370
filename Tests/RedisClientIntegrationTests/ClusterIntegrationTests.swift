import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import RedisServerTesting
import Testing

@testable import Redis

/// Redis Cluster against real processes: 3 primaries and 3 replicas on free ports per test.
@Suite("Real Redis Cluster", .serialized, .enabled(if: RedisClusterProcess.isAvailable, "needs redis-server, redis-cli and glibc 2.34+"))
struct ClusterIntegrationTests {
    func client(
        _ cluster: RedisClusterProcess, seeds: [RedisServerAddress]? = nil, configure: (inout RedisClusterConfiguration) -> Void = { _ in }
    ) throws -> RedisClusterClient {
        var configuration = RedisConfiguration()
        configuration.password = cluster.password
        // Generous: an INCR behind a MIGRATE, or a connect on a loaded machine, takes seconds.
        configuration.connectTimeout = .seconds(10)
        configuration.commandTimeout = .seconds(10)
        configuration.reconnectBackoffMaximum = .milliseconds(500)
        configuration.cluster = RedisClusterConfiguration(nodes: seeds ?? cluster.seeds, retryDelay: .milliseconds(50))
        configure(&configuration.cluster!)
        var logger = Logger(label: "cluster-test")
        logger.logLevel = .critical
        let client = try RedisClusterClient(configuration: configuration, logger: logger)
        client.start()
        return client
    }

    func startCluster() async throws -> (RedisClusterProcess, RedisClusterClient) {
        let cluster = try await RedisClusterProcess.start()
        return (cluster, try self.client(cluster))
    }

    /// Reads the map, sends keyed commands to every shard, checks slots against `CLUSTER KEYSLOT`,
    /// pipelines across shards, and routes `EVAL`/`FCALL` by their keys.
    @Test func keyedCommandsOnAllShards() async throws {
        let (cluster, client) = try await self.startCluster()
        defer { Task { await client.shutdown() } }
        let topology = try await client.refreshTopology()
        #expect(topology.primaries.count == 3)
        #expect(topology.coversAllSlots)
        #expect(topology.shards.allSatisfy { $0.replicas.count == 1 })

        for key in ["foo", "{user1000}.following", "sb:{/topic/a}:seq", "é", "x{}y"] {
            let keyslot = try await cluster.command(cluster.servers[0], RawCommand("CLUSTER", "KEYSLOT", .string(key)))
            #expect(keyslot == "\(HashSlot(key: key).rawValue)", "slot of \(key)")
        }
        for index in 0..<300 { #expect(try await client.execute(SET("key:\(index)", value: .integer(index))) != nil) }
        for index in 0..<300 { #expect(try await client.execute(GET("key:\(index)")) == ByteBuffer(string: "\(index)")) }
        for primary in try await cluster.primaries() {
            let size = try await cluster.command(primary, RawCommand("DBSIZE"))
            #expect((Int(size) ?? 0) > 50, "every shard holds keys")
        }
        #expect(try await client.execute(PING()) == "PONG")
        await #expect(throws: RedisClientError.crossSlot) { _ = try await client.execute(DEL("foo", "bar")) }
        #expect(try await client.execute(DEL("{t}a", "{t}b")) == 0)

        // A pipeline over every shard: each reply in place, per-key order kept.
        var commands: [any RedisCommand] = []
        for index in 0..<60 {
            commands.append(SET("p:\(index)", value: .string("v\(index)")))
            commands.append(GET("p:\(index)"))
        }
        let results = await client.pipeline(commands)
        for index in 0..<60 {
            let reply = try results[2 * index + 1].get()
            #expect(try ByteBuffer(fromRESP: reply) == ByteBuffer(string: "v\(index)"))
        }

        // At most 5 commands in flight per node: a larger pipeline to one node is refused whole.
        let bounded = try self.client(cluster) { $0.maximumPendingCommandsPerNode = 5 }
        defer { Task { await bounded.shutdown() } }
        let refused = await bounded.pipeline((0..<6).map { _ in GET("{one}k") })
        #expect(refused.allSatisfy { (try? $0.get()) == nil })
        if case .failure(let error) = refused[0] { #expect(error as? RedisClientError == .queueFull) }
        #expect(await bounded.pipeline((0..<5).map { _ in GET("{one}k") }).allSatisfy { (try? $0.get()) != nil })

        // EVAL and FCALL go to the owner of their keys (functions are loaded on every primary).
        let eval = try await client.execute(EVAL(script: "return redis.call('GET', KEYS[1])", keys: ["key:7"]))
        #expect(try ByteBuffer(fromRESP: eval) == ByteBuffer(string: "7"))
        let library = "#!lua name=clustertest\nredis.register_function('getit', function(keys, args) return redis.call('GET', keys[1]) end)"
        // Loaded by the connection setup of each primary's command connection (a fresh client: the
        // setup runs on connections opened after it was added).
        let functions = try self.client(cluster)
        defer { Task { await functions.shutdown() } }
        functions.addConnectionSetup(["FUNCTION", "LOAD", "REPLACE", .string(library)])
        for index in [1, 2, 3, 150, 299] {
            let reply = try await functions.execute(FCALL(function: "getit", keys: ["key:\(index)"]))
            #expect(try ByteBuffer(fromRESP: reply) == ByteBuffer(string: "\(index)"))
        }
    }

    /// A dedicated connection for a blocking read goes to the owner of the stream's slot.
    @Test func dedicatedConnectionForBlockingReads() async throws {
        let (cluster, client) = try await self.startCluster()
        defer { Task { await client.shutdown() } }
        let connection = try await client.makeDedicatedConnection(forKeys: ["{jobs}:stream"])
        defer { Task { await connection.close() } }
        let owner = try #require(try await cluster.owner(of: HashSlot(key: "{jobs}:stream")))
        #expect(connection.configuration.port == owner.port)
        let read = Task { try await connection.execute(XREAD(blockMilliseconds: 10_000, streams: [(key: "{jobs}:stream", id: "$")])) }
        let blocked = try await eventually { try await cluster.command(owner, RawCommand("INFO", "clients")).contains("blocked_clients:1") }
        #expect(blocked)
        _ = try await client.execute(XADD(key: "{jobs}:stream", fields: [(name: "job", value: "1")]))
        let result = try await read.value
        #expect(result != nil, "the blocking read on the owner sees the entry")
    }

    /// A slot moved with `CLUSTER SETSLOT` behind the client's back: the `MOVED` reply is followed
    /// and the map re-read.
    @Test func followsMovedAfterMigration() async throws {
        let (cluster, client) = try await self.startCluster()
        defer { Task { await client.shutdown() } }
        #expect(try await client.execute(SET("foo", value: "before")) != nil)
        let slot = HashSlot(key: "foo")
        let source = try #require(try await cluster.owner(of: slot))
        let destination = try #require(try await cluster.primaries().first { $0 !== source })
        let refreshes = client.topologyRefreshCount
        try await cluster.migrateSlot(slot, from: source, to: destination)

        #expect(try await client.execute(GET("foo")) == ByteBuffer(string: "before"))
        #expect(try await client.execute(SET("foo", value: "after")) != nil)
        #expect(try await cluster.command(destination, RawCommand("GET", "foo")) == "after")
        let updated = try await eventually { client.topologyRefreshCount > refreshes }
        #expect(updated, "MOVED triggers a map refresh")
        let ownerInMap = try await eventually {
            try await client.refreshTopology().primary(for: slot)?.port == destination.port
        }
        #expect(ownerInMap)
    }

    /// `redis-cli --cluster reshard` moves 2000 slots while four writers `INCR` 200 keys: every
    /// increment succeeds exactly once (no error, no loss, no duplicate), through `ASK` and `MOVED`.
    @Test func writesDuringReshard() async throws {
        let (cluster, client) = try await self.startCluster()
        defer { Task { await client.shutdown() } }
        let primaries = try await cluster.primaries()
        let source = try await cluster.nodeID(primaries[0])
        let destination = try await cluster.nodeID(primaries[1])
        func slotCount(_ topology: RedisClusterTopology) -> Int? {
            topology.shards.first { $0.primary.port == primaries[1].port }.map { $0.slots.reduce(0) { $0 + $1.count } }
        }
        let before = try #require(slotCount(try await client.refreshTopology()))
        let refreshes = client.topologyRefreshCount
        let reshard = Task {
            try await cluster.redisCLI([
                "--cluster", "reshard", "127.0.0.1:\(primaries[0].port)", "--cluster-from", source, "--cluster-to", destination,
                "--cluster-slots", "2000", "--cluster-yes", "--cluster-pipeline", "10",
            ])
        }
        let done = NIOLockedValueBox(false)
        let counts = try await withThrowingTaskGroup(of: [String: Int].self) { group in
            for worker in 0..<4 {
                group.addTask {
                    var counts: [String: Int] = [:]
                    repeat {
                        for index in 0..<50 {
                            let key = "c:\(worker * 50 + index)"
                            _ = try await client.execute(RawCommand(arguments: ["INCR", .string(key)], keys: [key]))
                            counts[key, default: 0] += 1
                        }
                    } while !done.withLockedValue { $0 }
                    return counts
                }
            }
            _ = try await reshard.value
            done.withLockedValue { $0 = true }
            var all: [String: Int] = [:]
            for try await part in group { all.merge(part) { $0 + $1 } }
            return all
        }
        #expect(counts.count == 200)
        for (key, count) in counts.sorted(by: { $0.key < $1.key }) {
            let stored = try await client.execute(GET(key)).map { Int(String(buffer: $0)) }
            #expect(stored == count, "\(key): \(count) increments acknowledged")
        }
        // (the writers ran during the reshard: their redirects made the client read the map again;
        // how many rounds they made meanwhile is up to the machine's load)
        #expect(client.topologyRefreshCount > refreshes, "the moves were noticed")
        #expect(slotCount(try await client.refreshTopology()) == before + 2000)
    }

    /// During a migration, a key that is not on the source any more is answered with `ASK`: the
    /// client sends `ASKING` and the command to the importing node.
    @Test func followsAskDuringMigration() async throws {
        let (cluster, client) = try await self.startCluster()
        defer { Task { await client.shutdown() } }
        let slot = HashSlot(key: "foo")
        _ = try await client.refreshTopology()
        let source = try #require(try await cluster.owner(of: slot))
        let destination = try #require(try await cluster.primaries().first { $0 !== source })
        try await cluster.migrateSlot(slot, from: source, to: destination, moveKeys: false, finish: false)

        // "foo" does not exist on the migrating source: ASK to the destination.
        #expect(try await client.execute(SET("foo", value: "asked")) != nil)
        #expect(try await client.execute(GET("foo")) == ByteBuffer(string: "asked"))
        #expect(try await cluster.command(source, RawCommand("CLUSTER", "COUNTKEYSINSLOT", .integer(slot.rawValue))) == "0", "the key went to the importing node")
        #expect(client.topology?.primary(for: slot)?.port == source.port, "ASK does not change the map")

        try await cluster.migrateSlot(slot, from: source, to: destination, moveKeys: true, finish: true)
        #expect(try await client.execute(GET("foo")) == ByteBuffer(string: "asked"))
    }

    /// Sharded Pub/Sub on the slot owner; the slot moves (the server sends `sunsubscribe`), the
    /// client subscribes again on the new owner. Classic `SUBSCRIBE` works on any node.
    @Test func shardedPubSubFollowsReshardedSlot() async throws {
        let (cluster, client) = try await self.startCluster()
        defer { Task { await client.shutdown() } }
        let channel = "{/topic/news}:ch"
        let slot = HashSlot(key: channel)
        let subscription = try await client.subscribe(to: [channel], kind: .shardChannel)
        let source = try #require(try await cluster.owner(of: slot))
        #expect(client.shardSubscriptions.keys.map(\.port) == [source.port])
        #expect(try await client.execute(SPUBLISH(channel: channel, message: "one")) == 1)
        #expect(try await nextMessage(subscription)?.payload == ByteBuffer(string: "one"))

        let destination = try #require(try await cluster.primaries().first { $0 !== source })
        try await cluster.migrateSlot(slot, from: source, to: destination)
        let followed = try await eventually { client.shardSubscriptions.keys.map(\.port) == [destination.port] }
        #expect(followed, "the subscription moves to the new owner: \(client.shardSubscriptions)")
        #expect(try await client.execute(SPUBLISH(channel: channel, message: "two")) == 1)
        #expect(try await nextMessage(subscription)?.payload == ByteBuffer(string: "two"))

        let classic = try await client.subscribe(to: ["plain"])
        let delivered = try await eventually { try await client.execute(PUBLISH(channel: "plain", message: "hi")) >= 1 }
        #expect(delivered)
        #expect(try await nextMessage(classic)?.payload == ByteBuffer(string: "hi"))

        await subscription.unsubscribe()
        let released = try await eventually { client.shardSubscriptions.isEmpty }
        #expect(released, "the last unsubscribe closes the shard's subscriber connection")
    }

    /// `kill -9` of a primary: its replica is promoted, the client re-reads the map, commands on
    /// that shard succeed again and the sharded subscription moves to the new primary.
    @Test func followsPrimaryFailover() async throws {
        let (cluster, client) = try await self.startCluster()
        defer { Task { await client.shutdown() } }
        let channel = "{fail}:ch"
        let slot = HashSlot(key: channel)
        // A replicated write (SET, then WAIT on the slot's primary): it is on the replica when it
        // succeeds, so it survives the failover.
        #expect(try await client.execute(ReplicatedWrite(SET("{fail}:k", value: "v"), replicas: 1, timeout: .seconds(2))) != nil)
        let subscription = try await client.subscribe(to: [channel], kind: .shardChannel)
        let victim = try #require(try await cluster.owner(of: slot))
        await #expect(throws: RedisClientError.notReplicated) {
            try await client.execute(ReplicatedWrite(SET("{fail}:other", value: "v"), replicas: 2, timeout: .milliseconds(50)))
        }
        victim.kill()

        let recovered = try await eventually(timeout: .seconds(30)) {
            (try? await client.execute(GET("{fail}:k"))) == ByteBuffer(string: "v")
        }
        #expect(recovered, "commands on the failed shard succeed once the replica is promoted")
        let newOwner = try #require(try await cluster.owner(of: slot))
        #expect(newOwner !== victim)
        let resubscribed = try await eventually(timeout: .seconds(15)) { client.shardSubscriptions.keys.map(\.port) == [newOwner.port] }
        #expect(resubscribed, "the sharded subscription follows the promoted replica: \(client.shardSubscriptions)")
        #expect(try await client.execute(SPUBLISH(channel: channel, message: "after")) == 1)
        #expect(try await nextMessage(subscription)?.payload == ByteBuffer(string: "after"))
    }

    /// Every node requires a password: the client's credentials apply to each of them (and a
    /// wrong password is the server's error, not a hang).
    @Test func credentialsApplyToEveryNode() async throws {
        let cluster = try await RedisClusterProcess.start(password: "s3cret")
        let client = try self.client(cluster)
        defer { Task { await client.shutdown() } }
        for index in 0..<60 { #expect(try await client.execute(SET("auth:\(index)", value: .integer(index))) != nil) }
        #expect(Set(try await client.refreshTopology().primaries).count == 3)
        let subscription = try await client.subscribe(to: ["{auth}:ch"], kind: .shardChannel)
        #expect(try await client.execute(SPUBLISH(channel: "{auth}:ch", message: "m")) == 1)
        #expect(try await nextMessage(subscription)?.payload == ByteBuffer(string: "m"))

        var configuration = client.configuration
        configuration.password = "wrong"
        await self.expectFailure(try RedisClusterClient(configuration: configuration), .clusterUnavailable, detailContaining: "WRONGPASS")
    }

    /// An admin client, and a client (not started) of the ACL user `app`, allowed every key and
    /// the channels `channels` say (ACL rules).
    func appClient(_ cluster: RedisClusterProcess, channels: [RedisArgument]) async throws -> (admin: RedisClusterClient, app: RedisClusterClient) {
        for server in cluster.running {
            _ = try await cluster.command(server, RawCommand(arguments: ["ACL", "SETUSER", "app", "on", ">app-secret", "~*"] + channels + ["+@all"]))
        }
        let admin = try self.client(cluster)
        var configuration = admin.configuration
        configuration.username = "app"
        configuration.password = "app-secret"
        var logger = Logger(label: "cluster-test")
        logger.logLevel = .critical
        return (admin, try RedisClusterClient(configuration: configuration, logger: logger))
    }

    /// An ACL that stops allowing one of a slot's shard channels: the re-subscribe sends the
    /// slot's channels in one `SSUBSCRIBE`, which Redis refuses as a whole (`NOPERM`), so the
    /// other channels of the slot stayed unsubscribed at every pass. Now they are subscribed a
    /// name at a time.
    @Test func aShardChannelAnACLRefusesDoesNotHoldBackTheOthersOfItsSlot() async throws {
        let cluster = try await RedisClusterProcess.start()
        let (admin, client) = try await self.appClient(cluster, channels: ["&*"])
        defer { Task { await admin.shutdown() } }
        client.start()
        defer { Task { await client.shutdown() } }
        let kept = try await client.subscribe(to: ["{acl}:kept"], kind: .shardChannel)
        let denied = try await client.subscribe(to: ["{acl}:denied"], kind: .shardChannel)
        #expect(try await admin.execute(SPUBLISH(channel: "{acl}:kept", message: "before")) == 1)
        #expect(try await nextMessage(kept)?.payload == ByteBuffer(string: "before"))

        for server in cluster.running {
            _ = try await cluster.command(server, RawCommand("ACL", "SETUSER", "app", "resetchannels", "&{acl}:kept"))
            _ = try await cluster.command(server, RawCommand("CLIENT", "KILL", "USER", "app"))
        }
        #expect(
            try await eventually { try await admin.execute(SPUBLISH(channel: "{acl}:kept", message: "after")) == 1 },
            "the slot's allowed channel is subscribed again")
        #expect(try await nextMessage(kept)?.payload == ByteBuffer(string: "after"))
        #expect(client.shardRegistry.activeKeys.contains(.init(kind: .shardChannel, name: "{acl}:denied")), "the refused one stays wanted")
        await denied.unsubscribe()
    }

    /// A shard channel whose first `SSUBSCRIBE` is not confirmed (here an ACL refuses it; an
    /// unreachable owner or a stale map alike) is subscribed by a later pass, and that pass tells
    /// the resubscribe observers, whose repair covers what was published in between. Only a
    /// channel confirmed once was reported: the caller, told it was subscribed, missed the gap.
    @Test func aShardChannelFirstConfirmedByALaterPassIsReportedForRepair() async throws {
        let cluster = try await RedisClusterProcess.start()
        let (admin, client) = try await self.appClient(cluster, channels: ["resetchannels", "&{acl}:other"])
        defer { Task { await admin.shutdown() } }
        let reported = NIOLockedValueBox<[String]>([])
        client.addShardResubscribeObserver { names in reported.withLockedValue { $0 += names } }
        client.start()
        defer { Task { await client.shutdown() } }
        let late = try await client.subscribe(to: ["{acl}:late"], kind: .shardChannel)
        #expect(client.shardSubscriptions.values.allSatisfy { !$0.contains("{acl}:late") })
        for server in cluster.running {
            _ = try await cluster.command(server, RawCommand("ACL", "SETUSER", "app", "allchannels"))
        }
        #expect(
            try await eventually(timeout: .seconds(30)) { client.shardSubscriptions.values.contains { $0.contains("{acl}:late") } },
            "a later pass subscribes it")
        #expect(try await eventually { reported.withLockedValue { $0.contains("{acl}:late") } }, "and reports it for repair")
        #expect(try await admin.execute(SPUBLISH(channel: "{acl}:late", message: "m")) == 1)
        #expect(try await nextMessage(late)?.payload == ByteBuffer(string: "m"))
    }

    /// The classic subscriber connection is cut while every node runs a long script: the
    /// reconnect's `HELLO` is allowed, its `SUBSCRIBE` answers `-BUSY`. The connection is then
    /// closed and opened again until the re-subscribe succeeds. Before, the refusal was
    /// swallowed: the connection stayed up with nothing subscribed, and messages were lost for
    /// as long as it lived.
    @Test func aReSubscribeAnsweredBusyIsSentAgainOnANewConnection() async throws {
        let (cluster, client) = try await self.startCluster()
        defer { Task { await client.shutdown() } }
        let received = NIOLockedValueBox<[String]>([])
        let subscription = try await client.subscribe(to: ["plain"]) { message in
            received.withLockedValue { $0.append(String(buffer: message.payload)) }
        }
        // Published until it arrives (PUBLISH counts the receiving node's subscribers only: the
        // subscriber may be on another node, a replica too).
        @Sendable func arrives(_ text: String) async throws -> Bool {
            try await eventually(timeout: .seconds(30)) {
                _ = try await client.execute(PUBLISH(channel: "plain", message: .string(text)))
                return try await eventually(timeout: .milliseconds(500)) { received.withLockedValue { $0.contains(text) } }
            }
        }
        #expect(try await arrives("before"))

        // A script busy for 8 s (the reconnect must come within it, on a loaded machine too);
        // other clients' commands get `-BUSY` after 20 ms of it.
        let busy = """
            local t = redis.call('TIME')
            while true do
              local n = redis.call('TIME')
              if (n[1] - t[1]) * 1000000 + (n[2] - t[2]) > 8000000 then return 1 end
            end
            """
        var admins: [RedisConnection] = []
        var holder: RedisServerProcess?
        for server in cluster.running {
            let admin = try await server.connect {
                $0.password = cluster.password
                $0.commandTimeout = .seconds(20)
            }
            admins.append(admin)
            _ = try await admin.execute(RawCommand("CONFIG", "SET", "busy-reply-threshold", "20"))
            let clients = try await cluster.command(server, RawCommand("CLIENT", "LIST", "TYPE", "pubsub"))
            if clients.contains("cmd=") { holder = server }
        }
        let subscribedNode = try #require(holder, "one node holds the classic subscriber")
        // Every other node busy first; then the holder cuts the subscriber and runs the script
        // (pipelined): wherever the client reconnects, its SUBSCRIBE is answered `-BUSY`.
        var scripts: [EventLoopFuture<RESPToken>] = []
        for (server, admin) in zip(cluster.running, admins) where server !== subscribedNode {
            scripts.append(admin.send(RawCommand("EVAL", .init(stringLiteral: busy), "0")))
        }
        for server in cluster.running where server !== subscribedNode {
            #expect(try await eventually(timeout: .seconds(10)) { (try? await cluster.command(server, RawCommand("PING"))) == nil })
        }
        let admin = admins[try #require(cluster.running.firstIndex { $0 === subscribedNode })]
        let kill = admin.send(RawCommand("CLIENT", "KILL", "TYPE", "pubsub"))
        scripts.append(admin.send(RawCommand("EVAL", .init(stringLiteral: busy), "0")))
        _ = try await kill.get()
        for script in scripts { _ = try? await script.get() }
        for admin in admins { await admin.close() }

        // The scripts are over: the client is subscribed again (it reconnected), so messages
        // published now arrive. Without the reconnect, none ever would.
        #expect(try await arrives("after"), "the channel is subscribed again once the nodes answer")
        await subscription.unsubscribe()
    }

    /// A node removed from the cluster (`CLUSTER RESET` on it, `CLUSTER FORGET` on the others)
    /// no longer gets the cluster's messages, but the classic subscriber's connection to it stayed
    /// up: every message after was lost. The first slot map without the node moves it.
    @Test func aClassicSubscriberOnANodeThatLeftTheClusterMovesToAnother() async throws {
        let cluster = try await RedisClusterProcess.start()
        let client = try self.client(cluster) { $0.topologyRefreshInterval = .seconds(1) }
        defer { Task { await client.shutdown() } }
        let received = NIOLockedValueBox<[String]>([])
        let subscription = try await client.subscribe(to: ["plain"]) { message in
            received.withLockedValue { $0.append(String(buffer: message.payload)) }
        }
        /// Published on `node` (the cluster passes it to every node) until it arrives.
        @Sendable func arrives(_ text: String, through node: RedisServerProcess) async throws -> Bool {
            try await eventually(timeout: .seconds(30)) {
                _ = try await cluster.command(node, RawCommand("PUBLISH", "plain", .string(text)))
                return try await eventually(timeout: .milliseconds(500)) { received.withLockedValue { $0.contains(text) } }
            }
        }
        #expect(try await arrives("before", through: cluster.servers[0]))
        var holder: RedisServerProcess?
        for server in cluster.running where try await cluster.command(server, RawCommand("CLIENT", "LIST", "TYPE", "pubsub")).contains("cmd=") {
            holder = server
        }
        let leaving = try #require(holder, "one node holds the classic subscriber")
        // A primary hands its slots to its replica first.
        if try await cluster.command(leaving, RawCommand("ROLE")).contains("master") {
            var replica: RedisServerProcess?
            for server in cluster.running where server !== leaving {
                if try await cluster.command(server, RawCommand("INFO", "replication")).contains("master_port:\(leaving.port)") { replica = server }
            }
            let promoted = try #require(replica)
            #expect(
                try await eventually(timeout: .seconds(30)) {
                    _ = try? await cluster.command(promoted, RawCommand("CLUSTER", "FAILOVER"))
                    return try await eventually(timeout: .seconds(2)) { try await cluster.command(leaving, RawCommand("ROLE")).contains("slave") }
                })
        }
        let id = try await cluster.nodeID(leaving)
        _ = try await cluster.command(leaving, RawCommand("CLUSTER", "RESET", "HARD"))
        for server in cluster.running where server !== leaving {
            _ = try await cluster.command(server, RawCommand("CLUSTER", "FORGET", .string(id)))
        }
        // The node is up, on its own: the cluster's messages never reach it.
        let member = try #require(cluster.running.first { $0 !== leaving })
        #expect(try await arrives("after", through: member), "the subscriber moved to a node of the cluster")
        #expect(try await cluster.command(leaving, RawCommand("CLIENT", "LIST", "TYPE", "pubsub")).contains("cmd=") == false)
        await subscription.unsubscribe()
        cluster.stop()
    }

    /// An unreachable seed, and a standalone server given as a cluster, are clear errors.
    @Test func badConfiguration() async throws {
        let port = try await RedisServerProcess.freePort()
        var configuration = RedisConfiguration()
        configuration.connectTimeout = .milliseconds(500)
        configuration.cluster = RedisClusterConfiguration(nodes: [RedisServerAddress(host: "127.0.0.1", port: port)], maximumRedirects: 1)
        await self.expectFailure(try RedisClusterClient(configuration: configuration), .clusterUnavailable, detailContaining: "127.0.0.1:\(port)")

        let standalone = try await RedisServerProcess.start()
        configuration.cluster = RedisClusterConfiguration(nodes: [RedisServerAddress(host: "127.0.0.1", port: standalone.port)])
        await self.expectFailure(try RedisClusterClient(configuration: configuration), .notCluster, detailContaining: "\(standalone.port)")
    }

    /// A command fails with `expected`, whose detail contains `text` (the cause, the node).
    func expectFailure(_ client: RedisClusterClient, _ expected: RedisClientError, detailContaining text: String) async {
        do {
            _ = try await client.execute(GET("k"))
            Issue.record("expected \(expected)")
        } catch let error as RedisClientError {
            #expect(error == expected)
            #expect(error.detail?.contains(text) == true, "the detail says why: \(error)")
        } catch {
            Issue.record("unexpected \(error)")
        }
        await client.shutdown()
    }

    /// A shard subscribe waited until the passes stopped, not for a pass that covered it: with
    /// new shard channels wanted during every pass (sessions subscribing to per-user
    /// destinations), the passes never stopped and neither did the wait.
    @Test func aShardSubscribeReturnsWhileOthersKeepComing() async throws {
        let (cluster, client) = try await self.startCluster()
        defer { cluster.stop() }
        defer { Task { await client.shutdown() } }
        let kept = NIOLockedValueBox<[RedisCallbackSubscription]>([])
        let returned = NIOLockedValueBox(false)
        let churn = Task { () -> Bool in
            let deadline = ContinuousClock.now + .seconds(20)
            var index = 0
            while !returned.withLockedValue({ $0 }) {
                guard ContinuousClock.now < deadline else { return false }
                for _ in 0..<5 {
                    let name = "churn:\(index)"
                    index += 1
                    Task {
                        if let subscription = try? await client.subscribe(to: [name], kind: .shardChannel, handler: { _ in }) {
                            kept.withLockedValue { $0.append(subscription) }
                        }
                    }
                }
                try? await Task.sleep(for: .milliseconds(1))
            }
            return true
        }
        #expect(try await eventually { kept.withLockedValue { $0.count } >= 20 }, "the churn is under way")
        let target = try await client.subscribe(to: ["{target}:ch"], kind: .shardChannel, handler: { _ in })
        returned.withLockedValue { $0 = true }
        #expect(await churn.value, "the subscribe returned while other subscribes kept coming")
        #expect(client.shardSubscriptions.values.contains { $0.contains("{target}:ch") })
        await target.unsubscribe()
    }
}
