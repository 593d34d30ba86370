import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Redis
import RedisServerTesting
import SwitchboardCore
import SwitchboardWire
import Testing

@testable import SwitchboardRedis

/// How an instance learns that Redis lost its presence registry (``RegistryLoss``).
struct RegistryLossTests {
    @Test func aLossIsActedOnOnce() {
        let losses = RegistryLosses()
        #expect(losses.told(.numbered(1)))
        #expect(!losses.told(.numbered(1)))
        #expect(losses.lastSeen == 1)
        #expect(losses.told(.numbered(2)))
        #expect(!losses.told(.numbered(1)))
        // From an older library: every answer is a loss.
        #expect(losses.told(.unnumbered) && losses.told(.unnumbered))
        #expect(losses.lastSeen == 2)
    }

    /// Redis flushed after loop 0's first batch: loop 1's first batch (an instance Redis knew)
    /// finds the loss, and loop 0's next batch does not close the sessions a second time.
    @Test(.enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
    func anyLoopFindsTheLossAndTheSessionsAreClosedOnce() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let loops = Array(group.makeIterator())
        let closes = NIOLockedValueBox(0)
        let lifecycle = RedisLifecycle(
            client: client, settings: LifecycleStreamSettings(), instance: "gw~1", loops: loops,
            logger: Logger(label: "quiet") { _ in SwiftLogNoOpLogHandler() }, onRegistryLost: { closes.withLockedValue { $0 += 1 } })
        await lifecycle.start()
        func record(_ kind: LifecycleFact.Kind, session: String, on loop: any EventLoop) async -> LifecycleWriteError? {
            await withCheckedContinuation { continuation in
                loop.execute {
                    lifecycle.record(LifecycleFact(session: session, kind: kind, time: 1), on: loop) { continuation.resume(returning: $0) }
                }
            }
        }
        #expect(await record(.connected(user: "mo"), session: "s1", on: loops[0]) == nil)
        _ = try await client.execute(RawCommand("FLUSHALL"))
        #expect(await record(.connected(user: "mo"), session: "s2", on: loops[1]) == nil)
        #expect(closes.withLockedValue { $0 } == 1)
        #expect(lifecycle.losses.lastSeen > 0)
        #expect(await record(.disconnected(.error), session: "s1", on: loops[0]) == nil)
        #expect(await record(.disconnected(.error), session: "s2", on: loops[1]) == nil)
        #expect(closes.withLockedValue { $0 } == 1)
        #expect(try await lifecycle.userPresence("mo").online == false)
        await client.shutdown()
        try await group.shutdownGracefully()
    }
}
