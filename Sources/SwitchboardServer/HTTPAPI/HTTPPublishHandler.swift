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
/// no thread hop, and pipelined requests answered in order, written once per read batch. It
/// reads NIO's HTTP/1.1 parts straight from the parser: a publish is never turned into
/// HTTP-types values and back. With ``readiness`` set it answers `GET /health/live` and
/// `/health/ready` the same way, so a load balancer's checks do not wait for the task pool on a
/// loaded machine.
///
/// Anything else on the connection (the console, `/metrics`, `/health`, a browser's CORS
/// request) goes to Hummingbird's router: the first such request installs the HTTP-types codec
/// after this handler and starts the connection's task (``openTask``), and its parts are
/// forwarded from then on. Order is kept across the two: a forwarded request waits (reads
/// paused) until the answers before it are written, and a publish request that arrives while
/// a forwarded one is unanswered is forwarded too (the router has the same routes, answering
/// through the same ``NotificationPublisher``).
///
/// The handler also keeps the connection's state for both paths (``HTTPConnectionIdleState``):
/// the idle timeout, `Connection: close`, and a graceful shutdown (`ChannelShouldQuiesceEvent`
/// closes the connection once the answers owed are written).
///
/// Limits: a body is collected up to the publisher's `maxBodyBytes`. Beyond it (a
/// `Content-Length` over the limit in the head, or the bytes received crossing it) the request
/// is answered 413 at once and the connection closes after that answer: the rest of the body
/// is not read (a body of any length, trickled or not, would hold the connection while it
/// came). A router answer that says `Connection: close` (its own 413) closes the connection
/// the same way. At most ``maxPendingAnswers`` answers wait, then reads pause.
///
/// `Expect: 100-continue` (HTTP/1.1; ignored on HTTP/1.0) gets `100 Continue` for either path
/// once the request is the one answered next, unless its head already decided a final answer
/// (the early 413); any other expectation is a 417 here that closes the connection, like the
/// 413 (see `HTTPPublishHandler+Expect.swift`).
final class HTTPPublishHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    static let maxPendingAnswers = 256

    enum Current {
        case none
        case answering(Answer, key: APIKeyStore.Key?, body: ByteBuffer?, failure: NotificationPublisher.Failure?)
        case forwarding
    }

    let publisher: NotificationPublisher
    let dates: HTTPDateCache
    let metrics: HTTPRouteMetrics
    /// Whether the connection is TLS (the HTTP-types codec's `scheme`).
    let secure: Bool
    /// The HTTP-types codec is already after this handler (the router serves the connection
    /// from the start): the first forwarded request installs none.
    let codecInstalled: Bool
    /// Starts the Hummingbird task of this connection (wraps it in an `NIOAsyncChannel`).
    let openTask: (any Channel) throws -> Void
    /// The answer to `GET /health/ready`; nil: health requests go to the router.
    let readiness: (@Sendable () -> (status: HTTPResponse.Status, body: ReadinessAnswer))?

    var current = Current.none
    /// Body bytes read of the request being answered without its body (a 401, a health check).
    var unkeptBodyBytes = 0
    var answers = CircularBuffer<Answer>()
    /// Parts waiting for earlier answers to be written (from a forwarded request's head on).
    var held = CircularBuffer<HTTPServerRequestPart>()
    var forwardedUnanswered = 0
    /// Body bytes of the forwarded request being read: over the limit it is cut
    /// (``cutForwardedBody(context:)``).
    var forwardedBodyBytes = 0
    /// A forwarded request's body was cut at the limit: the router's answers owed are the
    /// connection's last.
    var forwardCut = false
    var taskOpen = false
    /// A response of the router's is being written (its head went out, its end not yet).
    var routerResponseOpen = false
    /// The router's response being written says `Connection: close`: close after its end.
    private var routerResponseCloses = false
    /// A request was refused before its end (its body over the limit): its answer is the
    /// connection's last, and nothing more is read.
    var refused = false
    /// The parser failed: nothing more is read as a request.
    var malformed = false
    /// The 400 for malformed bytes, waiting for the router's answers owed before it.
    var malformedAfterRouter: Answer?
    /// The parser failed inside a forwarded request: the router owes it nothing (its body never ends).
    var abandonedForward = false
    /// Whether the router has written every answer owed for the requests before the malformed bytes.
    var routerOwesNothing: Bool { forwardedUnanswered - (abandonedForward ? 1 : 0) <= 0 && !routerResponseOpen }
    var closing = false
    /// A graceful shutdown began: no new request is taken (one read after it is dropped
    /// unprocessed, with everything after it; the client sends it again elsewhere).
    var draining = false
    /// A request came after the shutdown began: dropped, and so is the rest.
    var droppingAfterDrain = false
    /// The request being read asked for a protocol upgrade; read to its end: nothing more is read.
    var upgradeAsked = false
    var lastRequestRead = false
    /// The request being read asked for `100 Continue` and has not had it.
    var continueOwed = false
    /// The answer that ends the connection is out and its output closed; input is read and
    /// dropped until the client closes (or ``lingerTime``), so that closing with its unread
    /// bytes does not reset the connection before the client read the answer.
    var lingering = false
    static let lingerTime = TimeAmount.seconds(2)
    /// The longest a connection whose last answer is written stays open (a client that does
    /// not read keeps that answer from being flushed).
    static let closeDeadline = TimeAmount.seconds(10)
    var inputClosed = false
    /// `inputClosed` was passed on to the router's task, opened after it (``replayHeld(context:)``).
    private var inputClosedPassedOn = false
    var readPending = false
    /// Between a socket read's first part and its `channelReadComplete`, which flushes: answers
    /// ready meanwhile (a pipelined batch) go out in one write.
    var inReadBatch = false
    var context: ChannelHandlerContext?
    var idle: HTTPConnectionIdleState
    var idleTimer: Scheduled<Void>?
    var idleTimerDue: NIODeadline?

    init(
        publisher: NotificationPublisher, dates: HTTPDateCache, metrics: HTTPRouteMetrics, secure: Bool = false,
        idleTimeout: TimeAmount? = nil, requestTimeout: TimeAmount? = nil, shutdownGrace: TimeAmount = .seconds(5), codecInstalled: Bool = false,
        readiness: (@Sendable () -> (status: HTTPResponse.Status, body: ReadinessAnswer))? = nil,
        openTask: @escaping (any Channel) throws -> Void
    ) {
        self.publisher = publisher
        self.dates = dates
        self.metrics = metrics
        self.secure = secure
        self.codecInstalled = codecInstalled
        self.openTask = openTask
        self.readiness = readiness
        self.idle = HTTPConnectionIdleState(timeout: idleTimeout, requestTimeout: requestTimeout, shutdownGrace: shutdownGrace)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { armIdleTimer(context: context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        idleTimer?.cancel()
        idleTimer = nil
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        armIdleTimer(context: context)
        context.fireChannelActive()
    }

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        // Lingering after an upgrade request answered before its end: once it ends the parser
        // reads nothing more, and what the client sends would only pile up.
        if lingering, upgradeAsked, case .end = part {
            context.close(promise: nil)
            return
        }
        guard !closing, !malformed, !refused else { return }
        // Shutting down: a client pipelining on kept the connection busy until the grace cut it,
        // with publishes made and their answers never written (a retry elsewhere delivered them
        // twice). Requests read from now on are not taken; the answers owed are written, the
        // last with `Connection: close`.
        if draining, case .head = part { droppingAfterDrain = true }
        if droppingAfterDrain { return }
        inReadBatch = true
        idle.read(part, now: context.eventLoop.now)
        if !held.isEmpty || !process(part, context: context) {
            held.append(part)
        }
        // (Held parts are only ever those of a forwarded request and after: a refusal comes
        // from a part processed here.)
        if refused { writeAnswers() }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        inReadBatch = false
        if taskOpen { context.fireChannelReadComplete() }
        context.flush()
    }

    /// Handles one part; false for a head that must wait for earlier answers.
    private func process(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) -> Bool {
        switch part {
        case .head(var head):
            if Self.asksUpgrade(head) {
                // NIO's parser takes it for a protocol switch (`h2c`, a WebSocket upgrade after
                // the first request) and parses nothing after it: whatever the client sent on
                // piled up unread, without limit. Answered as the connection's last request
                // (reads stop at its end: its body is still read).
                head.headers.replaceOrAdd(name: "connection", value: "close")
                upgradeAsked = true
            }
            if head.method == .CONNECT {
                // NIO's parser reads no request after a CONNECT's head, and the encoder writes
                // the answer to one without a body or its length: refused here, then closed
                // (the router's 404 left the client waiting for a body until the idle timeout).
                guard forwardedUnanswered == 0 else { return false }
                let answer = Answer(endpoint: .tunnelRefused, head: head)
                answers.append(answer)
                refuse(answer, failure: Self.tunnelRefused)
                return true
            }
            let endpoint = Self.endpoint(for: head, servesHealth: readiness != nil)
            let expectation = Self.expectation(of: head)
            if case .unmet(let member) = expectation {
                // Answered here on both paths (417), after the router's answers owed.
                guard forwardedUnanswered == 0 else { return false }
                let answer = Answer(endpoint: endpoint ?? .unmetExpectation(method: Endpoint.methodLabel(head.method)), head: head)
                answers.append(answer)
                refuse(answer, failure: Self.expectationFailed(member))
                return true
            }
            let announcedTooLarge =
                expectation == .continue100
                && NotificationPublisher.exceeds(contentLength: head.headers.first(name: "content-length"), limit: publisher.maxBodyBytes)
            if announcedTooLarge, forwardedUnanswered > 0 || endpoint == nil {
                // The router's request waits for its 100: the 413 instead, as on the fast path
                // (the router would have it upload the body first), after the router's answers owed.
                guard forwardedUnanswered == 0 else { return false }
                let answer = Answer(endpoint: .announcedTooLarge(method: Endpoint.methodLabel(head.method)), head: head)
                answers.append(answer)
                refuse(answer, failure: publisher.bodyTooLarge)
                return true
            }
            if forwardedUnanswered == 0, let endpoint {
                let answer = Answer(endpoint: endpoint, head: head)
                answers.append(answer)
                var key: APIKeyStore.Key?
                var failure: NotificationPublisher.Failure?
                if !endpoint.isHealth {
                    do {
                        // Two `Authorization` fields are no key (the router, which joins them, refuses
                        // them too): the first one passed here, a 401 there.
                        let fields = head.headers["authorization"]
                        key = try publisher.authenticate(authorization: fields.count == 1 ? fields[0] : nil)
                    } catch {
                        failure = error
                    }
                }
                current = .answering(answer, key: key, body: nil, failure: failure)
                unkeptBodyBytes = 0
                // A body announced over the limit is refused before any of it is read (no 100),
                // a health check's too.
                if NotificationPublisher.exceeds(contentLength: head.headers.first(name: "content-length"), limit: publisher.maxBodyBytes) {
                    refuse(answer, failure: failure ?? publisher.bodyTooLarge)
                }
            } else {
                guard answers.isEmpty else { return false }
                forwardedUnanswered += 1
                forwardedBodyBytes = 0
                current = .forwarding
                forward(.head(head), context: context)
            }
            continueOwed = expectation == .continue100
            writeContinueIfDue()
        case .body(var bytes):
            switch current {
            case .answering(let answer, let key, var body, let failure):
                // A request that failed already (401) or a health check answers without its
                // body: only counted (and answered at the crossing), not kept.
                let kept = failure == nil && !answer.endpoint.isHealth
                let received = (kept ? body?.readableBytes ?? 0 : unkeptBodyBytes) + bytes.readableBytes
                if received > publisher.maxBodyBytes {
                    refuse(answer, failure: failure ?? publisher.bodyTooLarge)
                    return true
                }
                guard kept else {
                    unkeptBodyBytes = received
                    return true
                }
                // The body's one reference, so it grows in place: with `current` holding it too
                // every part copied the whole body (a body sent in 1-byte chunks cost its
                // length squared).
                current = .none
                if body == nil {
                    body = bytes
                } else {
                    body!.writeBuffer(&bytes)
                }
                current = .answering(answer, key: key, body: body, failure: failure)
            case .forwarding:
                forwardedBodyBytes += bytes.readableBytes
                forward(part, context: context)
                if forwardedBodyBytes > publisher.maxBodyBytes { cutForwardedBody(context: context) }
            case .none:
                break
            }
        case .end:
            if upgradeAsked { lastRequestRead = true }
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

    /// Answers the request being read with `failure` before its end (its body is over the
    /// limit, or its `Expect` cannot be met): the answer is the connection's last (it says
    /// `Connection: close`), the rest of the body is not read, nor anything after it.
    private func refuse(_ answer: Answer, failure: NotificationPublisher.Failure) {
        refused = true
        current = .none
        idle.stoppedReading()
        answer.close = true
        answer.response = (failure.status, APIJSON.body(failure.body))
    }

    func forward(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        if !taskOpen {
            taskOpen = true
            do {
                if !codecInstalled {
                    try context.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: secure), position: .after(self))
                }
                try openTask(context.channel)
            } catch {
                context.close(promise: nil)
                return
            }
        }
        if case .head(var head) = part, head.version.major == 1, head.version.minor == 0, !head.isKeepAlive {
            // HTTP/1.0 without keep-alive: the connection's last request. The router sees
            // HTTP-types values, which carry no version: it closes on `Connection: close` only
            // (and says so, ``ConnectionCloseMiddleware``).
            head.headers.replaceOrAdd(name: "connection", value: "close")
            context.fireChannelRead(wrapInboundOut(.head(head)))
            return
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
                let prepared = try publisher.prepare(body: body, key: key, toUser: user, idempotencyHeaders: answer.idempotencyKeys)
                result = publisher.publish(prepared, on: loop).map { (.ok, APIJSON.body($0)) }
            case .batch:
                let items = try publisher.prepareBatch(body: body, key: key, idempotencyHeaders: answer.idempotencyKeys)
                result = publisher.publishBatch(items, on: loop).map { (NotificationPublisher.status(of: $0), APIJSON.body($0)) }
            case .live:
                result = loop.makeSucceededFuture((.ok, APIJSON.body(ReadinessAnswer(status: "live"))))
            case .ready:
                let answer = readiness?() ?? (.ok, ReadinessAnswer(status: "ready"))
                result = loop.makeSucceededFuture((answer.status, APIJSON.body(answer.body)))
            case .malformed, .unmetExpectation, .announcedTooLarge, .tunnelRefused:
                // Made answered (``Answer/init(malformed:)``, a 417 or 413 at the head): never read to an end.
                result = loop.makeSucceededFuture(answer.response ?? (.badRequest, ByteBuffer()))
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
    func writeAnswers() {
        guard let context else { return }
        var wrote = false
        while let first = answers.first, let response = first.response, !closing {
            answers.removeFirst()
            let shutdownWaited = idle.answered(now: context.eventLoop.now)
            let close = first.close || shutdownWaited
            let status = HTTPResponseStatus(statusCode: response.status.code, reasonPhrase: response.status.reasonPhrase)
            let head = responseHead(status, bodyBytes: response.body.readableBytes, close: close, keepAlive10: first.keepAlive10)
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            // (NIO's encoder allows no body in the answer to a CONNECT.)
            if first.endpoint != .tunnelRefused { context.write(wrapOutboundOut(.body(.byteBuffer(response.body))), promise: nil) }
            metrics.record(first.endpoint, status: response.status, since: first.started)
            wrote = true
            if close {
                closing = true
                // A refused or malformed request's unread rest (a body, pipelined requests) would
                // make the close a reset, which can destroy the answer before the client reads it.
                // (Not after a CONNECT: NIO's parser reads nothing after its head, it would
                // only pile up what the client sends.)
                let linger = (refused || malformed || droppingAfterDrain) && first.endpoint != .tunnelRefused
                closeConnection(after: context.writeAndFlush(wrapOutboundOut(.end(nil))), linger: linger, context: context)
            } else {
                context.write(wrapOutboundOut(.end(nil)), promise: nil)
            }
        }
        if writeContinueIfDue(flushing: false) { wrote = true }
        if !closing { replayHeld(context: context) }
        // Malformed bytes behind held requests answered here: their 400 is due now.
        // (Its write flushes what is written before it.)
        if malformedAfterRouter != nil, answers.isEmpty, routerOwesNothing, held.isEmpty, !closing {
            writeMalformedIfDue()
            return
        }
        if wrote && !inReadBatch { context.flush() }
        resumeReadsIfPossible(context: context)
        closeIfDone(context: context)
    }

    /// Closes the connection once `written` (its last answer) is out: at once, or with `linger`
    /// after closing only its output and reading and dropping what the client still sends,
    /// until it closes or ``lingerTime`` passed. Whatever the client does (it may never read,
    /// so the write never completes), the connection is closed within ``closeDeadline``.
    func closeConnection(after written: EventLoopFuture<Void>, linger: Bool, context: ChannelHandlerContext) {
        let channel = context.channel
        let deadline = channel.eventLoop.scheduleTask(in: Self.closeDeadline) { channel.close(promise: nil) }
        channel.closeFuture.whenComplete { _ in deadline.cancel() }
        written.assumeIsolated().whenComplete { _ in
            guard linger, channel.isActive else { return channel.close(promise: nil) }
            self.lingering = true
            channel.close(mode: .output).whenFailure { _ in channel.close(promise: nil) }
            let timer = channel.eventLoop.scheduleTask(in: Self.lingerTime) { channel.close(promise: nil) }
            channel.closeFuture.whenComplete { _ in timer.cancel() }
            channel.read()
        }
    }

    /// Writes `100 Continue` for the request being read if it asked for it and is the one
    /// answered next (every answer before it written, the router's too; its own not begun).
    /// Flushed unless `flushing` is false or in a read batch (its end flushes). True if written.
    @discardableResult
    private func writeContinueIfDue(flushing: Bool = true) -> Bool {
        guard continueOwed, !closing, let context else { return false }
        switch current {
        case .answering(let answer, _, _, _):
            guard answers.first === answer, answer.response == nil else { return false }
        case .forwarding:
            guard answers.isEmpty, forwardedUnanswered == 1, !routerResponseOpen else { return false }
        case .none:
            return false
        }
        continueOwed = false
        // The request's time counts from its 100 (the client sends its body then).
        idle.resumedReading(now: context.eventLoop.now)
        context.write(wrapOutboundOut(.head(Self.continueHead)), promise: nil)
        if flushing && !inReadBatch { context.flush() }
        return true
    }

    private func replayHeld(context: ChannelHandlerContext) {
        var replayed = false
        let wasRefused = refused
        while !refused, let part = held.first, process(part, context: context) {
            held.removeFirst()
            replayed = true
        }
        if replayed && taskOpen { context.fireChannelReadComplete() }
        passOnInputClosedIfDue(context: context)
        // A held request refused at its head (an `Expect` it cannot meet): its answer is due.
        if refused && !wasRefused { writeAnswers() }
    }

    /// The client closed its side while requests were held or answers owed here: the router's
    /// task learns it once they are forwarded and written (it then ends, and the connection
    /// closes, once it has answered). Before, a task opened by a held request never learnt it
    /// (the connection stayed open until the idle timeout), and one open already ended at once,
    /// closing the output before the answers owed.
    private func passOnInputClosedIfDue(context: ChannelHandlerContext) {
        guard inputClosed, taskOpen, held.isEmpty, answers.isEmpty, !inputClosedPassedOn else { return }
        inputClosedPassedOn = true
        context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
    }

    // MARK: Outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        var data = data
        switch unwrapOutboundIn(data) {
        case .head(var head) where head.status.code >= 200:
            routerResponseOpen = true
            if forwardCut, forwardedUnanswered == 1 {
                // The last answer owed before a body cut at the limit: it says it closes.
                head.headers.replaceOrAdd(name: "connection", value: "close")
                data = wrapOutboundOut(.head(head))
            }
            routerResponseCloses = head.headers["connection"].contains { $0.lowercased().contains("close") }
        case .end: routerResponseOpen = false
        default: break
        }
        if case .end = unwrapOutboundIn(data), forwardedUnanswered > 0 {
            forwardedUnanswered -= 1
            let shutdownWaited = idle.answered(now: context.eventLoop.now)
            if shutdownWaited || routerResponseCloses || (forwardCut && forwardedUnanswered == 0) {
                // Shutting down, and this was the last answer owed; or the router's answer
                // closes the connection (e.g. its 413: the rest of the body is not read).
                closing = true
                let written = context.writeAndFlush(data)
                written.whenComplete { promise?.completeWith($0) }
                // The router's 413 leaves the body unread: linger as for the fast path's.
                // (Not after an upgrade request: the parser would only pile up what comes.)
                closeConnection(after: written, linger: (routerResponseCloses || forwardCut) && !lastRequestRead, context: context)
                return
            }
            context.write(data, promise: promise)
            // The request being forwarded may now be the one answered next: its 100 is due.
            writeContinueIfDue()
            if forwardedUnanswered == 0 {
                replayHeld(context: context)
                resumeReadsIfPossible(context: context)
            }
            writeMalformedIfDue()
            return
        }
        context.write(data, promise: promise)
        if case .end = unwrapOutboundIn(data) { writeMalformedIfDue() }
    }

    /// The client closed its side. Without the router's task (which then finishes and closes),
    /// nobody else would close the connection: close it once the answers owed are written.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if lingering, case .inputClosed? = event as? ChannelEvent {
            context.close(promise: nil)
            return
        }
        if taskOpen, case .inputClosed? = event as? ChannelEvent, !held.isEmpty || !answers.isEmpty {
            // The router's task would end at once, and close the connection's output before
            // the answers owed here and the held requests: it learns it after them.
            inputClosed = true
            dropIncompleteHeldRequest()
            passOnInputClosedIfDue(context: context)
            return
        }
        if !taskOpen, case .inputClosed? = event as? ChannelEvent {
            // The parser's last parts may have come without a `channelReadComplete`.
            inReadBatch = false
            context.flush()
            inputClosed = true
            // A request cut off in its body will not complete: nothing is owed for it (it held
            // the connection, and its descriptor, until the idle timeout).
            dropIncompleteRequest()
            dropIncompleteHeldRequest()
            closeIfDone(context: context)
            return
        }
        // Shutting down: close now when nothing is owed, else after the last answer. Not
        // passed on: this handler keeps the connection's state for the router's task too.
        if event is ChannelShouldQuiesceEvent {
            guard !closing else { return }
            switch idle.quiesce(now: context.eventLoop.now) {
            case .closeNow:
                closing = true
                context.close(promise: nil)
            case .closeAfterAnswers(let deadline):
                draining = true
                // An earlier idle check stays (it also looks at the deadline from now on).
                if let due = idleTimerDue, idleTimer != nil, due <= deadline { break }
                idleTimer?.cancel()
                scheduleIdleCheck(at: deadline, context: context)
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}
