import Redis
import Testing

@testable import SwitchboardServer

/// `redis.sentinel.*`: nodes and master name together; the URL keeps credentials and database.
@Suite struct RedisSentinelSettingsTests {
    @Test func readsNodesAndMasterName() async throws {
        let loaded = try await ConfigurationCheckTests().load([
            "redis.url=redis://:secret@ignored/2", "redis.sentinel.nodes=10.0.0.1:26380,sentinel-b",
            "redis.sentinel.master-name=main", "redis.sentinel.password=sentinel-secret",
        ])
        let sentinel = try #require(loaded.configuration.redis?.sentinel)
        #expect(sentinel.nodes == [RedisServerAddress(host: "10.0.0.1", port: 26380), RedisServerAddress(host: "sentinel-b", port: 26379)])
        #expect(sentinel.masterName == "main")
        #expect(sentinel.password == "sentinel-secret" && sentinel.username == nil)
        #expect(try await ConfigurationCheckTests().load(["redis.url=redis://127.0.0.1"]).configuration.redis?.sentinel == nil)
    }

    @Test func rejectsHalfConfigurations() async {
        let check = ConfigurationCheckTests()
        #expect(
            await check.loadError(["redis.url=redis://x", "redis.sentinel.nodes=a:1"]) == "redis.sentinel.nodes is set without redis.sentinel.master-name")
        #expect(
            await check.loadError(["redis.url=redis://x", "redis.sentinel.master-name=main"])
                == "redis.sentinel.master-name is set without redis.sentinel.nodes")
        #expect(
            await check.loadError(["redis.url=redis://x", "redis.sentinel.nodes=a:port", "redis.sentinel.master-name=main"])
                == "redis.sentinel.nodes: 'a:port' is not host:port")
    }
}
