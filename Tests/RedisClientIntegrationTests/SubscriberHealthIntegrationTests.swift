import NIOConcurrencyHelpers
import NIOCore
import Redis
import RedisServerTesting
import Testing

/// A subscriber connection writes nothing of its own: a server gone without a FIN or a reset (a
/// power loss, a partition; here a server stopped with SIGSTOP, whose kernel still takes the
/// bytes) left it looking connected for good, delivering nothing. It sends `PING` every
/// `subscriberPingInterval` now, and one unanswered closes it: it reconnects and subscribes
/// again once the server answers.
@Suite(.enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct SubscriberHealthIntegrationTests {
    @Test func aSubscriberWhoseServerStoppedAnsweringReconnects() async throws {
        let server = try await RedisServerProcess.start()
        defer {
            server.resume()
            server.stop()
        }
        let client = try await server.client {
            $0.commandTimeout = .milliseconds(500)
            $0.connectTimeout = .milliseconds(500)
            $0.subscriberPingInterval = .milliseconds(200)
        }
        let received = NIOLockedValueBox<[String]>([])
        _ = try await client.subscribe(to: ["c"]) { message in received.withLockedValue { $0.append(String(buffer: message.payload)) } }
        #expect(client.connectionState(.subscriptions) == .connected)
        server.pause()
        #expect(try await eventually(timeout: .seconds(20)) { client.connectionState(.subscriptions) != .connected })
        server.resume()
        #expect(try await eventually { client.connectionState(.subscriptions) == .connected })
        let publisher = try await server.client()
        #expect(
            try await eventually {
                _ = try? await publisher.execute(PUBLISH(channel: "c", message: "back"))
                return received.withLockedValue { $0.contains("back") }
            })
        await publisher.shutdown()
        await client.shutdown()
    }
}
