import Foundation
import Logging
import NIOCore
import NIOPosix
import RedisServerTesting
import Testing

@testable import Redis

/// Redis Sentinel against real processes: a primary, a replica and two sentinels on free ports.
@Suite("Real redis-server with Sentinel", .enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct SentinelIntegrationTests {
    /// Primary, replica and sentinels; the sentinels have seen the replica once this returns.
    func startGroup(sentinels count: Int = 2) async throws -> (RedisServerProcess, RedisServerProcess, [RedisServerProcess]) {
        let primary = try await RedisServerProcess.start()
        let replica = try await RedisServerProcess.startReplica(of: primary)
        var sentinels: [RedisServerProcess] = []
        for _ in 0..<count {
            sentinels.append(try await RedisServerProcess.startSentinel(monitoring: primary, masterName: "main", quorum: 1))
        }
        let connection = try await sentinels[0].connect()
        defer { Task { await connection.close() } }
        let knowsReplica = try await eventually {
            let replicas = try await connection.execute(RawCommand("SENTINEL", "REPLICAS", "main"))
            return "\(replicas)".contains("\(replica.port)")
        }
        #expect(knowsReplica, "the sentinel did not discover the replica")
        return (primary, replica, sentinels)
    }

    func client(_ sentinels: [RedisServerProcess]) -> RedisClient {
        var configuration = RedisConfiguration(host: "unused.invalid", port: 1)
        configuration.connectTimeout = .seconds(10)  // a TLS handshake on a loaded machine takes seconds
        configuration.commandTimeout = .seconds(10)
        configuration.reconnectBackoffMaximum = .milliseconds(500)
        configuration.sentinel = RedisSentinelConfiguration(
            // A sentinel that is not running comes first: the next one answers.
            nodes: [RedisServerAddress(host: "127.0.0.1", port: 1)] + sentinels.map { RedisServerAddress(host: "127.0.0.1", port: $0.port) },
            masterName: "main")
        var logger = Logger(label: "sentinel-test")
        logger.logLevel = .critical
        return RedisClient(configuration: configuration, logger: logger)
    }

    @Test func parsesNodesAndReplies() throws {
        #expect(try RedisSentinelConfiguration.parseNode("10.0.0.1:26380") == RedisServerAddress(host: "10.0.0.1", port: 26380))
        #expect(try RedisSentinelConfiguration.parseNode("sentinel-a") == RedisServerAddress(host: "sentinel-a", port: 26379))
        #expect(try RedisSentinelConfiguration.parseNode("[::1]:5000") == RedisServerAddress(host: "::1", port: 5000))
        #expect(throws: RedisClientError.invalidConfiguration) { try RedisSentinelConfiguration.parseNode("host:x") }
        var configuration = RedisConfiguration()
        configuration.sentinel = RedisSentinelConfiguration(nodes: [], masterName: "main")
        let resolver = SentinelResolver(configuration: configuration)
        #expect(resolver.newPrimary(fromSwitchMaster: "main 127.0.0.1 6379 127.0.0.1 6380") == RedisServerAddress(host: "127.0.0.1", port: 6380))
        #expect(resolver.newPrimary(fromSwitchMaster: "other 127.0.0.1 6379 127.0.0.1 6380") == nil)
    }

    @Test func noPrimaryWithoutSentinels() async throws {
        var configuration = RedisConfiguration()
        configuration.sentinel = RedisSentinelConfiguration(nodes: [RedisServerAddress(host: "127.0.0.1", port: 1)], masterName: "main")
        await #expect(throws: RedisClientError.noPrimary) {
            _ = try await SentinelResolver(configuration: configuration).resolvePrimary(
                eventLoopGroup: MultiThreadedEventLoopGroup.singleton, logger: Logger(label: "test"))
        }
    }

    /// The sentinel that answered is asked first next time: always starting from the first, a
    /// sentinel gone without a reset (its node lost power) cost every reconnect of every
    /// connection its connect timeout for as long as it stayed away. (A paused process stands
    /// for it: the kernel accepts the connection, nothing answers.)
    @Test func theSentinelThatAnsweredIsAskedFirst() async throws {
        let (primary, replica, sentinels) = try await self.startGroup(sentinels: 1)
        defer { for server in [primary, replica] + sentinels { server.stop() } }
        let silent = try await RedisServerProcess.start()
        defer { silent.stop() }
        silent.pause()
        defer { silent.resume() }
        var configuration = RedisConfiguration()
        configuration.connectTimeout = .milliseconds(500)
        let good = RedisServerAddress(host: "127.0.0.1", port: sentinels[0].port)
        let dead = RedisServerAddress(host: "127.0.0.1", port: silent.port)
        configuration.sentinel = RedisSentinelConfiguration(nodes: [dead, good], masterName: "main")
        let resolver = SentinelResolver(configuration: configuration)
        #expect(resolver.askingOrder == [dead, good])
        let address = try await resolver.resolvePrimary(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, logger: Logger(label: "test"))
        #expect(address.port == primary.port)
        #expect(resolver.askingOrder == [good, dead], "the sentinel that answered comes first")
    }

    /// A sentinel that names a primary that is gone (cut off from the others, it missed the
    /// failover) answered, so it was asked first at every later attempt too, and the client
    /// connected to the gone address for good. A connect failure now moves the preference on.
    @Test func aSentinelNamingAGonePrimaryIsAskedAfterTheNext() async throws {
        let gone = try await RedisServerProcess.start()
        let stale = try await RedisServerProcess.startSentinel(monitoring: gone, masterName: "main", quorum: 1)
        defer { stale.stop() }
        let (primary, replica, sentinels) = try await self.startGroup(sentinels: 1)
        defer { for server in [primary, replica] + sentinels { server.stop() } }
        gone.stop()  // no replica to promote: the stale sentinel names it still
        var configuration = RedisConfiguration()
        configuration.connectTimeout = .seconds(2)
        let staleAddress = RedisServerAddress(host: "127.0.0.1", port: stale.port)
        let good = RedisServerAddress(host: "127.0.0.1", port: sentinels[0].port)
        configuration.sentinel = RedisSentinelConfiguration(nodes: [staleAddress, good], masterName: "main")
        let resolver = SentinelResolver(configuration: configuration)
        let logger = Logger(label: "test")
        await #expect(throws: (any Error).self, "the gone primary refuses the connection") {
            try await resolver.connectToPrimary(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, logger: logger)
        }
        #expect(resolver.askingOrder == [good, staleAddress], "the next sentinel comes first")
        let connection = try await resolver.connectToPrimary(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, logger: logger)
        #expect(connection.configuration.port == primary.port)
        await connection.close()
    }

    /// A `+switch-master` published while the watch was not subscribed (its sentinel went away
    /// with the old primary's node) was missed for good. Once subscribed again, the watch asks
    /// where the primary is, and follows it when it is not where the client thinks.
    @Test func theWatchCatchesUpWithASwitchItMissed() async throws {
        let (primary, replica, sentinels) = try await self.startGroup(sentinels: 1)
        defer { for server in [primary, replica] + sentinels { server.stop() } }
        let client = self.client(sentinels)
        client.start()
        defer { Task { await client.shutdown() } }
        try await client.waitUntilConnected(timeout: .seconds(30))
        #expect(try await eventually { client.state.withLockedValue { $0.sentinelConnection != nil } }, "watching")
        // As if the primary had moved while the watch was away: the client thinks it elsewhere.
        client.state.withLockedValue { $0.primary = RedisServerAddress(host: "127.0.0.1", port: 1) }
        let before = client.switchGeneration
        let sentinel = try await sentinels[0].connect()
        _ = try await sentinel.execute(RawCommand("CLIENT", "KILL", "TYPE", "pubsub"))
        await sentinel.close()
        #expect(try await eventually { client.switchGeneration > before }, "the watch followed the primary it was told of")
    }

    /// Discovery, then `SENTINEL FAILOVER`: commands reach the new primary and the subscription resumes.
    @Test func followsFailover() async throws {
        let (primary, replica, sentinels) = try await self.startGroup()
        let client = self.client(sentinels)
        client.start()
        try await client.waitUntilConnected(timeout: .seconds(30))
        #expect(client.primaryAddress?.port == primary.port)
        #expect(try await client.execute(SET("k", value: "before")) != nil)
        let subscription = try await client.subscribe(to: ["news"])
        #expect(try await client.execute(PUBLISH(channel: "news", message: "one")) >= 1)
        #expect(try await nextMessage(subscription)?.payload == ByteBuffer(string: "one"))

        let dedicated = try await client.makeDedicatedConnection()
        #expect(try await dedicated.execute(ROLE()) == .primary)

        // A sentinel that has only just seen the replica answers NOGOODSLAVE for a moment.
        let sentinel = try await sentinels[1].connect()
        let started = try await eventually { (try? await sentinel.execute(RawCommand("SENTINEL", "FAILOVER", "main"))) != nil }
        #expect(started, "SENTINEL FAILOVER was refused")
        await sentinel.close()

        let moved = try await eventually(timeout: .seconds(30)) {
            guard client.primaryAddress?.port == replica.port, client.connectionState(.commands) == .connected else { return false }
            return (try? await client.execute(SET("k", value: "after"))) != nil
        }
        #expect(moved, "the client did not reach the new primary")
        #expect(try await eventually { !dedicated.isActive }, "the dedicated connection to the old primary is still open")
        // The subscription resumes on the new primary (a message published there is delivered).
        // (published until one arrives: the re-subscription may trail the command connection)
        let publisher = Task {
            while !Task.isCancelled {
                _ = try? await client.execute(PUBLISH(channel: "news", message: "two"))
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
        let delivered = try await nextMessage(subscription, timeout: .seconds(30))
        publisher.cancel()
        #expect(delivered?.payload == ByteBuffer(string: "two"), "no message after the failover")
        let direct = try await replica.connect()
        #expect(try await direct.execute(GET("k")) == ByteBuffer(string: "after"))
        #expect(try await direct.execute(ROLE()) == .primary)
        await direct.close()
        await subscription.unsubscribe()
        await client.shutdown()
    }

    /// Password-protected primary, replica and sentinels: the sentinels' password is used for
    /// them, the URL's for the primary.
    @Test func authenticatesToSentinelsAndPrimary() async throws {
        let primary = try await RedisServerProcess.start(["--requirepass", "data-secret"])
        let replica = try await RedisServerProcess.startReplica(of: primary, password: "data-secret")
        let sentinel = try await RedisServerProcess.startSentinel(
            monitoring: primary, masterName: "main", extraConfiguration: "sentinel auth-pass main data-secret\nrequirepass sentinel-secret\n")
        var configuration = try RedisConfiguration(url: "redis://:data-secret@unused.invalid/3")
        configuration.connectTimeout = .seconds(10)  // a TLS handshake on a loaded machine takes seconds
        configuration.sentinel = RedisSentinelConfiguration(
            nodes: [RedisServerAddress(host: "127.0.0.1", port: sentinel.port)], masterName: "main", password: "sentinel-secret")
        var logger = Logger(label: "sentinel-test")
        logger.logLevel = .critical
        let client = RedisClient(configuration: configuration, logger: logger)
        client.start()
        try await client.waitUntilConnected(timeout: .seconds(30))
        #expect(client.primaryAddress?.port == primary.port)
        #expect(try await client.execute(SET("k", value: "db3")) != nil)
        let direct = try await primary.connect {
            $0.password = "data-secret"
            $0.database = 3
        }
        #expect(try await direct.execute(GET("k")) == ByteBuffer(string: "db3"))
        await direct.close()
        await client.shutdown()

        // Without the sentinels' password nothing is resolved.
        configuration.sentinel?.password = nil
        await #expect(throws: RedisClientError.noPrimary) {
            _ = try await SentinelResolver(configuration: configuration).resolvePrimary(
                eventLoopGroup: MultiThreadedEventLoopGroup.singleton, logger: logger)
        }
        _ = replica
    }

    /// TLS everywhere (`rediss://`): the sentinels and the primary are reached over TLS, and the
    /// client follows a failover.
    @Test(.enabled(if: TestCertificates.openssl != nil, "openssl not installed"))
    func sentinelsAndPrimaryOverTLS() async throws {
        let tls = RedisServerProcess.TLS(certificates: try TestCertificates())
        let primary = try await RedisServerProcess.start(tls: tls)
        let replica = try await RedisServerProcess.startReplica(of: primary, tls: tls)
        let sentinel = try await RedisServerProcess.startSentinel(monitoring: primary, masterName: "main", tls: tls)
        let watcher = try await sentinel.connect()
        let knowsReplica = try await eventually {
            "\(try await watcher.execute(RawCommand("SENTINEL", "REPLICAS", "main")))".contains("\(replica.port)")
        }
        #expect(knowsReplica)
        var configuration = try RedisConfiguration(url: "rediss://unused.invalid")
        configuration.tls?.caFile = tls.certificates.caFile
        configuration.connectTimeout = .seconds(10)  // a TLS handshake on a loaded machine takes seconds
        configuration.reconnectBackoffMaximum = .milliseconds(500)
        configuration.sentinel = RedisSentinelConfiguration(nodes: [RedisServerAddress(host: "127.0.0.1", port: sentinel.port)], masterName: "main")
        var logger = Logger(label: "sentinel-test")
        logger.logLevel = .critical
        let client = RedisClient(configuration: configuration, logger: logger)
        client.start()
        try await client.waitUntilConnected(timeout: .seconds(30))
        #expect(client.primaryAddress?.port == primary.port)
        let started = try await eventually { (try? await watcher.execute(RawCommand("SENTINEL", "FAILOVER", "main"))) != nil }
        #expect(started)
        await watcher.close()
        let moved = try await eventually(timeout: .seconds(30)) {
            guard client.primaryAddress?.port == replica.port else { return false }
            return (try? await client.execute(SET("k", value: "tls"))) != nil
        }
        #expect(moved, "the client did not follow the failover over TLS")
        await client.shutdown()
    }

    /// The primary dies: the sentinels promote the replica, and the client follows.
    @Test func followsPrimaryCrash() async throws {
        let (primary, replica, sentinels) = try await self.startGroup()
        let client = self.client(sentinels)
        client.start()
        try await client.waitUntilConnected(timeout: .seconds(30))
        primary.kill()
        let moved = try await eventually(timeout: .seconds(30)) {
            guard client.primaryAddress?.port == replica.port else { return false }
            return (try? await client.execute(SET("k", value: "v"))) != nil
        }
        #expect(moved, "the client did not reach the promoted replica")
        await client.shutdown()
    }
}
