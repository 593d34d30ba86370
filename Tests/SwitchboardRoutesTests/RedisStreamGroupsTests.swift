import Dispatch
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Redis
import RedisServerTesting
import Testing

@testable import SwitchboardRoutes

/// The consumer groups of a Redis stream route, against a real redis-server.
@Suite("Redis stream groups", .enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
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

    /// A group that reads nothing falls behind: its lag (entries not delivered to it) is read,
    /// and a group within a tenth of the route's max-length of the stream's end is reported
    /// (`XADD … MAXLEN ~` trims entries past it, answered with a RECEIPT and never read).
    @Test func aGroupNearTheMaxLengthIsReported() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let groups = RedisStreamGroups(
            stream: "app:lagging", groups: ["idle", "busy"], maxLength: 100, redis: .single(client),
            eventLoop: MultiThreadedEventLoopGroup.singleton.any())
        _ = try await groups.verify().get()
        #expect(try await groups.readLag().isEmpty)
        for i in 0..<95 { _ = try await client.execute(XADD(key: "app:lagging", fields: [("n", .string("\(i)"))])) }
        // "busy" reads what is there.
        _ = try await client.execute(RawCommand("XREADGROUP", "GROUP", "busy", "c", "COUNT", "1000", "STREAMS", "app:lagging", ">"))
        let near = try await groups.readLag()
        #expect(near.map(\.group) == ["idle"] && near.first?.lag == 95, "\(near)")
        await client.shutdown()
    }

    /// A SEND that comes while another still waits for the verification that passed goes
    /// behind it, in order, and starts no other verification (each SEND after a reconnect
    /// verified again for as long as some were waiting).
    @Test func aSendBehindOneStillWaitingDoesNotVerifyAgain() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let groups = RedisStreamGroups(
            stream: "app:orders", groups: ["billing", "audit"], redis: .single(client),
            eventLoop: MultiThreadedEventLoopGroup.singleton.any())
        // The session's loop is held: the first SEND's XADD waits there after its verification.
        let session = HeldSession()
        defer { session.release() }
        let first = groups.whenVerified(on: session.loop) { session.send("first") }
        #expect(try await eventually { groups.isVerified })
        let admin = try await server.connect()
        @Sendable func xgroupCalls() async throws -> Int {
            let info = "\(try await admin.execute(RawCommand("INFO", "commandstats")))"
            guard let range = info.range(of: "cmdstat_xgroup|create:calls=") else { return 0 }
            return Int(info[range.upperBound...].prefix { $0.isNumber }) ?? 0
        }
        let verifications = try await xgroupCalls()
        #expect(verifications == 2)
        let second = groups.whenVerified(on: session.loop) { session.send("second") }
        session.release()
        try await first.get()
        try await second.get()
        #expect(session.sent.withLockedValue { $0 } == ["first", "second"])
        #expect(try await xgroupCalls() == verifications, "no second round of XGROUP CREATE")
        await admin.close()
        await client.shutdown()
        try await session.shutdown()
    }

    /// A SEND that came, with another still waiting, while the periodic check ran joined that
    /// check although the groups were verified: a check failing then (a timeout) failed the
    /// SEND with "could not be verified". It goes behind the verification that passed, in order.
    @Test func aSendDuringThePeriodicCheckJoinsTheVerificationThatPassed() async throws {
        let server = try await RedisServerProcess.start()
        defer {
            server.resume()
            server.stop()
        }
        let client = try await server.client()
        let groups = RedisStreamGroups(
            stream: "app:orders", groups: ["billing"], redis: .single(client), eventLoop: MultiThreadedEventLoopGroup.singleton.any())
        // The first SEND waits on the held session loop after its verification passed.
        let session = HeldSession()
        defer { session.release() }
        let first = groups.whenVerified(on: session.loop) { session.send("first") }
        #expect(try await eventually { groups.isVerified })
        // The periodic check starts and cannot finish (Redis does not answer).
        server.pause()
        let periodic = groups.verify()
        let second = groups.whenVerified(on: session.loop) { session.send("second") }
        session.release()
        try await first.get()
        try await second.get()
        #expect(session.sent.withLockedValue { $0 } == ["first", "second"])
        server.resume()
        _ = try? await periodic.get()
        await client.shutdown()
        try await session.shutdown()
    }
}

/// A session's event loop that the test holds (a SEND's continuation waits there), and the
/// SENDs it made, in order.
final class HeldSession: Sendable {
    let loops = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let loop: any EventLoop
    let sent = NIOLockedValueBox<[String]>([])
    private let gate = DispatchSemaphore(value: 0)
    private let released = NIOLockedValueBox(false)

    init() {
        loop = loops.next()
        loop.execute { [gate] in gate.wait() }
    }

    @Sendable func send(_ name: String) -> EventLoopFuture<Void> {
        sent.withLockedValue { $0.append(name) }
        return loop.makeSucceededVoidFuture()
    }

    func release() {
        let first = released.withLockedValue { released in
            defer { released = true }
            return !released
        }
        guard first else { return }
        gate.signal()
    }

    func shutdown() async throws {
        release()
        try await loops.shutdownGracefully()
    }
}
