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
