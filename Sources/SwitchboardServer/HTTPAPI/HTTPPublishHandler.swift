import Foundation
import HTTPTypes
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import SwitchboardAPIModel
import SwitchboardAuth
import SwitchboardWire

/// Serves the publish API (`POST /api/notification`, `/api/users/{user}/notification`,
/// `/api/notifications`) on the connection's event loop, like a STOMP `SEND`: no Swift task,
/// no thread hop, and pipelined requests answered in order, written once per read batch.
///
/// Anything else on the connection (the console, `/metrics`, health, a browser's CORS
/// request) goes to Hummingbird's router: the first such request starts the connection's task
/// (``openTask``), and its parts are forwarded from then on. Order is kept across the two: a
/// forwarded request waits (reads paused) until the answers before it are written, and a
/// publish request that arrives while a forwarded one is unanswered is forwarded too (the
/// router has the same routes, answering through the same ``NotificationPublisher``).
///
/// Limits: a body is collected up to the publisher's `maxBodyBytes` (413 beyond, the rest
/// discarded); at most ``maxPendingAnswers`` answers wait, then reads pause.
final class HTTPPublishHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    static let maxPendingAnswers = 256

    enum Endpoint: Equatable {
        case single(user: String?)
        case batch

        /// The route as Hummingbird names it in metrics.
        var route: String {
            switch self {
            case .single(nil): "/api/notification"
            case .single: "/api/users/{user}/notification"
            case .batch: "/api/notifications"
            }
        }
    }

    /// One request this handler answers; filled in when its publish completes.
    final class Answer {
        let endpoint: Endpoint
        let started: UInt64
        let close: Bool
        var response: (status: HTTPResponse.Status, body: ByteBuffer)?

        init(endpoint: Endpoint, close: Bool) {
            self.endpoint = endpoint
            self.close = close
            self.started = DispatchTime.now().uptimeNanoseconds
        }
    }

    private enum Current {
        case none
        case answering(Answer, key: APIKeyStore.Key?, body: ByteBuffer?, failure: NotificationPublisher.Failure?)
        case forwarding
    }

    let publisher: NotificationPublisher
    let dates: HTTPDateCache
    let metrics: HTTPRouteMetrics
    /// Starts the Hummingbird task of this connection (wraps it in an `NIOAsyncChannel`).
    let openTask: (any Channel) throws -> Void

    private var current = Current.none
    private var answers = CircularBuffer<Answer>()
    /// Parts waiting for earlier answers to be written (from a forwarded request's head on).
    private var held = CircularBuffer<HTTPRequestPart>()
    private var forwardedUnanswered = 0
    private var taskOpen = false
    private var closing = false
    private var inputClosed = false
    private var readPending = false
    private var context: ChannelHandlerContext?

    init(publisher: NotificationPublisher, dates: HTTPDateCache, metrics: HTTPRouteMetrics, openTask: @escaping (any Channel) throws -> Void) {
        self.publisher = publisher
        self.dates = dates
        self.metrics = metrics
        self.openTask = openTask
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    /// The publish endpoint `head` asks for, or nil when the router should serve it.
    static func endpoint(for head: HTTPRequest) -> Endpoint? {
        guard head.method == .post, head.headerFields[.origin] == nil, head.headerFields[.expect] == nil,
            var path = head.path.map({ Substring($0) })
        else { return nil }
        if let query = path.firstIndex(of: "?") { path = path[..<query] }
        switch path {
        case "/api/notification": return .single(user: nil)
        case "/api/notifications": return .batch
        default:
            let prefix = "/api/users/", suffix = "/notification"
            guard path.hasPrefix(prefix), path.hasSuffix(suffix), path.count > prefix.count + suffix.count else { return nil }
            let raw = path.dropFirst(prefix.count).dropLast(suffix.count)
            guard !raw.contains("/"), let user = raw.removingPercentEncoding, !user.isEmpty else { return nil }
            return .single(user: user)
        }
    }

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        let part = unwrapInboundIn(data)
        if !held.isEmpty || !process(part, context: context) {
            held.append(part)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if taskOpen { context.fireChannelReadComplete() }
        context.flush()
    }

    /// Handles one part; false for a head that must wait for earlier answers.
    private func process(_ part: HTTPRequestPart, context: ChannelHandlerContext) -> Bool {
        switch part {
        case .head(let head):
            if forwardedUnanswered == 0, let endpoint = Self.endpoint(for: head) {
                let answer = Answer(endpoint: endpoint, close: head.headerFields[.connection]?.lowercased() == "close")
                answers.append(answer)
                do {
                    let key = try publisher.authenticate(authorization: head.headerFields[.authorization])
                    current = .answering(answer, key: key, body: nil, failure: nil)
                } catch {
                    current = .answering(answer, key: nil, body: nil, failure: error)
                }
                return true
            }
            guard answers.isEmpty else { return false }
            forwardedUnanswered += 1
            current = .forwarding
            forward(part, context: context)
        case .body(var bytes):
            switch current {
            case .answering(let answer, let key, var body, var failure):
                if failure == nil {
                    if (body?.readableBytes ?? 0) + bytes.readableBytes > publisher.maxBodyBytes {
                        failure = publisher.bodyTooLarge
                        body = nil
                    } else if body == nil {
                        body = bytes
                    } else {
                        body!.writeBuffer(&bytes)
                    }
                }
                current = .answering(answer, key: key, body: body, failure: failure)
            case .forwarding:
                forward(part, context: context)
            case .none:
                break
            }
        case .end:
            switch current {
            case .answering(let answer, let key, let body, let failure):
                current = .none
                answerRequest(answer, key: key, body: body ?? ByteBuffer(), failure: failure, context: context)
            case .forwarding:
                current = .none
                forward(part, context: context)
            case .none:
                break
            }
        }
        return true
    }

    private func forward(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
        if !taskOpen {
            taskOpen = true
            do {
                try openTask(context.channel)
            } catch {
                context.close(promise: nil)
                return
            }
        }
        context.fireChannelRead(wrapInboundOut(part))
    }

    private func answerRequest(
        _ answer: Answer, key: APIKeyStore.Key?, body: ByteBuffer, failure: NotificationPublisher.Failure?, context: ChannelHandlerContext
    ) {
        let loop = context.eventLoop
        let result: EventLoopFuture<(HTTPResponse.Status, ByteBuffer)>
        do {
            if let failure { throw failure }
            switch answer.endpoint {
            case .single(let user):
                let prepared = try publisher.prepare(body: body, key: key, toUser: user)
                result = publisher.publish(prepared, on: loop).map { (.ok, APIJSON.body(prepared.answer)) }
            case .batch:
                let items = try publisher.prepareBatch(body: body, key: key)
                result = publisher.publishBatch(items, on: loop).map { (NotificationPublisher.status(of: $0), APIJSON.body($0)) }
            }
        } catch let error as NotificationPublisher.Failure {
            result = loop.makeSucceededFuture((error.status, APIJSON.body(error.body)))
        } catch {
            result = loop.makeSucceededFuture((.internalServerError, APIJSON.body(APIErrorBody(error: "\(error)", field: nil))))
        }
        result.hop(to: loop).assumeIsolated().whenComplete { outcome in
            switch outcome {
            case .success(let response):
                answer.response = response
            case .failure(let error):
                let failure =
                    error as? NotificationPublisher.Failure
                    ?? NotificationPublisher.Failure(status: .serviceUnavailable, message: "publish failed: \(error)", field: nil)
                answer.response = (failure.status, APIJSON.body(failure.body))
            }
            self.writeAnswers()
        }
    }

    /// Writes the answers that are ready, in request order, then replays held parts.
    private func writeAnswers() {
        guard let context else { return }
        var wrote = false
        while let first = answers.first, let response = first.response, !closing {
            answers.removeFirst()
            var head = HTTPResponse(status: response.status)
            head.headerFields[.contentType] = "application/json"
            head.headerFields[.contentLength] = String(response.body.readableBytes)
            head.headerFields[.date] = dates.now
            head.headerFields[.server] = "switchboard"
            if first.close { head.headerFields[.connection] = "close" }
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.write(wrapOutboundOut(.body(response.body)), promise: nil)
            metrics.record(route: first.endpoint.route, status: response.status, since: first.started)
            wrote = true
            if first.close {
                closing = true
                let channel = context.channel
                context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
            } else {
                context.write(wrapOutboundOut(.end(nil)), promise: nil)
            }
        }
        if !closing { replayHeld(context: context) }
        if wrote { context.flush() }
        resumeReadsIfPossible(context: context)
        closeIfDone(context: context)
    }

    private func replayHeld(context: ChannelHandlerContext) {
        var replayed = false
        while let part = held.first, process(part, context: context) {
            held.removeFirst()
            replayed = true
        }
        if replayed && taskOpen { context.fireChannelReadComplete() }
    }

    // MARK: Outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data), forwardedUnanswered > 0 {
            forwardedUnanswered -= 1
            context.write(data, promise: promise)
            if forwardedUnanswered == 0 {
                replayHeld(context: context)
                resumeReadsIfPossible(context: context)
            }
            return
        }
        context.write(data, promise: promise)
    }

    private var readsPaused: Bool { !held.isEmpty || answers.count >= Self.maxPendingAnswers }

    func read(context: ChannelHandlerContext) {
        if readsPaused {
            readPending = true
        } else {
            context.read()
        }
    }

    private func resumeReadsIfPossible(context: ChannelHandlerContext) {
        if readPending && !readsPaused {
            readPending = false
            context.read()
        }
    }

    /// The client closed its side. Without the router's task (which then finishes and closes),
    /// nobody else would close the connection: close it once the answers owed are written.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if !taskOpen, case .inputClosed? = event as? ChannelEvent {
            inputClosed = true
            closeIfDone(context: context)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func closeIfDone(context: ChannelHandlerContext) {
        guard inputClosed, !taskOpen, !closing, answers.isEmpty else { return }
        closing = true
        context.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Malformed HTTP: NIO has answered 400. Without a task nobody else will close.
        if !taskOpen, error is HTTPParserError || error is HTTP1TypeConversionError {
            closing = true
            context.close(promise: nil)
            return
        }
        context.fireErrorCaught(error)
    }
}

/// Hummingbird's request metrics (`hb.requests`, `http.server.request.duration`, by route and
/// status) for the requests ``HTTPPublishHandler`` answers itself, so `/metrics` counts them
/// as if the router had.
final class HTTPRouteMetrics: Sendable {
    private struct Key: Hashable {
        var route: String
        var status: Int
    }
    private let cache = NIOLockedValueBox<[Key: (Counter, Metrics.Timer)]>([:])

    func record(route: String, status: HTTPResponse.Status, since start: UInt64) {
        let key = Key(route: route, status: status.code)
        let (counter, timer) = cache.withLockedValue { cache in
            if let found = cache[key] { return found }
            let dimensions = [("http.route", route), ("http.request.method", "POST"), ("http.response.status_code", String(status.code))]
            let made = (
                Counter(label: "hb.requests", dimensions: dimensions), Metrics.Timer(label: "http.server.request.duration", dimensions: dimensions, preferredDisplayUnit: .seconds)
            )
            cache[key] = made
            return made
        }
        counter.increment()
        timer.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds - start))
    }
}
