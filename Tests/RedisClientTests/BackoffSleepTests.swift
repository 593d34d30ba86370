import NIOCore
import Testing

@testable import Redis

/// The reconnect loops' sleep between attempts.
@Suite struct BackoffSleepTests {
    /// A wake-up (a new primary announced, the command connection back) during a connect attempt
    /// that then failed (it waited out its connect timeout): the sleep after it is skipped. The
    /// generation was read when the sleep began, so such a wake-up was missed, and the
    /// subscriber waited out a backoff of up to 10 s with its gap growing.
    @Test func aWakeUpDuringTheFailedAttemptSkipsTheSleep() async {
        let client = RedisClient(configuration: RedisConfiguration())
        let since = client.switchGeneration
        client.state.withLockedValue { $0.switchGeneration += 1 }
        let start = ContinuousClock.now
        await client.backoffSleep(.seconds(10), since: since)
        #expect(ContinuousClock.now - start < .seconds(5))
        await client.shutdown()
    }
}

/// Which sentinel the resolver asks first.
@Suite struct SentinelPreferenceTests {
    /// Connections that all found the same sentinel stale move the preference on by one, not
    /// by as many as they are (with as many connections as sentinels it came back to the stale one).
    @Test func aStaleSentinelIsPassedOnceWhateverHowManyFoundIt() {
        var configuration = RedisConfiguration()
        let nodes = (1...3).map { RedisServerAddress(host: "127.0.0.1", port: 26_000 + $0) }
        configuration.sentinel = RedisSentinelConfiguration(nodes: nodes, masterName: "main")
        let resolver = SentinelResolver(configuration: configuration)
        for _ in 0..<3 { resolver.preferNext(after: 0) }
        #expect(resolver.askingOrder == [nodes[1], nodes[2], nodes[0]])
    }
}
