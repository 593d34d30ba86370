import NIOCore
import NIOWebSocket
import STOMPCodec

/// Asks the transport below a session to change how it decodes.
public enum STOMPTransportControl: Sendable {
    /// Header escaping on (STOMP 1.1+) or off (1.0), sent once the version is negotiated.
    case setHeaderEscaping(Bool)
}

/// Tells the session that bytes arrived which carried no frame (a heart-beat, a ping).
public struct STOMPTransportActivity: Sendable {}

/// Turns WebSocket messages into STOMP frames.
///
/// STOMP is a byte stream here: a frame may span several WebSocket messages (text, binary or
/// continuation) and one message may carry several frames. Pings are answered with pongs; a
/// close frame is echoed and the connection closed. Unmasked client frames are a protocol
/// error (RFC 6455 §5.1).
public final class WebSocketSTOMPTransport: ChannelDuplexHandler {
    public typealias InboundIn = WebSocketFrame
    public typealias InboundOut = STOMPFrame
    public typealias OutboundIn = WebSocketFrame
    public typealias OutboundOut = WebSocketFrame

    private var decoder: STOMPFrameDecoder
    private var cumulation: ByteBuffer?
    private var failed = false
    private var closeSent = false

    public init(limits: STOMPDecoderLimits) {
        self.decoder = STOMPFrameDecoder(limits: limits, escapeHeaders: true)
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard !failed else { return }
        switch frame.opcode {
        case .text, .binary, .continuation:
            guard frame.maskKey != nil else {
                closeWithProtocolError(context: context, reason: "client frames must be masked")
                return
            }
            var payload = frame.unmaskedData
            if cumulation == nil || cumulation!.readableBytes == 0 {
                cumulation = payload
            } else {
                cumulation!.writeBuffer(&payload)
            }
            decodeFrames(context: context)
        case .ping:
            var pong = frame.unmaskedData
            let reply = WebSocketFrame(fin: true, opcode: .pong, data: context.channel.allocator.buffer(buffer: pong.readSlice(length: pong.readableBytes)!))
            context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
            context.fireUserInboundEventTriggered(STOMPTransportActivity())
        case .pong:
            context.fireUserInboundEventTriggered(STOMPTransportActivity())
        case .connectionClose:
            guard !closeSent else {
                context.close(promise: nil)
                return
            }
            closeSent = true
            var data = frame.unmaskedData
            let code = data.readSlice(length: min(2, data.readableBytes)) ?? ByteBuffer()
            let reply = WebSocketFrame(fin: true, opcode: .connectionClose, data: code)
            context.writeAndFlush(wrapOutboundOut(reply)).whenComplete { _ in context.close(promise: nil) }
        default:
            closeWithProtocolError(context: context, reason: "unknown opcode")
        }
    }

    private func decodeFrames(context: ChannelHandlerContext) {
        var produced = false
        while !failed, cumulation != nil {
            let next: STOMPFrame?
            do {
                next = try decoder.decodeFrame(&cumulation!)
            } catch {
                failed = true
                cumulation = nil
                context.fireErrorCaught(error)
                return
            }
            guard let frame = next else { break }
            produced = true
            context.fireChannelRead(wrapInboundOut(frame))
        }
        if let c = cumulation {
            if c.readableBytes == 0 {
                cumulation = nil
            } else if c.readerIndex > 4096 && c.readerIndex > c.capacity / 2 {
                cumulation!.discardReadBytes()
            }
        }
        if !produced { context.fireUserInboundEventTriggered(STOMPTransportActivity()) }
    }

    private func closeWithProtocolError(context: ChannelHandlerContext, reason: String) {
        failed = true
        guard !closeSent else { return }
        closeSent = true
        var data = context.channel.allocator.buffer(capacity: 2 + reason.utf8.count)
        data.write(webSocketErrorCode: .protocolError)
        data.writeString(reason)
        let frame = WebSocketFrame(fin: true, opcode: .connectionClose, data: data)
        context.writeAndFlush(wrapOutboundOut(frame)).whenComplete { _ in context.close(promise: nil) }
    }

    public func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        if let control = event as? STOMPTransportControl {
            switch control {
            case .setHeaderEscaping(let on): decoder.escapeHeaders = on
            }
            promise?.succeed()
        } else {
            context.triggerUserOutboundEvent(event, promise: promise)
        }
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if unwrapOutboundIn(data).opcode == .connectionClose {
            if closeSent { promise?.succeed(); return }
            closeSent = true
        }
        context.write(data, promise: promise)
    }
}
