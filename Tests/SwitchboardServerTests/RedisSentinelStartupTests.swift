import Logging
import NIOPosix
import Redis
import RedisServerTesting
import Testing

@testable import SwitchboardServer

/// `redis.sentinel.master-name` checked at start-up against real sentinels.
@Suite(.enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct RedisSentinelStartupTests {
    func configuration(sentinels: [Int], masterName: String) -> RedisConfiguration {
        var configuration = RedisConfiguration()
        configuration.connectTimeout = .seconds(5)  // the sentinels must answer (port 1 still refuses at once)
        configuration.sentinel = RedisSentinelConfiguration(
            nodes: sentinels.map { RedisServerAddress(host: "127.0.0.1", port: $0) }, masterName: masterName)
        return configuration
    }

    /// A name no sentinel monitors stops start-up, naming the key and the sentinels asked.
    @Test func unknownMasterNameStopsStartUp() async throws {
        let primary = try await RedisServerProcess.start()
        defer { primary.stop() }
        let sentinel = try await RedisServerProcess.startSentinel(monitoring: primary, masterName: "main", quorum: 1)
        defer { sentinel.stop() }
        do {
            try await SwitchboardGateway.checkMasterName(
                configuration: configuration(sentinels: [sentinel.port, 1], masterName: "mian"), group: MultiThreadedEventLoopGroup.singleton,
                logger: Logger(label: "t"))
            Issue.record("a master name no sentinel knows must stop start-up")
        } catch let error as SwitchboardConfiguration.Invalid {
            #expect(error.description.hasPrefix("redis.sentinel.master-name: no sentinel monitors a primary named 'mian'"), "\(error)")
            #expect(error.description.contains("asked 127.0.0.1:\(sentinel.port)"), "\(error)")
            #expect(error.description.contains("not answering: 127.0.0.1:1"), "\(error)")
        }
        // The right name passes, and so does a set of sentinels none of which answers (the
        // gateway then starts not ready and keeps asking).
        try await SwitchboardGateway.checkMasterName(
            configuration: configuration(sentinels: [1, sentinel.port], masterName: "main"), group: MultiThreadedEventLoopGroup.singleton,
            logger: Logger(label: "t"))
        try await SwitchboardGateway.checkMasterName(
            configuration: configuration(sentinels: [1], masterName: "main"), group: MultiThreadedEventLoopGroup.singleton,
            logger: Logger(label: "t"))
    }
}
