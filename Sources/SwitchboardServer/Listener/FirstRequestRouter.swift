import NIOCore
import NIOWebSocket
import SwitchboardCore
import SwitchboardWire

/// The first handler of every accepted connection: it reads the first request head and makes
/// the connection either a STOMP WebSocket session or an HTTP/1.1 connection for the API.
///
/// A WebSocket upgrade (see ``UpgradeRequestHead``) is answered here, and the pipeline becomes
/// NIO's frame decoder, ``WebSocketSTOMPTransport`` and ``STOMPSessionHandler``: the whole
/// handshake runs synchronously on the connection's event loop, with no HTTP codec, future
/// chain or Swift task on the way. Anything else gets the full HTTP/1.1 pipeline (NIO's
/// parser, Hummingbird's router) and is fed the bytes read so far, unchanged.
///
/// Limits: the head is buffered up to ``maxHeadBytes``; a longer one goes to the HTTP parser,
/// which answers 400 for over-long headers. ``HandshakeTimeoutHandler`` bounds the time.
final class FirstRequestRouter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The HTTP decoder's own limits (64 KiB of headers) plus room for the request line.
    static let maxHeadBytes = 80 * 1024

    let handshake: WebSocketHandshake
    /// Largest WebSocket frame payload a client may send.
    let maxFrameSize: Int
    let timeout: HandshakeTimeoutHandler
    /// False on the API-only port (`http.api-port`): an upgrade is refused with a 404 naming
    /// the sessions' port, since its event loops do not run sessions.
    let acceptsSessions: Bool
    /// Installs the HTTP/1.1 pipeline after this handler and takes the connection over.
    let switchToHTTP: (any Channel, ChannelPipeline.SynchronousOperations.Position) throws -> Void
    /// The port's plain-HTTP connections (`http.max-connections`); nil: not counted.
    let httpConnections: HTTPConnectionCount?

    private var buffered: ByteBuffer?
    /// Where the search for the end of the head resumes.
    private var scanned = 0
    private var decided = false
    /// Refused (over `http.max-connections`, or a WebSocket upgrade refused): the answer is
    /// out, the rest is read and dropped until the client closes, for at most ``lingerTime``.
    private var lingering = false
    static let lingerTime = TimeAmount.seconds(2)

    init(
        handshake: WebSocketHandshake, maxFrameSize: Int, timeout: HandshakeTimeoutHandler, acceptsSessions: Bool = true,
        httpConnections: HTTPConnectionCount? = nil,
        switchToHTTP: @escaping (any Channel, ChannelPipeline.SynchronousOperations.Position) throws -> Void
    ) {
        self.httpConnections = httpConnections
        self.handshake = handshake
        self.maxFrameSize = maxFrameSize
        self.timeout = timeout
        self.acceptsSessions = acceptsSessions
        self.switchToHTTP = switchToHTTP
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !decided else { return }  // after a refusal, until the close
        // Timed out: closing (over TLS, waiting for the client's close_notify, bytes still come
        // up). An upgrade finished now was accepted, its session's handlers went in behind the
        // expired timeout handler, and the first WebSocket frame trapped in it.
        guard !timeout.expired else { return }
        var incoming = unwrapInboundIn(data)
        if buffered == nil {
            buffered = incoming
        } else {
            buffered!.writeBuffer(&incoming)
        }
        // Not a GET: certainly no upgrade; the HTTP parser serves it or answers 400 at once.
        guard Self.mayBegin(buffered!, "GET ") else {
            // A `HEAD` health check may take a place of the reserve too: its request line is
            // read first (whole: `Connection: close` goes after it), each byte looked at once,
            // and no further than the parser takes a line.
            if httpConnections != nil, Self.mayBegin(buffered!, "HEAD ") {
                let lineRead =
                    buffered!.readableBytes > Self.maxHeaderFieldBytes + 32
                    || buffered!.readableBytesView.dropFirst(scanned).contains(UInt8(ascii: "\n"))
                scanned = buffered!.readableBytes
                if !lineRead { return }
            }
            becomeHTTP(context: context)
            return
        }
        let from = scanned
        guard let end = buffered!.withUnsafeReadableBytes({ UpgradeRequestHead.endOfHead(in: $0, from: from) }) else {
            // Lines ending in a bare LF never end the head here: the HTTP parser answers them
            // at once (they waited for the handshake timeout, unanswered).
            let bareLF = buffered!.withUnsafeReadableBytes { UpgradeRequestHead.hasBareLF(in: $0, from: from) }
            scanned = max(0, buffered!.readableBytes - 3)
            if bareLF || buffered!.readableBytes > Self.maxHeadBytes { becomeHTTP(context: context) }
            return
        }
        // The HTTP parser's limits hold for an upgrade too: a head beyond them goes to the
        // parser, which refuses it (JSON 400). Checked once per connection, on the head only.
        let withinLimits = buffered!.withUnsafeReadableBytes { Self.headWithinLimits(UnsafeRawBufferPointer(rebasing: $0[..<end])) }
        guard withinLimits else {
            becomeHTTP(context: context)
            return
        }
        let classification = buffered!.withUnsafeReadableBytes { UpgradeRequestHead.classify(UnsafeRawBufferPointer(rebasing: $0[..<end])) }
        switch classification {
        case .plainHTTP:
            becomeHTTP(context: context)
        case .upgrade(let head):
            upgrade(context: context, head: head, headLength: end)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Shutting down before the first request: nothing to finish.
        if !decided || lingering, event is ChannelShouldQuiesceEvent {
            context.close(promise: nil)
            return
        }
        // The client closed its side before a complete first request: none can come any more,
        // so its descriptor is not held until the handshake timeout. (Refused: it read the 503.)
        if !decided || lingering, case ChannelEvent.inputClosed = event {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// The HTTP parser's limits (``HTTPAPIChannel``): at most 100 header fields, a field of at
    /// most 16 KiB, 64 KiB of headers in all.
    static let maxHeaderFields = 100
    static let maxHeaderFieldBytes = 16 * 1024
    static let maxHeaderListBytes = 64 * 1024

    /// Whether a complete head (request line, headers, blank line) is within the HTTP parser's
    /// limits.
    static func headWithinLimits(_ head: UnsafeRawBufferPointer) -> Bool {
        guard head.count <= maxHeaderListBytes + 8 * 1024 else { return false }
        var lines = 0
        var start = 0
        while let newline = head[start...].firstIndex(of: UInt8(ascii: "\n")) {
            if newline - start > maxHeaderFieldBytes { return false }
            lines += 1
            start = newline + 1
        }
        // The request line and the blank line are not fields.
        return lines - 2 <= maxHeaderFields
    }

    /// Whether the request is a health check (`GET` or `HEAD` of `/health`, `/health/live`,
    /// `/health/ready`) whose request line is complete: `Connection: close` goes after it (a line
    /// padded past the router's wait, spaces before the version, would keep its place open).
    static func isHealthCheck(_ buffer: ByteBuffer?) -> Bool {
        guard let buffer, buffer.readableBytesView.contains(UInt8(ascii: "\n")) else { return false }
        return buffer.withUnsafeReadableBytes { bytes in
            let line = bytes.prefix(healthLinePrefix).split(separator: UInt8(ascii: " "), maxSplits: 2, omittingEmptySubsequences: false)
            guard line.count >= 2, line[0].elementsEqual("GET".utf8) || line[0].elementsEqual("HEAD".utf8) else { return false }
            let path = line[1].prefix { $0 != UInt8(ascii: "?") }
            return ["/health", "/health/live", "/health/ready"].contains { path.elementsEqual($0.utf8) }
        }
    }

    /// `head` with `Connection: close` after its request line.
    static func closingAfterAnswer(_ head: ByteBuffer) -> ByteBuffer {
        guard let newline = head.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else { return head }
        let split = newline - head.readableBytesView.startIndex + 1
        var out = ByteBuffer()
        out.reserveCapacity(head.readableBytes + 19)
        out.writeImmutableBuffer(head.getSlice(at: head.readerIndex, length: split)!)
        out.writeString("Connection: close\r\n")
        out.writeImmutableBuffer(head.getSlice(at: head.readerIndex + split, length: head.readableBytes - split)!)
        return out
    }

    /// How much of a request line ``isHealthCheck`` reads.
    static let healthLinePrefix = 32

    /// Whether the bytes so far can begin `start` (a method and its space).
    static func mayBegin(_ buffer: ByteBuffer, _ start: String) -> Bool {
        buffer.withUnsafeReadableBytes { bytes in
            zip(bytes.prefix(start.utf8.count), start.utf8).allSatisfy { $0 == $1 }
        }
    }

    /// Installs the HTTP/1.1 pipeline between this handler and the handshake timeout (which
    /// stops when the parser produces the head, and closes on a parse error) and hands it
    /// everything read so far.
    private func becomeHTTP(context: ChannelHandlerContext) {
        decided = true
        if let count = httpConnections {
            switch count.admit(context.channel, healthCheck: Self.isHealthCheck(buffered)) {
            case .refused:
                refuse(context: context, limit: count.limit)
                return
            case .reserve:
                // Answered once, then closed: nothing pipelined behind the check is served.
                buffered = buffered.map(Self.closingAfterAnswer)
            case .admitted:
                break
            }
        }
        do {
            try switchToHTTP(context.channel, .after(self))
        } catch {
            context.close(promise: nil)
            return
        }
        let bytes = buffered
        buffered = nil
        if let bytes { forward(context: context, bytes) }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    private func upgrade(context: ChannelHandlerContext, head: UpgradeRequestHead, headLength: Int) {
        decided = true
        let channel = context.channel
        let address = channel.remoteAddress?.ipAddress ?? "unknown"
        let decision: WebSocketHandshake.Decision =
            acceptsSessions
            ? handshake.decide(head, address: address)
            : .refuse(
                WebSocketHandshake.Refusal(
                    status: 404, reason: "Not Found",
                    message: "this port serves the HTTP API only (http.api-port); WebSocket sessions are on http.port", field: "path"))
        switch decision {
        case .refuse(let refusal):
            // Closed at once with the client's bytes unread, the close was a reset, which can
            // destroy the answer before the client reads it.
            answerAndLinger(context: context, WebSocketHandshake.response(for: refusal))
        case .accept(let response, let info):
            // (A refused connection stays counted with its address's pending connections while
            // it lingers: refusals cannot hold more descriptors than that limit.)
            timeout.requestArrived()
            let limiter = handshake.limiter
            channel.closeFuture.whenComplete { _ in limiter.remove(address) }
            let configuration = handshake.services.configuration
            do {
                let sync = context.pipeline.syncOperations
                let preConnect = PreConnectInputLimit(maxHeaderBytes: configuration.decoderLimits.maxHeaderBytes)
                try sync.addHandler(preConnect, position: .after(self))
                let decoder = ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: maxFrameSize))
                try sync.addHandler(decoder, position: .after(preConnect))
                let transport = WebSocketSTOMPTransport(limits: configuration.decoderLimits, bytesPerSecond: configuration.maxBytesPerSecond)
                try sync.addHandler(transport, position: .after(decoder))
                try sync.addHandler(STOMPSessionHandler(services: handshake.services, handshake: info), position: .after(transport))
                // A session has no use for a half-closed connection (the transport closes on the
                // peer's FIN), and with half-closure on, NIO asserted in a debug build when a flush
                // in channelReadComplete found the peer reset while it handled an EOF: the flush
                // closed the channel, then NIO closed its input and asserted it was registered (a
                // probe, 8 of 26 runs with clients closing during large replays, whose reads pause).
                try channel.syncOptions?.setOption(ChannelOptions.allowRemoteHalfClosure, value: false)
            } catch {
                context.close(promise: nil)
                return
            }
            context.writeAndFlush(wrapOutboundOut(response), promise: nil)
            var rest = buffered!
            buffered = nil
            rest.moveReaderIndex(forwardBy: headLength)
            if rest.readableBytes > 0 { forward(context: context, rest) }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    /// Answers 503 and closes: output first, then, once the client closed its side or after
    /// ``lingerTime``, the connection (closing with the request unread would reset it, and
    /// the reset can destroy the 503 before the client reads it).
    private func refuse(context: ChannelHandlerContext, limit: Int) {
        answerAndLinger(context: context, context.channel.allocator.buffer(string: HTTPConnectionCount.refusal(limit: limit)))
    }

    /// Writes `answer` (it says `Connection: close`), closes the output, and reads and drops
    /// what the client still sends until it closes, for at most ``lingerTime``.
    private func answerAndLinger(context: ChannelHandlerContext, _ answer: ByteBuffer) {
        lingering = true
        buffered = nil
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(answer)).whenComplete { _ in
            channel.close(mode: .output, promise: nil)
            channel.eventLoop.scheduleTask(in: Self.lingerTime) { channel.close(promise: nil) }
        }
    }

    /// Hands bytes read so far to the handlers installed after this one (before it leaves).
    private func forward(context: ChannelHandlerContext, _ bytes: ByteBuffer) {
        context.fireChannelRead(wrapInboundOut(bytes))
        context.fireChannelReadComplete()
    }
}
