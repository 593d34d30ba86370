import NIOCore
import STOMPCodec
import SwitchboardWire

/// A message a route asks the gateway to deliver in answer to an ``AppMessage``.
public struct RouteReply: Sendable, Equatable {
    public enum Target: String, Sendable, Equatable {
        /// Every subscriber of ``destination`` (through the broker, on every instance).
        case broadcast
        /// Only the sending session's subscriptions that match ``destination``.
        case sender
    }
    public var destination: String
    public var body: ByteBuffer
    public var headers: STOMPHeaders
    public var target: Target

    public init(destination: String, body: ByteBuffer, headers: STOMPHeaders = STOMPHeaders(), target: Target = .broadcast) {
        self.destination = destination
        self.body = body
        self.headers = headers
        self.target = target
    }
}

/// Why a route could not take a message. The session answers with an `ERROR` naming it.
public struct RouteError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Carries `/app/...` messages to a backend service.
///
/// The returned future succeeds once the backend has the message (a webhook answered 2xx,
/// a Redis stream confirmed the XADD …); only then is the SEND's `RECEIPT` sent.
public protocol AppRoute: Sendable {
    /// A short description for logs and errors, e.g. `webhook http://svc/greet`.
    var description: String { get }
    func handle(_ message: AppMessage, on eventLoop: any EventLoop) -> EventLoopFuture<[RouteReply]>

    /// True when messages handed over one after another reach the backend in that order even
    /// if the next is handed over before the previous one is confirmed (commands written in
    /// order on one connection). The session then pipelines SENDs to this route (receipts
    /// still in order); otherwise it waits for each before reading the next frame.
    var keepsOrderWhenPipelined: Bool { get }
}

extension AppRoute {
    public var keepsOrderWhenPipelined: Bool { false }
}

/// Application destinations and their routes; the first matching pattern wins.
public struct RouteTable: Sendable {
    public private(set) var entries: [(pattern: DestinationPattern, route: any AppRoute)]

    public init(_ entries: [(pattern: DestinationPattern, route: any AppRoute)] = []) {
        self.entries = entries
    }

    public mutating func add(_ pattern: DestinationPattern, _ route: any AppRoute) {
        entries.append((pattern, route))
    }

    public func route(for destination: String) -> (any AppRoute)? {
        for entry in entries where entry.pattern.matches(destination) { return entry.route }
        return nil
    }
}
