import NIOConcurrencyHelpers
import NIOCore
import STOMPCodec
import SwitchboardWire

/// A message a route asks the gateway to deliver in answer to an ``AppMessage``.
package struct RouteReply: Sendable, Equatable {
    package enum Target: String, Sendable, Equatable {
        /// Every subscriber of ``destination`` (through the broker, on every instance).
        case broadcast
        /// Only the sending session's subscriptions that match ``destination``.
        case sender
    }
    package var destination: String
    package var body: ByteBuffer
    package var headers: STOMPHeaders
    package var target: Target

    package init(destination: String, body: ByteBuffer, headers: STOMPHeaders = STOMPHeaders(), target: Target = .broadcast) {
        self.destination = destination
        self.body = body
        self.headers = headers
        self.target = target
    }
}

/// Why a route could not take a message. The session answers with an `ERROR` naming it.
package struct RouteError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What failed, for code that decides by kind (status codes, retries, metrics).
    package enum Code: Sendable, Hashable {
        /// Redis could not be reached, or refused the command (publish, history).
        case redisUnavailable
        /// The command was sent but its connection was lost (or it timed out) before the
        /// reply: it may or may not have run. A retry may deliver the message twice.
        case outcomeUnknown
        /// A Redis command of a route (`XADD`, `PUBLISH`, consumer-group checks) failed.
        case redisCommandFailed
        /// The Redis subscription for a destination could not be made.
        case subscribeFailed
        /// The webhook could not be called, or did not answer in time.
        case webhookUnreachable
        /// The webhook answered a status other than 2xx.
        case webhookRejected
        /// The webhook's 2xx reply is not the documented JSON.
        case webhookBadReply
        /// The request to a backend could not be encoded.
        case encodingFailed
        /// The work was dropped because nobody waits for it any more.
        case abandoned
        /// The message reached no one (a `PUBLISH` no backend was subscribed to).
        case notDelivered
    }

    package var code: Code
    /// The message clients and logs see (an `ERROR` frame's `message`, an HTTP error).
    package var description: String

    package init(_ code: Code, _ description: String) {
        self.code = code
        self.description = description
    }
}

/// Carries `/app/...` messages to a backend service.
///
/// The returned future succeeds once the backend has the message (a webhook answered 2xx,
/// a Redis stream confirmed the XADD …); only then is the SEND's `RECEIPT` sent.
package protocol AppRoute: Sendable {
    /// A short description for logs and errors, e.g. `webhook http://svc/greet`.
    var description: String { get }
    func handle(_ message: AppMessage, on eventLoop: any EventLoop) -> EventLoopFuture<[RouteReply]>

    /// As ``handle(_:on:)``; work not started when `cancellation` is cancelled (its session
    /// closed: nobody waits for the outcome) may be dropped, failing with
    /// ``RouteError/Code/abandoned``. The default ignores it.
    func handle(_ message: AppMessage, on eventLoop: any EventLoop, cancellation: RouteCancellation) -> EventLoopFuture<[RouteReply]>

    /// True when messages handed over one after another reach the backend in that order even
    /// if the next is handed over before the previous one is confirmed (commands written in
    /// order on one connection). The session then pipelines SENDs to this route (receipts
    /// still in order); otherwise it waits for each before reading the next frame.
    var keepsOrderWhenPipelined: Bool { get }
}

extension AppRoute {
    package var keepsOrderWhenPipelined: Bool { false }

    package func handle(_ message: AppMessage, on eventLoop: any EventLoop, cancellation: RouteCancellation) -> EventLoopFuture<[RouteReply]> {
        handle(message, on: eventLoop)
    }
}

/// Tells routes that nobody waits for the outcome of their calls any more: a session's, cancelled
/// when it closes. Handlers registered before run at ``cancel()``, those registered after at
/// once; a handler removed (its work started) never runs.
package final class RouteCancellation: Sendable {
    private struct State {
        var cancelled = false
        var nextID: UInt64 = 0
        var handlers: [UInt64: @Sendable () -> Void] = [:]
    }
    private let state = NIOLockedValueBox(State())

    package init() {}

    package var isCancelled: Bool { state.withLockedValue { $0.cancelled } }

    /// Cancels, running the registered handlers (once).
    package func cancel() {
        let handlers = state.withLockedValue { state -> [@Sendable () -> Void] in
            guard !state.cancelled else { return [] }
            state.cancelled = true
            defer { state.handlers = [:] }
            return Array(state.handlers.values)
        }
        for handler in handlers { handler() }
    }

    /// Runs `handler` at the cancellation (at once if it happened); nil when it ran already,
    /// else the id for ``remove(_:)``.
    package func onCancel(_ handler: @escaping @Sendable () -> Void) -> UInt64? {
        let id = state.withLockedValue { state -> UInt64? in
            guard !state.cancelled else { return nil }
            state.nextID += 1
            state.handlers[state.nextID] = handler
            return state.nextID
        }
        if id == nil { handler() }
        return id
    }

    /// Forgets a handler that has not run.
    package func remove(_ id: UInt64) {
        _ = state.withLockedValue { $0.handlers.removeValue(forKey: id) }
    }
}

/// Application destinations and their routes; the first matching pattern wins.
package struct RouteTable: Sendable {
    package private(set) var entries: [(pattern: DestinationPattern, route: any AppRoute)]

    package init(_ entries: [(pattern: DestinationPattern, route: any AppRoute)] = []) {
        self.entries = entries
    }

    package mutating func add(_ pattern: DestinationPattern, _ route: any AppRoute) {
        entries.append((pattern, route))
    }

    package func route(for destination: String) -> (any AppRoute)? {
        for entry in entries where entry.pattern.matches(destination) { return entry.route }
        return nil
    }
}
