import Logging
import NIOPosix
import Redis
import RedisServerTesting
import Testing

@testable import SwitchboardServer

/// `redis.cluster.nodes`: seeds parsed, conflicts refused, and start-up errors naming the key.
@Suite struct RedisClusterSettingsTests {
    @Test func readsSeedNodes() async throws {
        let loaded = try await ConfigurationCheckTests().load(["redis.url=rediss://svc:secret@ignored:1", "redis.cluster.nodes=10.0.0.1:7000,node-b"])
        let cluster = try #require(loaded.configuration.redis?.cluster)
        #expect(cluster.nodes == [RedisServerAddress(host: "10.0.0.1", port: 7000), RedisServerAddress(host: "node-b", port: 6379)])
        #expect(try await ConfigurationCheckTests().load(["redis.url=redis://127.0.0.1"]).configuration.redis?.cluster == nil)
    }

    @Test func rejectsConflicts() async {
        let check = ConfigurationCheckTests()
        #expect(
            await check.loadError(["redis.url=redis://x", "redis.cluster.nodes=a:1", "redis.sentinel.nodes=b:2", "redis.sentinel.master-name=m"])
                == "redis.cluster.nodes and redis.sentinel.nodes are both set: a Redis Cluster fails over by itself, choose one")
        #expect(await check.loadError(["redis.url=redis://x", "redis.cluster.nodes=a:port"]) == "redis.cluster.nodes: 'a:port' is not host:port")
        #expect(
            await check.loadError(["redis.url=redis://x/3", "redis.cluster.nodes=a:1"])
                == "redis.url selects database 3, but a Redis Cluster (redis.cluster.nodes) has only database 0")
        let events = await check.loadError(["redis.url=redis://x", "redis.cluster.nodes=a:1", "events.enabled=true"])
        #expect(events?.hasPrefix("events.enabled is not available on Redis Cluster") == true, "\(events ?? "no error")")
    }

    /// No seed answers: start-up fails at once with the key and each node's failure.
    @Test func unreachableSeedsStopStartUp() async throws {
        var configuration = RedisConfiguration()
        configuration.connectTimeout = .milliseconds(500)
        configuration.cluster = RedisClusterConfiguration(nodes: [RedisServerAddress(host: "127.0.0.1", port: 1)])
        do {
            _ = try await SwitchboardGateway.connectCluster(configuration: configuration, group: MultiThreadedEventLoopGroup.singleton, logger: Logger(label: "t"))
            Issue.record("an unreachable seed must stop start-up")
        } catch let error as SwitchboardConfiguration.Invalid {
            #expect(error.description.hasPrefix("redis.cluster.nodes: no seed node answered"), "\(error)")
            #expect(error.description.contains("127.0.0.1:1"), "\(error)")
        }
    }

    /// A standalone server given as a cluster node: the error says so.
    @Test(.enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
    func nonClusterServerStopsStartUp() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        var configuration = RedisConfiguration()
        configuration.cluster = RedisClusterConfiguration(nodes: [RedisServerAddress(host: "127.0.0.1", port: server.port)])
        do {
            _ = try await SwitchboardGateway.connectCluster(configuration: configuration, group: MultiThreadedEventLoopGroup.singleton, logger: Logger(label: "t"))
            Issue.record("a non-cluster server must stop start-up")
        } catch let error as SwitchboardConfiguration.Invalid {
            #expect(error.description.hasPrefix("redis.cluster.nodes: 127.0.0.1:\(server.port) is not a cluster node"), "\(error)")
        }
    }
}
