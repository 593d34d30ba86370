import NIOCore
import NIOPosix
import RedisServerTesting
import Testing

@testable import SwitchboardRoutes

#if canImport(Glibc)
import Glibc
#endif

/// `webhooks.max-connections-per-host` is a hard limit on calls in flight to one backend, and a
/// call that failed after its request went out does not say "cannot connect".
@Suite struct WebhookClientLimitTests {
    static func client(limit: Int) throws -> WebhookClient {
        var settings = WebhookClient.Settings()
        settings.maxConnectionsPerHost = limit
        return try WebhookClient(settings: settings, eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
    }

    /// A probe saw 150 connections (and requests) to a backend that never answered, with the
    /// limit at 64: AsyncHTTPClient's per-host limit is a soft one.
    @Test func callsToAHungBackendStopAtTheLimitAndTheRestTimeOutUnsent() async throws {
        let server = try await CannedWebhookServer(reply: nil)
        let client = try Self.client(limit: 2)
        let url = "http://127.0.0.1:\(server.port)/hook"
        let first = try WebhookRoute(url: url, timeout: .seconds(3), client: client)
        let later = try WebhookRoute(url: url, timeout: .milliseconds(300), client: client)
        // Sessions on every event loop (AsyncHTTPClient exceeded its soft limit for them).
        let loops = Array(MultiThreadedEventLoopGroup.singleton.makeIterator())
        // Two calls hold both slots for 3 s; four more wait 300 ms for one, then fail unsent.
        let calls = (0..<6).map { i in (i < 2 ? first : later).handle(WebhookRequestTests.message(), on: loops[i % loops.count]) }
        var errors: [String] = []
        for call in calls {
            do { _ = try await call.get() } catch { errors.append("\(error)") }
        }
        #expect(errors.count == 6)
        #expect(server.requests.count == 2 && server.connections == 2, "\(server.requests.count) requests, \(server.connections) connections")
        let unsent = errors.filter { $0.contains("waiting for one of the 2 connections to 127.0.0.1:\(server.port) (webhooks.max-connections-per-host); not sent") }
        #expect(unsent.count == 4, "\(errors)")
        #expect(client.slots.load("http://127.0.0.1:\(server.port)") == (0, 0))
        try await client.shutdown()
        await server.close()
    }

    /// Calls beyond the limit wait for a free slot and then go out, one connection reused.
    @Test func callsBeyondTheLimitWaitAndSucceed() async throws {
        let server = try await CannedWebhookServer(reply: (.noContent, ""))
        let client = try Self.client(limit: 1)
        let route = try WebhookRoute(url: "http://127.0.0.1:\(server.port)/hook", timeout: .seconds(10), client: client)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let calls = (0..<8).map { _ in route.handle(WebhookRequestTests.message(), on: loop) }
        for call in calls { _ = try await call.get() }
        #expect(server.requests.count == 8)
        #expect(server.connections == 1)
        try await client.shutdown()
        await server.close()
    }

    /// A backend whose accept queue is full (it never accepts): the call's deadline passes while
    /// it connects, so the request was never sent, and the error says so (the re-run of a probe
    /// saw such calls reported as plain timeouts, as if the backend might have acted on them).
    @Test func aDeadlinePassedWhileConnectingSaysNotSent() async throws {
        #if canImport(Glibc)
        let listener = try LoopbackSocket()
        defer { listener.close() }
        #expect(listener.listen(backlog: 0))
        let port = listener.port
        // Fill the accept queue: later SYNs are dropped, and connecting hangs.
        var fillers: [any Channel] = []
        for _ in 0..<2 {
            if let channel = try? await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.milliseconds(300)).connect(host: "127.0.0.1", port: port).get()
            {
                fillers.append(channel)
            }
        }
        let client = try Self.client(limit: 4)
        let route = try WebhookRoute(url: "http://127.0.0.1:\(port)/hook", timeout: .milliseconds(400), client: client)
        let error = await #expect(throws: RouteError.self) {
            _ = try await route.handle(WebhookRequestTests.message(), on: MultiThreadedEventLoopGroup.singleton.next()).get()
        }
        let text = error?.description ?? ""
        #expect(text.hasSuffix("not sent"), "\(text)")
        for channel in fillers { try? await channel.close() }
        try await client.shutdown()
        #endif
    }

    /// The backend read the request, then reset the connection: it may have acted on it, so the
    /// error must not read as "cannot connect" (nothing sent, safe to send again).
    @Test func aResetAfterTheRequestSaysItMayHaveBeenActedOn() async throws {
        let server = try await CannedWebhookServer(reply: nil, reset: true)
        let client = try Self.client(limit: 4)
        let route = try WebhookRoute(url: "http://127.0.0.1:\(server.port)/hook", timeout: .seconds(5), client: client)
        let error = await #expect(throws: RouteError.self) {
            _ = try await route.handle(WebhookRequestTests.message(), on: MultiThreadedEventLoopGroup.singleton.next()).get()
        }
        #expect(server.requests.count == 1)
        let text = error?.description ?? ""
        #expect(!text.contains("cannot connect"), "\(text)")
        #expect(
            text.contains("failed after the request was sent") || text.contains("connection closed before a complete reply"), "\(text)")
        try await client.shutdown()
        await server.close()
    }
}
