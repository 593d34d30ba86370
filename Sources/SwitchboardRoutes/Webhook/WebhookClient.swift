import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// The HTTP client every webhook route shares: AsyncHTTPClient with a pool of keep-alive
/// connections per backend, `http://` and `https://` (system trust roots, or the CAs of
/// `webhooks.tls.ca-file`), a connect timeout, each call's deadline, and a cap on reply size.
///
/// Pooled connections idle longer than ``Settings/idleTimeout`` are closed, shorter than common
/// server keep-alive timeouts (Node's default is 5 s), so a POST rarely meets a connection its
/// server is closing. A POST that went out is not repeated: a failed call fails its `SEND` with
/// an `ERROR`. One that failed at once without going out is made once more (see
/// ``attempt(_:deadline:timeout:on:cancellation:cancelled:again:)``).
package final class WebhookClient: Sendable {
    /// `webhooks.*`.
    package struct Settings: Sendable, Equatable {
        /// `webhooks.tls.ca-file`: PEM CAs trusted for `https://` webhooks (system roots without).
        package var caFile: String?
        /// `webhooks.max-connections-per-host`: calls in flight (so connections) to one backend;
        /// calls beyond it wait for a free one, within their deadline.
        package var maxConnectionsPerHost = 64
        /// `webhooks.idle-timeout-ms`: an idle pooled connection is closed after this.
        package var idleTimeout: TimeAmount = .seconds(4)
        /// `webhooks.max-reply-bytes`: a larger reply body fails the call.
        package var maxReplyBytes = 1 << 20

        package init() {}
    }

    /// What a call answered.
    package struct Response: Sendable {
        package var status: Int
        package var body: ByteBuffer
    }

    let http: HTTPClient
    package let settings: Settings
    /// How long a connection (TCP and TLS) may take to be made.
    static let connectTimeout = TimeAmount.seconds(5)
    let slots: WebhookCallSlots

    /// - Throws: when `settings.caFile` cannot be loaded.
    package init(settings: Settings = .init(), eventLoopGroup: any EventLoopGroup) throws {
        var tls = TLSConfiguration.makeClientConfiguration()
        if let caFile = settings.caFile {
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile))
        }
        var pool = HTTPClient.Configuration.ConnectionPool(
            idleTimeout: settings.idleTimeout, concurrentHTTP1ConnectionsPerHostSoftLimit: settings.maxConnectionsPerHost)
        // An unreachable backend fails the call at once rather than being retried until its deadline.
        pool.retryConnectionEstablishment = false
        var configuration = HTTPClient.Configuration(
            tlsConfiguration: tls, redirectConfiguration: .disallow, timeout: .init(connect: Self.connectTimeout), connectionPool: pool)
        configuration.httpVersion = .http1Only
        self.http = HTTPClient(eventLoopGroupProvider: .shared(eventLoopGroup), configuration: configuration)
        self.settings = settings
        self.slots = WebhookCallSlots(limit: settings.maxConnectionsPerHost)
    }

    /// Closes the pooled connections; calls after it fail.
    package func shutdown() async throws {
        try await http.shutdown()
    }

    /// POSTs `body` to `url`; the future completes on `eventLoop`. The deadline covers
    /// waiting for one of the backend's ``Settings/maxConnectionsPerHost`` calls in flight,
    /// connecting (or a pooled connection), the request and the whole reply. A call still
    /// waiting for one when `cancellation` is cancelled is not sent (``Failure/isCancelled``).
    package func post(
        url: String, body: ByteBuffer, headers: HTTPHeaders, timeout: TimeAmount, on eventLoop: any EventLoop,
        cancellation: RouteCancellation? = nil
    ) -> EventLoopFuture<Response> {
        let request: HTTPClient.Request
        do {
            request = try HTTPClient.Request(url: url, method: .POST, headers: headers, body: .byteBuffer(body))
        } catch {
            return eventLoop.makeFailedFuture(Failure("invalid url: \(error)"))
        }
        let deadline = NIODeadline.now() + timeout
        let backend = "\(request.scheme)://\(request.host):\(request.port)"
        let maxBytes = settings.maxReplyBytes
        let limit = slots.limit
        let unsent = Failure(
            "timed out after \(timeout.nanoseconds / 1_000_000) ms waiting for one of the \(limit) connections to \(request.host):\(request.port) (webhooks.max-connections-per-host); not sent"
        )
        let cancelled = Failure("not sent: the session closed while the call waited for a connection", isCancelled: true)
        return slots.acquire(backend, deadline: deadline, on: eventLoop, cancellation: cancellation)
            .flatMapErrorThrowing { error in throw error is WebhookCallSlots.Cancelled ? cancelled : unsent }
            .flatMap {
                // A slot given up with too little time left to connect and send is not used,
                // nor one for a session that closed meanwhile.
                guard NIODeadline.now() + .milliseconds(5) < deadline, cancellation?.isCancelled != true else {
                    self.slots.release(backend)
                    return eventLoop.makeFailedFuture(cancellation?.isCancelled == true ? cancelled : unsent)
                }
                let call = self.attempt(
                    request, deadline: deadline, timeout: timeout, on: eventLoop, cancellation: cancellation, cancelled: cancelled, again: true)
                call.whenComplete { _ in self.slots.release(backend) }
                return call
            }
    }

    /// One attempt at a call. One that failed before its request went out (a connection that
    /// could not be made) is made once more within the deadline: with connection establishment
    /// not retried, one failed connection attempt fails every call then waiting for a
    /// connection to that backend, also those whose own connection would have worked (a burst
    /// after a lull, one connect refused during a rolling restart).
    private func attempt(
        _ request: HTTPClient.Request, deadline: NIODeadline, timeout: TimeAmount, on eventLoop: any EventLoop, cancellation: RouteCancellation?,
        cancelled: Failure, again: Bool
    ) -> EventLoopFuture<Response> {
        let maxBytes = settings.maxReplyBytes
        let collector = WebhookReplyCollector(maxBytes: maxBytes)
        let started = NIODeadline.now()
        let task = self.http.execute(request: request, delegate: collector, eventLoop: .delegate(on: eventLoop), deadline: deadline)
        // A session that closes while its call connects: the call is dropped, not sent (once
        // the request went out, it runs to its end). Checked on the delegate's loop, where the
        // request's head is marked sent (AsyncHTTPClient tells the delegate after writing it).
        let watch = cancellation?.onCancel { eventLoop.execute { if !collector.sent { task.cancel() } } }
        let call = task.futureResult
        call.whenComplete { _ in if let watch { cancellation?.remove(watch) } }
        return call.flatMapError { error in
            if !collector.sent, cancellation?.isCancelled == true { return eventLoop.makeFailedFuture(cancelled) }
            // Only an attempt that failed quickly: one that waited out the connect timeout (a
            // backend that drops connection attempts) would hold its slot twice as long.
            if again, !collector.sent, Self.mayTryAgain(error), NIODeadline.now() - started < Self.connectTimeout,
                NIODeadline.now() + .milliseconds(5) < deadline
            {
                return self.attempt(
                    request, deadline: deadline, timeout: timeout, on: eventLoop, cancellation: cancellation, cancelled: cancelled, again: false)
            }
            return eventLoop.makeFailedFuture(
                Failure.describing(error, url: request, timeout: timeout, maxBytes: maxBytes, sent: collector.sent, status: collector.status))
        }
    }

    /// Whether an attempt that sent nothing failed for a reason another connection may not
    /// have: not its deadline, nor a cancellation.
    static func mayTryAgain(_ error: any Error) -> Bool {
        if let error = error as? HTTPClientError, error == .deadlineExceeded || error == .cancelled || error == .connectTimeout { return false }
        return !(error is WebhookReplyCollector.TooBig)
    }

    /// Why a call failed, in words a route's `ERROR` can carry.
    package struct Failure: Error, CustomStringConvertible {
        package var description: String
        /// The call was dropped before it was sent because its session closed.
        package var isCancelled = false
        /// The request went out and no answer says what the backend did: it may have acted on it.
        package var mayHaveActed = false
        /// The backend answered this 2xx, so it accepted the message; what broke came after (a
        /// reply too large, a stalled or cut body).
        package var acceptedStatus: Int?
        init(_ description: String, isCancelled: Bool = false) {
            self.description = description
            self.isCancelled = isCancelled
        }

        /// After the request was sent, without a status: the backend may have acted on it.
        init(afterSending description: String) {
            self.description = description + ", after the request was sent: the backend may have acted on it"
            self.mayHaveActed = true
        }

        /// A reply that cannot be used after the backend answered `status` (a 2xx): it acted
        /// on the message, which the `ERROR` says, so that the client does not send it again.
        init(accepted status: Int, _ problem: String) {
            self.description = "accepted the message (HTTP \(status)), but its \(problem)"
            self.acceptedStatus = status
        }

        /// - Parameters:
        ///   - status: the reply's status if its head arrived (0: not).
        ///   - answered: the description of what broke after a 2xx head (no "may have acted").
        static func describing(
            _ error: any Error, url: HTTPClient.Request, timeout: TimeAmount, maxBytes: Int, sent: Bool, status: Int = 0, answered: Bool = false
        ) -> Failure {
            let target = "\(url.host):\(url.port)"
            if (200..<300).contains(status) {
                // The backend answered 2xx, so it acted on the message, whatever broke after.
                guard error is WebhookReplyCollector.TooBig else {
                    let broke = describing(error, url: url, timeout: timeout, maxBytes: maxBytes, sent: sent, answered: true)
                    return Failure(accepted: status, "reply did not complete: \(broke)")
                }
            }
            func afterSending(_ description: String) -> Failure { answered ? Failure(description) : Failure(afterSending: description) }
            let timedOut = "timed out after \(timeout.nanoseconds / 1_000_000) ms"
            if status != 0 && !(200..<300).contains(status) {
                // The backend answered a failure (a proxy's 502, say); what broke in its body
                // does not hide that.
                if error is WebhookReplyCollector.TooBig { return Failure("answered HTTP \(status) with a reply larger than \(maxBytes) bytes") }
                if case .some(.deadlineExceeded) = error as? HTTPClientError { return Failure("answered HTTP \(status), then \(timedOut)") }
                return Failure("answered HTTP \(status), then its reply failed (\(error))")
            }
            if let error = error as? HTTPClientError {
                switch error {
                case .deadlineExceeded, .readTimeout, .writeTimeout:
                    // Before the request went out (connecting took the rest of the deadline) the
                    // backend cannot have acted on it.
                    return sent ? afterSending(timedOut) : Failure(timedOut + " before the request was sent; not sent")
                case .connectTimeout:
                    return Failure("cannot connect to \(target): connect timed out")
                case .remoteConnectionClosed:
                    return sent ? afterSending("connection closed before a complete reply") : Failure("connection closed before a complete reply")
                default:
                    break
                }
            }
            if let error = error as? WebhookReplyCollector.TooBig {
                // A 2xx: the backend did act on the message; the client must not send it again.
                return (200..<300).contains(error.status)
                    ? Failure(accepted: error.status, "reply is larger than \(maxBytes) bytes")
                    : Failure("reply larger than \(maxBytes) bytes")
            }
            if error is NIOConnectionError || error is IOError || error is ChannelError {
                // After the request went out the backend may have acted on it: not "cannot
                // connect", which tells the client nothing was sent.
                return sent ? afterSending("connection to \(target) failed (\(error))") : Failure("cannot connect to \(target): \(error)")
            }
            if error is NIOSSLError || error is BoringSSLError {
                return sent ? afterSending("TLS with \(target) failed (\(error))") : Failure("TLS with \(target) failed: \(error)")
            }
            return Failure("\(error)")
        }
    }
}
