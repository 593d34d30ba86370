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

    /// A live server's answers, whatever their shape, keep the connection: in RESP2 subscribe
    /// mode `PING` is answered `[pong, ""]` (decoding it as a string failed, and the check closed
    /// every subscriber connection at each interval), and an error reply (`-NOPERM` here, as
    /// `-LOADING` or `-BUSY`) comes from a server that is there.
    @Test(arguments: [RedisProtocolPreference.resp2, .resp3WithFallback])
    func aLiveServersAnswersKeepTheSubscriber(_ protocolPreference: RedisProtocolPreference) async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client {
            $0.protocolPreference = protocolPreference
            $0.subscriberPingInterval = .milliseconds(100)
        }
        _ = try await client.subscribe(to: ["c"]) { _ in }
        let admin = try await server.client()
        /// A field of `cmdstat_ping` (`calls`, `rejected_calls`).
        @Sendable func pings(_ field: String) async throws -> Int {
            let stats = try String(fromRESP: try await admin.execute(RawCommand("INFO", "commandstats")))
            guard let line = stats.split(separator: "\r\n").first(where: { $0.hasPrefix("cmdstat_ping:") }) else { return 0 }
            let fields = line.dropFirst("cmdstat_ping:".count).split(separator: ",")
            return fields.first { $0.hasPrefix(field + "=") }.flatMap { Int($0.dropFirst(field.count + 1)) } ?? 0
        }
        #expect(try await eventually { try await pings("calls") >= 3 })
        #expect(client.reconnectCount == 0)
        // The server refuses PING from now on (an ACL): still there, still subscribed.
        _ = try await admin.execute(RawCommand("ACL", "SETUSER", "default", "-ping"))
        #expect(try await eventually { try await pings("rejected_calls") >= 3 })
        #expect(client.reconnectCount == 0 && client.connectionState(.subscriptions) == .connected)
        _ = try await admin.execute(RawCommand("ACL", "SETUSER", "default", "+ping"))
        await admin.shutdown()
        await client.shutdown()
    }
}
