import Logging
import NIOCore
import NIOPosix
import Redis
import RedisServerTesting
import SwitchboardCore
import SwitchboardWire
import Testing

@testable import SwitchboardRedis

/// Nothing of the engine runs after ``RedisEngine/shutdown()``: the caller stops its event
/// loops next, and a task still running would complete a future on a loop that is gone.
@Suite struct EngineShutdownTests {
    @Test func noTaskOfTheEngineOutlivesItsShutdownWhileRedisNeverAnswered() async throws {
        // Nothing listens there: the client keeps reconnecting, the engine's checks keep waiting.
        let port = try await RedisServerProcess.freePort()
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.any()
        var configuration = RedisConfiguration(host: "127.0.0.1", port: port)
        configuration.reconnectBackoffMinimum = .milliseconds(10)
        let client = RedisClient(configuration: configuration, eventLoopGroup: group, logger: logger)
        let hub = FanoutHub(eventLoops: [loop])
        let engine = RedisEngine(
            redis: .single(client), hub: hub, naming: RedisChannelNaming(), instanceID: "gw",
            messageIDs: MessageIDGenerator(instanceID: "gw"), eventLoop: loop, logger: logger, history: DestinationHistory.Settings())
        try await engine.start()
        // The eviction-policy check polls while the client is not connected; a destination with
        // history waits for where its history stands; one whose last subscriber left unsubscribes.
        engine.interestActivated(try DestinationPattern("/topic/kept"), generation: 1)
        engine.interestActivated(try DestinationPattern("/topic/left"), generation: 2)
        engine.interestDeactivated(try DestinationPattern("/topic/left"))
        #expect(engine.tasks.count >= 2)

        await engine.shutdown()
        #expect(engine.tasks.count == 0, "every task of the engine ended before shutdown returned")
        try await group.shutdownGracefully()
    }
}
