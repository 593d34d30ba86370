import NIOCore
import NIOPosix
import Redis
import RedisServerTesting
import Testing

@testable import SwitchboardRoutes

/// The consumer groups of a Redis stream route, against a real redis-server.
@Suite("Redis stream groups", .enabled(if: RedisServerProcess.isAvailable, "redis-server not installed"))
struct RedisStreamGroupsTests {
    /// Calls made while a verification is in flight join it: every call completes (none leaves a
    /// promise behind, which NIO traps on in debug builds), and the groups are created once.
    @Test func callsDuringAVerificationJoinItAndAllComplete() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let groups = RedisStreamGroups(
            stream: "app:orders", groups: ["billing", "audit"], redis: .single(client),
            eventLoop: MultiThreadedEventLoopGroup.singleton.any())
        #expect(!groups.isVerified)
        let calls = (0..<20).map { _ in groups.verify() }
        var results: [[String]] = []
        for call in calls { results.append(try await call.get().sorted()) }
        // The first call creates both; a call that joins it reports the same; a call made after
        // it finished verifies again and finds both there.
        #expect(results[0] == ["audit", "billing"])
        #expect(results.allSatisfy { $0 == ["audit", "billing"] || $0.isEmpty })
        #expect(groups.isVerified && groups.notReadyReason == nil)
        #expect(try await groups.verify().get() == [], "both exist now")
        await client.shutdown()
    }
}
