import NIOCore
import NIOWebSocket
import STOMPCodec
import SwitchboardWire

/// Tells the session that bytes arrived which carried no frame (a heart-beat, a ping).
package struct STOMPTransportActivity: Sendable {}

/// Sent up the pipeline when the transport has written (or echoed) a WebSocket close frame:
/// the session above must write nothing more.
package struct STOMPTransportClosing: Sendable {}

/// Turns WebSocket messages into STOMP frames.
///
/// STOMP is a byte stream here: a frame may span several WebSocket messages (text, binary or
/// continuation) and one message may carry several frames. Pings are answered with pongs; a
/// close frame is echoed and the connection closed.
///
/// WebSocket-level errors are answered here, all the same way: a close frame with the code
/// and a short plain-English reason, then the TCP connection is closed; no STOMP `ERROR`
/// frame, since the fault is below STOMP. That is 1002 for a protocol error (RFC 6455 §5–7:
/// unmasked client frame, reserved bits or opcode, misplaced continuation, control frame
/// fragmented or over 125 bytes, bad close code or 1-byte close payload) and 1007 for a text
/// message or close reason that is not UTF-8 (§8.1). Text messages are validated as they
/// arrive, across fragments, in place. A WebSocket frame over the size limit is a STOMP limit
/// error instead (``STOMPDecodingError/frameTooLarge(limit:)``, passed up to the session).
///
/// The handler is inbound only: the session above writes complete WebSocket frames (bytes
/// built by ``WebSocketServerFrame``) straight past it to the socket, and talks to it directly
/// for the two things they share (``setHeaderEscaping(_:carriageReturn:)`` and ``claimCloseFrame()``).
package final class WebSocketSTOMPTransport: ChannelInboundHandler {
    package typealias InboundIn = WebSocketFrame
    package typealias InboundOut = STOMPFrame
    package typealias OutboundOut = ByteBuffer

    private var decoder: STOMPFrameDecoder
    private var cumulation: ByteBuffer?
    private var failed = false
    private var closeSent = false
    /// The payload of the latest ping of this read, answered once the read is over.
    private var pongOwed: ByteBuffer?
    /// Our close frame is out and our side of TCP is closed: what the client still sends is
    /// read and dropped until its close frame or its EOF (see ``close(after:)``).
    private var lingering = false
    private var inFragmentedMessage = false
    /// Whether the message in progress is a text message, and its UTF-8 state so far.
    private var inTextMessage = false
    private var utf8 = UTF8Validator()

    /// The STOMP version is negotiated (``setHeaderEscaping(_:carriageReturn:)`` was called).
    private var versionKnown = false
    /// A `CONNECT` went up and its version is not known yet: frames behind it stay undecoded
    /// (a 1.0 session's headers are not escaped) until ``setHeaderEscaping(_:carriageReturn:)``. The session
    /// stops reading meanwhile, so what is held is at most what one read brought.
    private var awaitingVersion = false
    /// A `CONNECT` (or `STOMP`) frame was decoded, and ``STOMPConnectFrameRead`` sent toward the
    /// socket (``PreConnectInputLimit`` leaves).
    private var connectRead = false
    /// Inside ``decodeFrames(context:)``: a version set meanwhile needs no decode of its own.
    private var decoding = false
    private var context: ChannelHandlerContext?

    private var byteBucket: TokenBucket?
    private let bytesPerSecond: Int
    /// What a frame (data or control) counts against `limits.bytes-per-second` on top of its payload.
    static let frameCost = 64
    /// What a WebSocket frame may hold beyond `limits.max-frame-bytes` (the gateway's frame
    /// decoder takes the STOMP limit plus this: heart-beat EOLs, several frames in a message).
    package static let frameMargin = 1024

    /// - Parameter bytesPerSecond: sustained inbound payload rate (burst 2×); 0 disables it.
    package init(limits: STOMPDecoderLimits, bytesPerSecond: Int = 0) {
        self.decoder = STOMPFrameDecoder(limits: limits, escapeHeaders: true)
        self.bytesPerSecond = bytesPerSecond
        // The burst holds at least one WebSocket frame of the largest size the limits let in
        // (`limits.max-frame-bytes` above 2 × `bytes-per-second` refused every such frame as a
        // rate limit, whatever the connection's rate).
        if bytesPerSecond > 0 {
            byteBucket = TokenBucket(rate: bytesPerSecond, burst: max(2 * bytesPerSecond, limits.maxFrameBytes + Self.frameMargin + Self.frameCost))
        }
    }

    package func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    package func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if lingering {
            // The client answered our close frame: the closing handshake is done.
            if frame.opcode == .connectionClose { context.close(promise: nil) }
            return
        }
        // After a failure nothing more is decoded, but a client's close frame is still answered
        // at once (RFC 6455 §5.5.1; the ERROR may wait behind a step in flight).
        guard !failed || (frame.opcode == .connectionClose && !closeSent) else { return }
        // RFC 6455 §5.1–5.5: client frames are masked; no extension is negotiated, so the
        // reserved bits are 0; continuation frames continue a fragmented message.
        guard frame.maskKey != nil else {
            closeWithProtocolError(context: context, reason: "client frames must be masked")
            return
        }
        guard !frame.rsv1, !frame.rsv2, !frame.rsv3 else {
            closeWithProtocolError(context: context, reason: "reserved bits set without a negotiated extension")
            return
        }
        switch frame.opcode {
        case .text, .binary, .continuation:
            if frame.opcode == .continuation {
                guard inFragmentedMessage else {
                    closeWithProtocolError(context: context, reason: "continuation frame without a message to continue")
                    return
                }
            } else if inFragmentedMessage {
                closeWithProtocolError(context: context, reason: "new message started inside a fragmented message")
                return
            } else {
                inTextMessage = frame.opcode == .text
            }
            inFragmentedMessage = !frame.fin
            guard charge(frame, context: context) else { return }
            var payload = frame.unmaskedData
            if inTextMessage {
                let valid = payload.withUnsafeReadableBytes { utf8.validate($0) }
                guard valid, !frame.fin || utf8.isComplete else {
                    closeWithError(context: context, code: .dataInconsistentWithMessage, reason: "text message is not valid UTF-8")
                    return
                }
                if frame.fin { utf8 = UTF8Validator() }
            }
            if cumulation == nil || cumulation!.readableBytes == 0 {
                cumulation = payload
            } else {
                cumulation!.writeBuffer(&payload)
            }
            decodeFrames(context: context)
        case .ping:
            // Control frames count against the byte rate like data frames: a ping costs a
            // pong's write. Once a close frame is out, pings go unanswered (RFC 6455 §5.5.1).
            // Answered once per read, for the latest ping (RFC 6455 §5.5.3 allows it): a read
            // full of pings cost a flush, a system call, each.
            guard charge(frame, context: context), !closeSent else { return }
            pongOwed = frame.unmaskedData
            context.fireUserInboundEventTriggered(STOMPTransportActivity())
        case .pong:
            guard charge(frame, context: context) else { return }
            context.fireUserInboundEventTriggered(STOMPTransportActivity())
        case .connectionClose:
            guard !closeSent else {
                context.close(promise: nil)
                return
            }
            var data = frame.unmaskedData
            let code: UInt16?
            switch data.readableBytes {
            case 0: code = nil
            case 1: closeWithProtocolError(context: context, reason: "close frame with a 1-byte payload"); return
            default: code = data.readInteger(as: UInt16.self)
            }
            if let code, !Self.isValidCloseCode(code) {
                closeWithProtocolError(context: context, reason: "invalid close code \(code)")
                return
            }
            var reason = UTF8Validator()
            guard data.withUnsafeReadableBytes({ reason.validate($0) }), reason.isComplete else {
                closeWithError(context: context, code: .dataInconsistentWithMessage, reason: "close reason is not valid UTF-8")
                return
            }
            closeSent = true
            context.fireUserInboundEventTriggered(STOMPTransportClosing())
            let reply = WebSocketServerFrame.close(code: code.map { WebSocketErrorCode(codeNumber: Int($0)) }, allocator: context.channel.allocator)
            // Closed once the echo is written, or after the grace: a client that does not read
            // (the echo queued behind unsent messages) kept the connection open for good.
            let channel = context.channel
            let deadline = context.eventLoop.scheduleTask(in: Self.closeGrace) { channel.close(promise: nil) }
            channel.closeFuture.whenComplete { _ in deadline.cancel() }
            context.writeAndFlush(wrapOutboundOut(reply)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        default:
            closeWithProtocolError(context: context, reason: "unknown opcode")
        }
    }

    /// Close codes a peer may send: those RFC 6455 §7.4.1 defines and the IANA registry adds
    /// (1012–1014), and 3000–4999 for libraries and applications. Refused: below 1000, 1004
    /// (reserved), 1005, 1006 and 1015 (never sent on the wire), 1016–2999 (unassigned), 5000 up.
    static func isValidCloseCode(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1014, 3000...4999: return true
        default: return false
        }
    }

    /// Errors of NIO's `WebSocketFrameDecoder` (the handler before this one) get the same
    /// treatment as this handler's own checks; a frame over the size limit is a STOMP limit.
    package func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // After a decoding error NIO's frame decoder stays failed: every later read is this
        // error, its bytes unread. Dropped, like the bytes read while lingering: closing on it
        // would make the close a reset, the case lingering is for (the rest of a frame over
        // the size limit, say). The linger ends at the client's EOF or at the deadline.
        if failed || lingering, error is ByteToMessageDecoderError { return }
        guard !lingering else {
            context.close(promise: nil)
            return
        }
        guard let error = error as? NIOWebSocketError else {
            context.fireErrorCaught(error)
            return
        }
        if error == .invalidFrameLength {
            failed = true
            cumulation = nil
            context.fireErrorCaught(STOMPDecodingError.frameTooLarge(limit: decoder.limits.maxFrameBytes))
        } else if error == .multiByteControlFrameLength {
            closeWithProtocolError(context: context, reason: "control frame longer than 125 bytes")
        } else if error == .fragmentedControlFrame {
            closeWithProtocolError(context: context, reason: "fragmented control frame")
        } else {
            closeWithProtocolError(context: context, reason: "malformed frame")
        }
    }

    /// While lingering the session's hold on reads does not apply: read on until the client's
    /// close frame or EOF.
    package func channelReadComplete(context: ChannelHandlerContext) {
        guard !lingering else {
            context.read()
            return
        }
        if let payload = pongOwed {
            pongOwed = nil
            if !closeSent {
                context.writeAndFlush(
                    wrapOutboundOut(WebSocketServerFrame.make(opcode: .pong, payload: payload, allocator: context.channel.allocator)), promise: nil)
            }
        }
        context.fireChannelReadComplete()
    }

    /// A peer that half-closes (TCP FIN without a close frame) is gone: close our side too.
    package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func decodeFrames(context: ChannelHandlerContext) {
        var produced = false
        decoding = true
        defer { decoding = false }
        while !failed, !awaitingVersion, cumulation != nil {
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
            // The frames behind a CONNECT wait for its version (their header escaping),
            // unless the session settles it before this returns (no asynchronous step).
            if frame.command == .connect || frame.command == .stomp {
                if !versionKnown { awaitingVersion = true }
                // What the client sends from now on is bounded by the session's limits.
                if !connectRead {
                    connectRead = true
                    context.triggerUserOutboundEvent(STOMPConnectFrameRead(), promise: nil)
                }
            }
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

    /// Takes `frame`'s cost from the byte-rate bucket; past the rate, fails the session and
    /// returns false. Each frame counts at least ``frameCost`` bytes: empty frames cost no
    /// payload but do cost work (a probe kept a loop busy with a million empty continuations).
    private func charge(_ frame: WebSocketFrame, context: ChannelHandlerContext) -> Bool {
        guard byteBucket != nil, !byteBucket!.take(frame.length + Self.frameCost) else { return true }
        failed = true
        cumulation = nil
        context.fireErrorCaught(RateLimitExceeded(description: "rate limit exceeded: more than \(bytesPerSecond) bytes per second"))
        return false
    }

    private func closeWithProtocolError(context: ChannelHandlerContext, reason: String) {
        closeWithError(context: context, code: .protocolError, reason: reason)
    }

    /// Sends a close frame with `code` and `reason` and closes the connection (see
    /// ``close(after:)``). Nothing more is decoded.
    private func closeWithError(context: ChannelHandlerContext, code: WebSocketErrorCode, reason: String) {
        failed = true
        cumulation = nil
        guard !closeSent else { return }
        closeSent = true
        context.fireUserInboundEventTriggered(STOMPTransportClosing())
        let frame = WebSocketServerFrame.close(code: code, reason: reason, allocator: context.channel.allocator)
        close(after: context.writeAndFlush(wrapOutboundOut(frame)))
    }

    /// How long a connection may take, after our close frame was written, to be closed:
    /// the write itself (a peer that does not read) and the wait for the client's close frame.
    static let closeGrace = TimeAmount.seconds(2)

    /// Closes the connection once `written` (our close frame) is out, within ``closeGrace``
    /// whatever the client does. With `linger`, our side of TCP closes first (a FIN after the
    /// close frame, RFC 6455 §7.1.1), and what the client still sends is read and dropped until
    /// its close frame or its EOF. Closing at once with its frames unread made the close a
    /// reset, and a stack that discards what it received on a reset (Windows, a proxy passing
    /// the reset on) lost the frames before it: an `ERROR`, the close frame.
    package func close(after written: EventLoopFuture<Void>, linger: Bool = true) {
        guard let context, !lingering else { return }
        let channel = context.channel
        let deadline = context.eventLoop.scheduleTask(in: Self.closeGrace) { channel.close(promise: nil) }
        channel.closeFuture.whenComplete { _ in deadline.cancel() }
        written.hop(to: context.eventLoop).assumeIsolated().whenComplete { result in
            guard linger, case .success = result, channel.isActive, let context = self.context else { return channel.close(promise: nil) }
            self.lingering = true
            self.failed = true
            self.cumulation = nil
            // (Where the output cannot be closed alone, the connection is closed.)
            channel.close(mode: .output).whenFailure { _ in channel.close(promise: nil) }
            context.read()
        }
    }

    /// Header escaping on (STOMP 1.1+) or off (1.0), and whether `\r` is one of the escapes
    /// (1.2), set once the version is negotiated. Frames held behind the `CONNECT` are decoded
    /// now (in a task of their own when this is called from outside the transport's decoding).
    package func setHeaderEscaping(_ on: Bool, carriageReturn: Bool = true) {
        decoder.escapeHeaders = on
        decoder.escapeCarriageReturn = carriageReturn
        versionKnown = true
        guard awaitingVersion else { return }
        awaitingVersion = false
        guard !decoding, let context, cumulation != nil else { return }
        context.eventLoop.assumeIsolated().execute {
            guard let context = self.context, !self.awaitingVersion else { return }
            self.decodeFrames(context: context)
            // As after a socket read: the session flushes what these frames' steps wrote.
            context.fireChannelReadComplete()
        }
    }

    /// Records that a close frame is about to be sent; false if one was sent already
    /// (RFC 6455 §5.5.1: an endpoint sends at most one close frame).
    package func claimCloseFrame() -> Bool {
        guard !closeSent else { return false }
        closeSent = true
        return true
    }
}
