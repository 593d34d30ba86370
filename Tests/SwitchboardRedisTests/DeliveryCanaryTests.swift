import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Redis
import RedisServerTesting
import SwitchboardWire
import Testing

@testable import SwitchboardRedis

/// The delivery canary measures how old the newest own canary that came back is, from when it
/// was sent, and only this process's.
@Suite(.enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct DeliveryCanaryTests {
    /// Canaries that keep coming but late (a saturated subscriber, a growing output buffer)
    /// kept readiness green: the age was the time since the last arrival. And another process
    /// configured with the same `instance.id` kept this one green with its canaries.
    @Test func aLateCanaryOrAnotherProcesssKeepsTheInstanceLate() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let client = try await server.client()
        var logger = Logger(label: "canary-test")
        logger.logLevel = .critical
        let canary = DeliveryCanary(
            redis: .single(client), naming: RedisChannelNaming(), instanceID: "gw", interval: .milliseconds(50), timeout: .milliseconds(300),
            loop: group.any(), logger: logger)
        try await canary.start()
        #expect(try await eventually { canary.lateReason == nil && (canary.ownAge ?? 99) < 0.3 })
        canary.stop()
        #expect(try await eventually { canary.lateReason != nil }, "late once no canary comes")
        let channel = try #require(canary.watchedChannels.first)
        let now = NIODeadline.now().uptimeNanoseconds
        // Sent ten seconds ago, arriving now: still late.
        canary.received("gw \(canary.token) \(now - 10_000_000_000)", on: channel)
        #expect(canary.lateReason != nil)
        // Fresh, but another process's (same instance id, another token), or an older gateway's.
        canary.received("gw other-token \(now)", on: channel)
        canary.received("gw", on: channel)
        #expect(canary.lateReason != nil)
        #expect(canary.peers["gw"] == nil, "not a peer either")
        // Its own, but a time that does not parse (forged: the token is on the channel).
        canary.received("gw \(canary.token) abc", on: channel)
        #expect(canary.lateReason != nil && canary.peers["gw"] == nil)
        // Back (a history repair round starts): once, when it goes from late to on time; each
        // late one arriving while the path lags is no recovery.
        let recoveries = NIOLockedValueBox(0)
        canary.onRecovered.withLockedValue { $0 = { recoveries.withLockedValue { $0 += 1 } } }
        #expect(try await eventually { (canary.ownAge ?? 0) > 1.2 })
        for lag in [900, 800, 700] as [UInt64] {  // newer each, each older than the 300 ms timeout
            canary.received("gw \(canary.token) \(NIODeadline.now().uptimeNanoseconds - lag * 1_000_000)", on: channel)
        }
        #expect(recoveries.withLockedValue { $0 } == 0 && canary.lateReason != nil)
        // Fresh and its own: on time again.
        canary.received("gw \(canary.token) \(NIODeadline.now().uptimeNanoseconds)", on: channel)
        #expect(canary.lateReason == nil)
        canary.received("gw \(canary.token) \(NIODeadline.now().uptimeNanoseconds)", on: channel)
        #expect(recoveries.withLockedValue { $0 } == 1)
        // A peer's canary, in either format, is a peer's.
        canary.received("gw2 t \(now)", on: channel)
        canary.received("gw3", on: channel)
        #expect(Set(canary.peers.keys) == ["gw2", "gw3"])
        await client.shutdown()
        try await group.shutdownGracefully()
    }
}
