import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import SwitchboardWire

/// Closes a connection that has not completed its first HTTP request (an upgrade or an API
/// call) within the deadline: slowloris-style slow headers, half-open handshakes and silent
/// TCP connections do not hold a socket forever. Cancelled once the request head is in:
/// ``FirstRequestRouter`` says so for a WebSocket upgrade; on an HTTP connection this handler
/// sits after NIO's HTTP decoder and sees the head itself.
final class HandshakeTimeoutHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    let timeout: TimeAmount
    let registry: PendingHandshakes
    private var task: Scheduled<Void>?
    private var done = false
    private var context: ChannelHandlerContext?

    init(timeout: TimeAmount, registry: PendingHandshakes) {
        self.timeout = timeout
        self.registry = registry
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let channel = context.channel
        registry.add(channel)
        task = context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
        channel.closeFuture.whenComplete { [registry] _ in registry.remove(channel) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head = unwrapInboundIn(data) {
            context.fireChannelRead(data)
            requestArrived(channel: context.channel)
            return
        }
        context.fireChannelRead(data)
    }

    /// Malformed HTTP before the first request completed: NIO has answered 400; close.
    /// (Other errors, such as a refused upgrade, are answered by the channel's handler.)
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !done, error is HTTPParserError {
            context.close(promise: nil)
        }
        context.fireErrorCaught(error)
    }

    /// The request head arrived: stop the clock.
    func requestArrived(channel: any Channel) {
        guard !done else { return }
        done = true
        task?.cancel()
        registry.remove(channel)
        // Leave the pipeline: a long-lived WebSocket session should not carry it.
        if let context { context.pipeline.syncOperations.removeHandler(context: context, promise: nil) }
        context = nil
    }
}

/// Connections still in their first request, closed at shutdown so they cannot hold it up.
final class PendingHandshakes: Sendable {
    private let channels = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])

    func add(_ channel: any Channel) { channels.withLockedValue { $0[ObjectIdentifier(channel)] = channel } }
    func remove(_ channel: any Channel) { _ = channels.withLockedValue { $0.removeValue(forKey: ObjectIdentifier(channel)) } }
    var count: Int { channels.withLockedValue { $0.count } }

    func closeAll() {
        for channel in channels.withLockedValue({ Array($0.values) }) { channel.close(promise: nil) }
    }
}
