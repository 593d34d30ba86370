// One client connection: WebSocket handshake, RFC 6455 framing and a minimal STOMP 1.2
// client, all on raw ByteBuffers in a single handler. The subscriber path (MESSAGE frame or
// raw WebSocket message → seq/timestamp → histogram and loss bitmap) allocates nothing per
// message: bytes are scanned in place with memchr, numbers are parsed from the bytes, and
// the per-connection bitmap only grows geometrically.

import NIOCore

enum ClientMode: String, Sendable {
    case stomp
    case rawWS = "raw-ws"
}

enum ConnRole: Sendable {
    case subscriber
    case publisher
}

struct ConnConfig: Sendable {
    var mode: ClientMode
    var role: ConnRole
    var hostHeader: String
    var wsPath: String
    var destination: String
    var topicIndex: Int
    var divisor: UInt64
    var login: String?
    var passcode: String?
    var vhost: String
    var handshakeTimeout: TimeAmount
    /// Subscriber: SUBSCRIBE goes out with CONNECT in one write; ready at its RECEIPT.
    var pipelineSubscribe = false
    /// The CONNECT `heart-beat` header.
    var heartBeat = "0,0"
}

final class WSConn: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum State { case handshaking, stompConnecting, subscribing, ready, closed }

    let cfg: ConnConfig
    let stats: LoopStats
    let startMono: UInt64
    private(set) var state: State = .handshaking
    private(set) var everReady = false
    private var activeSeen = false
    private var context: ChannelHandlerContext?
    private var cumulation: ByteBuffer?
    private var fragment: ByteBuffer?
    private var stompPending: ByteBuffer?
    private var timeout: Scheduled<Void>?
    private var readWall: UInt64 = 0
    private var readMono: UInt64 = 0
    var onReady: ((WSConn) -> Void)?

    // loss / duplicate accounting, keyed by seq / divisor
    private var bits: [UInt64] = []
    private(set) var maxIndex: Int = -1
    private(set) var unique: UInt64 = 0

    // publisher side: send timestamps by seq (receipt latency), scratch for SEND frames
    var receiptSendTimes: [UInt64] = []
    private var scratch: ByteBuffer?

    init(cfg: ConnConfig, stats: LoopStats) {
        self.cfg = cfg
        self.stats = stats
        self.startMono = monoNanos()
    }

    var channel: (any Channel)? { context?.channel }
    var isReady: Bool { state == .ready }

    // MARK: lifecycle

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let loop = context.eventLoop
        self.timeout = loop.scheduleTask(in: cfg.handshakeTimeout) { [self] in
            if self.state != .ready && self.state != .closed {
                self.stats.noteError("handshake timeout")
                self.context?.close(promise: nil)
            }
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        activeSeen = true
        var req = "GET \(cfg.wsPath) HTTP/1.1\r\nHost: \(cfg.hostHeader)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        req += "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        if cfg.mode == .stomp { req += "Sec-WebSocket-Protocol: v12.stomp\r\n" }
        req += "\r\n"
        var buf = context.channel.allocator.buffer(capacity: req.utf8.count)
        buf.writeString(req)
        context.writeAndFlush(wrapOutboundOut(buf), promise: nil)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timeout?.cancel()
        if activeSeen && cfg.role == .subscriber {
            if everReady { stats.disconnects += 1 } else { stats.connectFailed += 1 }
        }
        state = .closed
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !everReady { stats.noteError("\(error)") }
        context.close(promise: nil)
    }

    private func markReady() {
        state = .ready
        everReady = true
        timeout?.cancel()
        let now = monoNanos()
        if cfg.role == .publisher { onReady?(self); return }
        stats.connectOK += 1
        stats.lastConnectOKMono = max(stats.lastConnectOKMono, now)
        stats.connectLatency.recordClamped((now &- startMono) / 1000)
        onReady?(self)
    }

    // MARK: outbound

    private func sendWS(_ context: ChannelHandlerContext, text: String) {
        var buf = context.channel.allocator.buffer(capacity: text.utf8.count + 14)
        appendWS(&buf, text: text)
        context.writeAndFlush(wrapOutboundOut(buf), promise: nil)
    }

    private func appendWS(_ buf: inout ByteBuffer, text: String) {
        buf.writeWSClientFrameHeader(opcode: 0x1, length: text.utf8.count)
        buf.writeString(text)
    }

    private var subscribeFrame: String { "SUBSCRIBE\nid:0\ndestination:\(cfg.destination)\nack:auto\nreceipt:sub\n\n\u{0}" }

    private func onHandshakeDone(_ context: ChannelHandlerContext) {
        switch cfg.mode {
        case .rawWS:
            markReady()
        case .stomp:
            state = .stompConnecting
            var f = "CONNECT\naccept-version:1.2\nhost:\(cfg.vhost)\nheart-beat:\(cfg.heartBeat)\n"
            if let l = cfg.login { f += "login:\(l)\n" }
            if let p = cfg.passcode { f += "passcode:\(p)\n" }
            f += "\n\u{0}"
            if cfg.pipelineSubscribe && cfg.role == .subscriber {
                var buf = context.channel.allocator.buffer(capacity: f.utf8.count + 128)
                appendWS(&buf, text: f)
                appendWS(&buf, text: subscribeFrame)
                state = .subscribing
                context.writeAndFlush(wrapOutboundOut(buf), promise: nil)
            } else {
                sendWS(context, text: f)
            }
        }
    }

    /// Appends one WebSocket frame carrying a STOMP SEND to `out` (publisher role).
    func appendSend(
        into out: inout ByteBuffer, destination: [UInt8], seq: UInt64, wall: UInt64,
        padding: Int, receipt: Bool, allocator: ByteBufferAllocator
    ) {
        var s = scratch ?? allocator.buffer(capacity: 256)
        s.clear()
        s.writeStaticString("SEND\ndestination:")
        s.writeBytes(destination)
        s.writeStaticString("\ncontent-type:text/plain\n")
        if receipt {
            s.writeStaticString("receipt:")
            s.writeDecimal(seq)
            s.writeStaticString("\n")
            if !receiptSendTimes.isEmpty {
                receiptSendTimes[Int(seq & UInt64(receiptSendTimes.count - 1))] = monoNanos()
            }
        }
        s.writeStaticString("\n")
        s.writeDecimal(seq)
        s.writeStaticString(" ")
        s.writeDecimal(wall)
        s.writeStaticString(" ")
        s.writeRepeatingByte(UInt8(ascii: "x"), count: padding)
        s.writeInteger(UInt8(0))
        out.writeWSClientFrameHeader(opcode: 0x1, length: s.readableBytes)
        out.writeImmutableBuffer(s)
        scratch = s
    }

    // MARK: inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        stats.bytesIn &+= UInt64(incoming.readableBytes)
        readWall = 0
        if var c = cumulation {
            cumulation = nil
            c.writeBuffer(&incoming)
            process(context, &c)
        } else {
            process(context, &incoming)
        }
    }

    private func process(_ context: ChannelHandlerContext, _ buf: inout ByteBuffer) {
        if state == .handshaking {
            let hdrEnd: Int = buf.withUnsafeReadableBytes { raw in
                let base = raw.baseAddress!.assumingMemoryBound(to: UInt8.self)
                return findHeaderEnd(base, 0, raw.count)
            }
            if hdrEnd < 0 {
                if buf.readableBytes > 16384 { stats.noteError("oversized handshake"); context.close(promise: nil); return }
                cumulation = buf
                return
            }
            let ok: Bool = buf.withUnsafeReadableBytes { raw in
                raw.count > 12 && raw[9] == UInt8(ascii: "1") && raw[10] == UInt8(ascii: "0") && raw[11] == UInt8(ascii: "1")
            }
            if !ok {
                let line = buf.getString(at: buf.readerIndex, length: min(hdrEnd, 80)) ?? "?"
                stats.noteError("handshake refused: \(line.split(separator: "\r").first ?? "")")
                context.close(promise: nil)
                return
            }
            buf.moveReaderIndex(forwardBy: hdrEnd)
            onHandshakeDone(context)
        }
        guard state != .closed else { return }
        let consumed: Int = buf.withUnsafeReadableBytes { raw in
            guard raw.count > 0 else { return 0 }
            let base = raw.baseAddress!.assumingMemoryBound(to: UInt8.self)
            return parseWSFrames(context, base, raw.count)
        }
        buf.moveReaderIndex(forwardBy: consumed)
        if buf.readableBytes > 0 {
            if buf.readerIndex > 65536 { buf.discardReadBytes() }
            cumulation = buf
        }
    }

    /// Parses complete WebSocket frames in [0, n); returns bytes consumed.
    private func parseWSFrames(_ context: ChannelHandlerContext, _ base: BytePtr, _ n: Int) -> Int {
        var i = 0
        while n - i >= 2 {
            let b0 = base[i], b1 = base[i + 1]
            let opcode = b0 & 0x0F
            let fin = b0 & 0x80 != 0
            let masked = b1 & 0x80 != 0
            var len = Int(b1 & 0x7F)
            var hdr = 2
            if len == 126 {
                if n - i < 4 { break }
                len = Int(base[i + 2]) << 8 | Int(base[i + 3])
                hdr = 4
            } else if len == 127 {
                if n - i < 10 { break }
                var l: UInt64 = 0
                for k in 2..<10 { l = l << 8 | UInt64(base[i + k]) }
                len = Int(l)
                hdr = 10
            }
            if masked { hdr += 4 }  // servers must not mask; tolerate a zero key
            if n - i < hdr + len { break }
            let from = i + hdr, end = i + hdr + len
            switch opcode {
            case 0x1, 0x2:
                if fin {
                    onMessage(context, base, from, end)
                } else {
                    var f = context.channel.allocator.buffer(capacity: len * 2)
                    f.writeBytes(UnsafeRawBufferPointer(start: base + from, count: len))
                    fragment = f
                }
            case 0x0:
                if var f = fragment {
                    fragment = nil
                    f.writeBytes(UnsafeRawBufferPointer(start: base + from, count: len))
                    if fin {
                        f.withUnsafeReadableBytes { raw in
                            onMessage(context, raw.baseAddress!.assumingMemoryBound(to: UInt8.self), 0, raw.count)
                        }
                    } else {
                        fragment = f
                    }
                }
            case 0x8:
                state = .closed
                context.close(promise: nil)
                return n
            case 0x9:
                var pong = context.channel.allocator.buffer(capacity: len + 14)
                pong.writeWSClientFrameHeader(opcode: 0xA, length: len)
                pong.writeBytes(UnsafeRawBufferPointer(start: base + from, count: len))
                context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
            default:
                break
            }
            i = end
        }
        return i
    }

    private func onMessage(_ context: ChannelHandlerContext, _ base: BytePtr, _ from: Int, _ end: Int) {
        switch cfg.mode {
        case .rawWS:
            deliver(base, from, end)
        case .stomp:
            if var p = stompPending {
                stompPending = nil
                p.writeBytes(UnsafeRawBufferPointer(start: base + from, count: end - from))
                let used: Int = p.withUnsafeReadableBytes { raw in
                    parseStomp(context, raw.baseAddress!.assumingMemoryBound(to: UInt8.self), 0, raw.count)
                }
                p.moveReaderIndex(forwardBy: used)
                if p.readableBytes > 0 { stompPending = p }
            } else {
                let used = parseStomp(context, base, from, end)
                if used < end {
                    var p = context.channel.allocator.buffer(capacity: (end - used) * 2)
                    p.writeBytes(UnsafeRawBufferPointer(start: base + used, count: end - used))
                    stompPending = p
                }
            }
        }
    }

    /// Parses complete STOMP frames in [from, end); returns the index after the last one.
    private func parseStomp(_ context: ChannelHandlerContext, _ base: BytePtr, _ from: Int, _ end: Int) -> Int {
        var i = from
        while i < end {
            let c = base[i]
            if c == 10 || c == 13 { i += 1; continue }  // heart-beat EOLs
            let cmdEnd = findByte(base, i, end, 10)
            if cmdEnd < 0 { return i }
            var ls = cmdEnd + 1
            var contentLength = -1
            var bodyStart = -1
            while true {
                let le = findByte(base, ls, end, 10)
                if le < 0 { return i }
                if le == ls || (le == ls + 1 && base[ls] == 13) { bodyStart = le + 1; break }
                if base[ls] == UInt8(ascii: "c") && hasPrefixCI(base, ls, le, "content-length:") {
                    contentLength = Int(parseDecimal(base, ls + 15, le)?.0 ?? 0)
                }
                ls = le + 1
            }
            let bodyEnd: Int
            if contentLength >= 0 {
                if bodyStart + contentLength >= end { return i }
                bodyEnd = bodyStart + contentLength
            } else {
                let z = findByte(base, bodyStart, end, 0)
                if z < 0 { return i }
                bodyEnd = z
            }
            onFrame(context, command: c, base, headersFrom: cmdEnd + 1, headersEnd: bodyStart, bodyFrom: bodyStart, bodyEnd: bodyEnd)
            if state == .closed { return end }
            i = bodyEnd + 1
        }
        return i
    }

    private func headerValue(_ base: BytePtr, _ from: Int, _ end: Int, _ name: StaticString) -> (Int, Int)? {
        var ls = from
        while ls < end {
            let le = findByte(base, ls, end, 10)
            if le < 0 { return nil }
            if hasPrefixCI(base, ls, le, name) {
                var ve = le
                if ve > ls && base[ve - 1] == 13 { ve -= 1 }
                return (ls + name.utf8CodeUnitCount, ve)
            }
            ls = le + 1
        }
        return nil
    }

    private func onFrame(
        _ context: ChannelHandlerContext, command c: UInt8, _ base: BytePtr,
        headersFrom: Int, headersEnd: Int, bodyFrom: Int, bodyEnd: Int
    ) {
        switch c {
        case UInt8(ascii: "M"):
            deliver(base, bodyFrom, bodyEnd)
        case UInt8(ascii: "C"):
            guard state == .stompConnecting else { return }  // pipelined: already .subscribing
            if cfg.role == .subscriber {
                state = .subscribing
                sendWS(context, text: subscribeFrame)
            } else {
                markReady()
            }
        case UInt8(ascii: "R"):
            if state == .subscribing {
                markReady()
            } else if let (vf, ve) = headerValue(base, headersFrom, headersEnd, "receipt-id:"),
                let (seq, _) = parseDecimal(base, vf, ve)
            {
                stats.receipts &+= 1
                if !receiptSendTimes.isEmpty {
                    let t0 = receiptSendTimes[Int(seq & UInt64(receiptSendTimes.count - 1))]
                    if t0 != 0 { stats.receiptLatency.recordClamped((monoNanos() &- t0) / 1000) }
                }
            }
        case UInt8(ascii: "E"):
            var msg = "ERROR"
            if let (vf, ve) = headerValue(base, headersFrom, headersEnd, "message:") {
                msg = String(decoding: UnsafeBufferPointer(start: base + vf, count: ve - vf), as: UTF8.self)
            }
            stats.noteError("STOMP ERROR: \(msg)")
            state = .closed
            context.close(promise: nil)
        default:
            break
        }
    }

    @inline(__always) private func deliver(_ base: BytePtr, _ from: Int, _ end: Int) {
        if readWall == 0 { readWall = wallNanos(); readMono = monoNanos() }
        let st = stats
        st.deliveries &+= 1
        if st.firstDeliveryMono == 0 { st.firstDeliveryMono = readMono }
        st.lastDeliveryMono = readMono
        guard let (seq, sent) = parsePayload(base, from, end) else { st.unparsable &+= 1; return }
        let latencyMicros = readWall > sent ? (readWall &- sent) / 1000 : 1
        st.latency.recordClamped(latencyMicros)
        if seq == 0 { st.firstLatency.recordClamped(latencyMicros) }
        let idx = Int(seq / cfg.divisor)
        if idx >= 1 << 28 { st.unparsable &+= 1; return }
        let word = idx >> 6
        if word >= bits.count {
            let newCount = max(word + 1, bits.count * 2, 16)
            bits.append(contentsOf: repeatElement(0, count: newCount - bits.count))
        }
        let bit: UInt64 = 1 << UInt64(idx & 63)
        if bits[word] & bit != 0 {
            st.duplicates &+= 1
        } else {
            bits[word] |= bit
            unique &+= 1
            st.unique &+= 1
        }
        if idx > maxIndex { maxIndex = idx }
    }
}
