import NIOCore

/// Sent toward the socket by ``WebSocketSTOMPTransport`` when it has decoded the session's
/// `CONNECT` (or `STOMP`) frame: ``PreConnectInputLimit`` leaves the pipeline.
package struct STOMPConnectFrameRead: Sendable {}

/// A client sent more than ``PreConnectInputLimit/budget`` bytes before its `CONNECT` frame.
package struct PreConnectInputExceeded: Error, Sendable, CustomStringConvertible {
    package var limit: Int
    package init(limit: Int) { self.limit = limit }
    package var description: String { "more than \(limit) bytes before CONNECT: a CONNECT frame holds headers only (limits.max-header-bytes)" }
}

/// Bounds what a WebSocket connection may send before its `CONNECT` frame is read.
///
/// Until then the connection has proven nothing (no credentials checked), yet the frame
/// decoders below the session would hold up to a whole frame of `limits.max-frame-bytes`
/// (and the WebSocket decoder a WebSocket frame as large) until the connect timeout. A
/// `CONNECT` frame carries headers only (STOMP 1.2: only `SEND`, `MESSAGE` and `ERROR` have a
/// body), so the bytes before it, WebSocket framing and pings included, are bounded by
/// `limits.max-header-bytes` plus ``margin``. Past that the session fails with an `ERROR`
/// (``PreConnectInputExceeded``), and what the client still sends is dropped unread.
///
/// Sits in front of the WebSocket frame decoder, counts raw bytes, and leaves the pipeline
/// when the transport says the `CONNECT` frame was read (``STOMPConnectFrameRead``): after
/// that it costs nothing.
package final class PreConnectInputLimit: ChannelDuplexHandler, RemovableChannelHandler {
    package typealias InboundIn = ByteBuffer
    package typealias InboundOut = ByteBuffer
    package typealias OutboundIn = ByteBuffer

    /// What framing, pings and heart-beat EOLs may add to the `CONNECT` frame's headers.
    package static let margin = 4 * 1024

    /// Bytes a client may send before its `CONNECT` frame is read.
    package let budget: Int
    private var received = 0
    private var connectRead = false
    private var exceeded = false

    /// - Parameter maxHeaderBytes: `limits.max-header-bytes` (``STOMPDecoderLimits/maxHeaderBytes``).
    package init(maxHeaderBytes: Int) {
        self.budget = maxHeaderBytes + Self.margin
    }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !exceeded else { return }
        received += unwrapInboundIn(data).readableBytes
        // Bytes of this read after the CONNECT frame are the session's, whatever their size.
        context.fireChannelRead(data)
        guard !connectRead, received > budget else { return }
        exceeded = true
        context.fireErrorCaught(PreConnectInputExceeded(limit: budget))
    }

    package func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard event is STOMPConnectFrameRead else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        promise?.succeed()
        guard !connectRead else { return }
        connectRead = true
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
