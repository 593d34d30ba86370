import AsyncHTTPClient
import NIOCore
import NIOPosix
import NIOSSL
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
            text.hasSuffix("after the request was sent: the backend may have acted on it"), "\(text)")
        #expect(error?.code == .outcomeUnknown)
        try await client.shutdown()
        await server.close()
    }

    /// A call waiting for a slot when its session closes is never sent, and the live calls
    /// behind it go first (a probe's churn of sessions sending once and leaving kept the queue
    /// full of calls for gone sessions, each sent in its turn).
    @Test func aCallWaitingWhenItsSessionClosesIsNeverSent() async throws {
        let server = try await CannedWebhookServer(reply: nil)
        let client = try Self.client(limit: 1)
        let url = "http://127.0.0.1:\(server.port)/hook"
        let holder = try WebhookRoute(url: url, timeout: .seconds(2), client: client)
        let route = try WebhookRoute(url: url, timeout: .seconds(30), client: client)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let first = holder.handle(WebhookRequestTests.message(body: ByteBuffer(string: "first")), on: loop)
        let gone = RouteCancellation()
        let abandoned = route.handle(WebhookRequestTests.message(body: ByteBuffer(string: "gone")), on: loop, cancellation: gone)
        let live = route.handle(WebhookRequestTests.message(body: ByteBuffer(string: "live")), on: loop, cancellation: RouteCancellation())
        gone.cancel()
        let error = await #expect(throws: RouteError.self) { _ = try await abandoned.get() }
        #expect(error?.code == .abandoned && error?.description.contains("not sent") == true, "\(String(describing: error))")
        // Not waiting any more: at most the live call waits (none once the holder timed out).
        #expect(client.slots.load("http://127.0.0.1:\(server.port)").waiting <= 1)
        // The holder times out; its slot goes to the live call, never to the gone one.
        _ = try? await first.get()
        #expect(try await eventually { server.requests.count == 2 })
        #expect(server.requests.map(\.body).map { $0.contains("\"first\"") ? "first" : $0.contains("\"live\"") ? "live" : $0 } == ["first", "live"])
        try await client.shutdown()
        _ = try? await live.get()
        await server.close()
    }

    /// A burst of calls after a lull, and the backend refuses one connection (its TLS handshake
    /// cut, as during a restart): with connection establishment not retried, that one failure
    /// failed every call then waiting for a connection, also those whose own would have worked.
    /// A call that sent nothing is made once more within its deadline.
    @Test func oneFailedConnectionDoesNotFailTheCallsWaitingWithIt() async throws {
        let certificates = try TestCertificates()
        let server = try await CannedWebhookServer(reply: (.noContent, ""), tls: try WebhookClientTests.serverTLS(certificates), closingFirst: 1)
        var settings = WebhookClient.Settings()
        settings.caFile = certificates.caFile
        let client = try WebhookClient(settings: settings, eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
        let route = try WebhookRoute(url: "https://localhost:\(server.port)/hook", timeout: .seconds(10), client: client)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let calls = (0..<8).map { i in route.handle(WebhookRequestTests.message(body: ByteBuffer(string: "m\(i)")), on: loop) }
        var failures: [String] = []
        for call in calls {
            do { _ = try await call.get() } catch { failures.append("\(error)") }
        }
        #expect(failures.isEmpty, "\(failures)")
        #expect(server.requests.count == 8)
        try await client.shutdown()
        await server.close()
    }

    /// A session that closes while its call is connecting (it had a slot; here the backend's
    /// TLS handshake waits 3 s: less than the connect timeout, so that without the fix the call
    /// connects and is sent, and more than a loaded machine takes to cancel): the call was sent
    /// anyway once connected, though the documentation says a waiting call is never sent. It is
    /// dropped now.
    @Test func aCallConnectingWhenItsSessionClosesIsDropped() async throws {
        let certificates = try TestCertificates()
        let server = try await CannedWebhookServer(
            reply: (.noContent, ""), tls: try WebhookClientTests.serverTLS(certificates), readDelay: .seconds(3))
        var settings = WebhookClient.Settings()
        settings.caFile = certificates.caFile
        let client = try WebhookClient(settings: settings, eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
        let route = try WebhookRoute(url: "https://localhost:\(server.port)/hook", timeout: .seconds(10), client: client)
        let session = RouteCancellation()
        let call = route.handle(WebhookRequestTests.message(), on: MultiThreadedEventLoopGroup.singleton.next(), cancellation: session)
        #expect(try await eventually { server.connections == 1 }, "connecting")
        session.cancel()
        let error = await #expect(throws: RouteError.self) { _ = try await call.get() }
        #expect(error?.code == .abandoned && error?.description.contains("not sent") == true, "\(String(describing: error))")
        #expect(server.requests.isEmpty)
        try await client.shutdown()
        await server.close()
    }

    /// A failure after the backend's 2xx head (a stalled or cut body) says it accepted the
    /// message, so that the client does not send it again; a closed connection or a TLS failure
    /// after the request went out says the backend may have acted on it.
    @Test func failuresAfterTheRequestWentOutSaySo() throws {
        let request = try HTTPClient.Request(url: "http://svc:80/hook", method: .POST)
        func text(_ error: any Error, sent: Bool, status: Int = 0) -> String {
            WebhookClient.Failure.describing(error, url: request, timeout: .seconds(5), maxBytes: 10, sent: sent, status: status).description
        }
        #expect(text(HTTPClientError.deadlineExceeded, sent: true, status: 200) == "accepted the message (HTTP 200), but its reply did not complete: timed out after 5000 ms")
        #expect(text(HTTPClientError.remoteConnectionClosed, sent: true, status: 204).hasPrefix("accepted the message (HTTP 204), but its reply did not complete"))
        #expect(
            text(HTTPClientError.remoteConnectionClosed, sent: true) == "connection closed before a complete reply, after the request was sent: the backend may have acted on it")
        #expect(text(HTTPClientError.remoteConnectionClosed, sent: false) == "connection closed before a complete reply")
        #expect(text(NIOSSLError.uncleanShutdown, sent: true).hasSuffix("the backend may have acted on it"))
        // A timeout after the request went out, no answer: it may have acted (it was reported as
        // a plain timeout, and the client sent the message again).
        #expect(text(HTTPClientError.deadlineExceeded, sent: true) == "timed out after 5000 ms, after the request was sent: the backend may have acted on it")
        #expect(text(HTTPClientError.deadlineExceeded, sent: false) == "timed out after 5000 ms before the request was sent; not sent")
        // A failure's head arrived: its status is not hidden by what broke after it.
        #expect(text(HTTPClientError.deadlineExceeded, sent: true, status: 500) == "answered HTTP 500, then timed out after 5000 ms")
        #expect(text(WebhookReplyCollector.TooBig(status: 502), sent: true, status: 502) == "answered HTTP 502 with a reply larger than 10 bytes")
        #expect(WebhookClient.Failure.describing(HTTPClientError.readTimeout, url: request, timeout: .seconds(5), maxBytes: 10, sent: true).mayHaveActed)
        #expect(!WebhookClient.Failure.describing(HTTPClientError.readTimeout, url: request, timeout: .seconds(5), maxBytes: 10, sent: false).mayHaveActed)
    }

    /// Client-facing errors name the webhook without its query or user info (a token there).
    @Test func errorsDoNotShowTheURLsQueryOrUserInfo() async throws {
        #expect(WebhookRoute.shown("https://u:pw@svc:8443/hook?key=secret#f") == "https://svc:8443/hook")
        let server = try await CannedWebhookServer(reply: (.internalServerError, ""))
        let client = try Self.client(limit: 4)
        let route = try WebhookRoute(url: "http://gw:pw@127.0.0.1:\(server.port)/hook?key=secret", timeout: .seconds(5), client: client)
        let error = await #expect(throws: RouteError.self) {
            _ = try await route.handle(WebhookRequestTests.message(), on: MultiThreadedEventLoopGroup.singleton.next()).get()
        }
        #expect(error?.description == "webhook http://127.0.0.1:\(server.port)/hook answered HTTP 500")
        #expect(server.requests.first?.head.uri == "/hook?key=secret")
        #expect(route.description == "webhook http://127.0.0.1:\(server.port)/hook")
        try await client.shutdown()
        await server.close()
    }
}
