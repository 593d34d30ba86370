import NIOCore
import NIOPosix
import Redis
import RedisServerTesting
import SwitchboardWire
import Testing

@testable import SwitchboardRoutes

/// The `redis-pubsub` route against a real redis-server.
@Suite("Redis Pub/Sub route", .enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct RedisPubSubRouteTests {
    static func message(_ body: String) -> AppMessage {
        AppMessage(
            destination: "/app/chat", body: ByteBuffer(string: body), headers: [:], contentType: "text/plain", sessionID: "s1", user: "alice",
            instanceID: "gw-1", timestamp: 1_700_000_000_000)
    }

    /// A `PUBLISH` no backend was subscribed to reached nobody, yet the SEND got its RECEIPT
    /// (delivered, it says): with `require-subscriber` it fails, naming why; without, it is
    /// counted and goes through (at most once, documented). With a subscriber it goes through.
    @Test func aPublishThatReachesNoSubscriberFailsWhenASubscriberIsRequired() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let strict = RedisPubSubRoute(channel: "chat", redis: .single(client), requireSubscriber: true)
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        let error = await #expect(throws: RouteError.self) { _ = try await strict.handle(Self.message("nobody"), on: loop).get() }
        #expect(error?.code == .notDelivered)
        #expect(
            error?.description
                == "PUBLISH to redis channel chat reached no subscriber: not delivered (a redis-pubsub route keeps nothing for a backend that is away; a redis-stream route does)"
        )
        let lenient = RedisPubSubRoute(channel: "chat", redis: .single(client))
        #expect(try await lenient.handle(Self.message("nobody either"), on: loop).get().isEmpty)
        let backend = try await server.client()
        let subscription = try await backend.subscribe(to: ["chat"])
        #expect(try await strict.handle(Self.message("hello"), on: loop).get().isEmpty)
        #expect(try await nextMessage(subscription).map { String(buffer: $0.payload) } == "hello")
        await backend.shutdown()
        await client.shutdown()
    }
}
