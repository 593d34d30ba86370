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
    /// (delivered, it says): it now fails, naming why. With a subscriber it goes through.
    @Test func aPublishThatReachesNoSubscriberFails() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let route = RedisPubSubRoute(channel: "chat", redis: .single(client))
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        let error = await #expect(throws: RouteError.self) { _ = try await route.handle(Self.message("nobody"), on: loop).get() }
        #expect(error?.code == .notDelivered)
        #expect(
            error?.description
                == "PUBLISH to redis channel chat reached no subscriber: not delivered (a redis-pubsub route keeps nothing for a backend that is away; a redis-stream route does)"
        )
        let backend = try await server.client()
        let received = AsyncStream<String>.makeStream()
        let subscription = try await backend.subscribe(to: ["chat"]) { message in received.continuation.yield(String(buffer: message.payload)) }
        let replies = try await route.handle(Self.message("hello"), on: loop).get()
        #expect(replies.isEmpty)
        var iterator = received.stream.makeAsyncIterator()
        #expect(await iterator.next() == "hello")
        _ = subscription
        await backend.shutdown()
        await client.shutdown()
    }
}
