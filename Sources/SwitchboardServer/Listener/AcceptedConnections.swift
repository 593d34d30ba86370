import Logging
import NIOConcurrencyHelpers
import NIOCore

/// The connections one listening socket accepted, for the listener's graceful stop. It does
/// what NIO Extras' `ServerQuiescingHelper` does, and one thing more:
///
/// - ``quiesce(listeningSocket:)`` closes the listening socket, sends every open connection a
///   `ChannelShouldQuiesceEvent` (idle HTTP connections close at once, busy ones after their
///   answers or the grace, see ``HTTPConnectionIdleState``), and completes once all are closed;
/// - ``closeRemaining(logger:)``, at the listener's deadline, logs what each connection still
///   open is (its peer and handlers) and closes it, so nothing is left for the event loops'
///   own shutdown (where a connection's close callbacks would find their loop stopped).
///
/// A connection accepted once the quiesce began raced with the listening socket's close: it is
/// closed before it is set up. One instance per listening socket; the socket's event loop
/// records, closes run on each connection's loop, so the state is behind a lock (uncontended
/// with one listening socket per loop).
final class AcceptedConnections: Sendable {
    private struct State {
        var open: [ObjectIdentifier: any Channel] = [:]
        var quiescing = false
        /// Completed when the last open connection closes, once quiescing.
        var allClosed: EventLoopPromise<Void>?
    }

    private let state = NIOLockedValueBox(State())

    /// Connections open now.
    var count: Int { state.withLockedValue { $0.open.count } }

    /// The handler of the listening socket's pipeline, before NIO's accept handler.
    func makeHandler() -> some ChannelInboundHandler { Recorder(connections: self) }

    /// Records `channel`; false if the quiesce began (the caller closes it and drops it).
    func accepted(_ channel: any Channel) -> Bool {
        let recorded = state.withLockedValue { s -> Bool in
            guard !s.quiescing else { return false }
            s.open[ObjectIdentifier(channel)] = channel
            return true
        }
        guard recorded else { return false }
        channel.closeFuture.whenComplete { _ in self.closed(channel) }
        return true
    }

    private func closed(_ channel: any Channel) {
        let done: EventLoopPromise<Void>? = state.withLockedValue { s in
            s.open[ObjectIdentifier(channel)] = nil
            guard s.quiescing, s.open.isEmpty else { return nil }
            defer { s.allClosed = nil }
            return s.allClosed
        }
        done?.succeed()
    }

    /// Stops accepting (closes `listeningSocket`) and tells every open connection to quiesce.
    /// The future completes once every connection has closed. Call it once.
    func quiesce(listeningSocket: any Channel) -> EventLoopFuture<Void> {
        let promise = listeningSocket.eventLoop.makePromise(of: Void.self)
        let open: [any Channel] = state.withLockedValue { s in
            s.quiescing = true
            if !s.open.isEmpty { s.allClosed = promise }
            return Array(s.open.values)
        }
        listeningSocket.close(promise: nil)
        if open.isEmpty { promise.succeed() }
        for channel in open {
            channel.eventLoop.execute { channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent()) }
        }
        return promise.futureResult
    }

    /// Closes every connection still open, each logged with what it is; returns how many.
    @discardableResult
    func closeRemaining(logger: Logger) -> Int {
        let open = state.withLockedValue { Array($0.open.values) }
        for channel in open {
            channel.eventLoop.execute {
                logger.warning(
                    "listener: closing a connection still open after the grace",
                    metadata: [
                        "peer": "\(channel.remoteAddress.map { "\($0)" } ?? "unknown")", "active": "\(channel.isActive)",
                        "handlers": "\(Self.handlerTypes(channel.pipeline.debugDescription).joined(separator: ", "))",
                    ])
                channel.close(promise: nil)
            }
        }
        return open.count
    }

    /// The handler types, in order, from `ChannelPipeline.debugDescription` (a header, a legend,
    /// then one line per handler: its type as inbound and/or outbound, then `[name]`).
    static func handlerTypes(_ description: String) -> [String] {
        description.split(separator: "\n").dropFirst(2).compactMap { line in
            line.split(separator: " ").first { $0 != "↓↑" && !$0.hasPrefix("[") }.map(String.init)
        }
    }

    /// Sees each accepted connection before NIO's accept handler sets it up.
    private final class Recorder: ChannelInboundHandler {
        typealias InboundIn = any Channel
        let connections: AcceptedConnections

        init(connections: AcceptedConnections) { self.connections = connections }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let channel = unwrapInboundIn(data)
            guard connections.accepted(channel) else {
                channel.close(promise: nil)
                return
            }
            context.fireChannelRead(data)
        }
    }
}
