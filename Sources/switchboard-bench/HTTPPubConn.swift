import NIOCore

/// HTTP/1.1 keep-alive publisher connection: requests are pipelined open-loop; responses are
/// counted (2xx vs other) and timed against a ring of send times (responses come in order).
///
/// A `408 Request Timeout` means the server (or a proxy such as haproxy) closes the connection
/// without having processed that request or any request pipelined after it (RFC 9110 §15.5.9:
/// the client may repeat it on a new connection). So does a proxy's own `400` page (HTML; the
/// gateway's errors are JSON): the proxy refused the bytes before forwarding them. The
/// connection then reconnects and sends every unanswered request again, as browsers do;
/// `retried_requests` counts them and `error_samples` says why. Any other close loses the
/// unanswered requests, which the report shows as missing responses.
final class HTTPPubConn: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let stats: LoopStats
    var context: ChannelHandlerContext?
    var active = false
    var sent: UInt64 = 0
    var answered: UInt64 = 0
    var sendTimes = [UInt64](repeating: 0, count: 1 << 16)
    /// Messages per request (a batch request carries several), indexed like `sendTimes`.
    var sendCounts = [UInt32](repeating: 1, count: 1 << 16)
    /// The bytes of each unanswered request, indexed like `sendTimes`, for a retry after a 408.
    var requests = [ByteBuffer?](repeating: nil, count: 1 << 16)
    /// Set when a 408 arrived: the close that follows reconnects and resends.
    private var retryOnClose = false
    /// Called on the event loop after a 408 and the close: opens a new channel with this handler.
    var reconnect: ((HTTPPubConn) -> Void)?
    private var cumulation: ByteBuffer?

    init(stats: LoopStats) { self.stats = stats }

    var inflight: UInt64 { sent &- answered }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func channelActive(context: ChannelHandlerContext) {
        active = true
        if sent != answered {
            // A new connection after a 408: send every unanswered request again, in order.
            var out = context.channel.allocator.buffer(capacity: 4096)
            var i = answered
            while i != sent {
                if var r = requests[Int(i & UInt64(requests.count - 1))] { out.writeBuffer(&r) }
                i &+= 1
            }
            stats.retriedRequests &+= sent &- answered
            context.writeAndFlush(NIOAny(out), promise: nil)
        }
        context.fireChannelActive()
    }
    func channelInactive(context: ChannelHandlerContext) {
        active = false
        cumulation = nil
        if retryOnClose {
            retryOnClose = false
            reconnect?(self)
        }
        context.fireChannelInactive()
    }
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        stats.noteError("publisher: \(error)")
        context.close(promise: nil)
    }

    /// Records one request: its send time, its message count and its bytes (a slice).
    func noteSent(messages: UInt32 = 1, request: ByteBuffer? = nil) {
        sendTimes[Int(sent & UInt64(sendTimes.count - 1))] = monoNanos()
        sendCounts[Int(sent & UInt64(sendCounts.count - 1))] = messages
        requests[Int(sent & UInt64(requests.count - 1))] = request
        sent &+= 1
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        var buf: ByteBuffer
        if var c = cumulation { cumulation = nil; c.writeBuffer(&incoming); buf = c } else { buf = incoming }
        let now = monoNanos()
        let used: Int = buf.withUnsafeReadableBytes { raw in
            guard raw.count > 0 else { return 0 }
            let base = raw.baseAddress!.assumingMemoryBound(to: UInt8.self)
            let n = raw.count
            var i = 0
            while i < n {
                let he = findHeaderEnd(base, i, n)
                if he < 0 { break }
                guard n - i > 12 else { break }
                let status = Int(base[i + 9] &- 48) * 100 + Int(base[i + 10] &- 48) * 10 + Int(base[i + 11] &- 48)
                var cl = 0
                var chunked = false
                var ls = findByte(base, i, he, 10) + 1
                while ls > 0 && ls < he - 2 {
                    let le = findByte(base, ls, he, 10)
                    if le < 0 { break }
                    if hasPrefixCI(base, ls, le, "content-length:") {
                        var k = ls + 15
                        while k < le && base[k] == 32 { k += 1 }
                        cl = Int(parseDecimal(base, k, le)?.0 ?? 0)
                    } else if hasPrefixCI(base, ls, le, "transfer-encoding:") {
                        chunked = true
                    }
                    ls = le + 1
                }
                var endOfMsg: Int
                if chunked {
                    // find the terminating "0\r\n\r\n"
                    var k = he
                    var found = -1
                    while k + 4 < n + 1 {
                        let z = findByte(base, k, n, UInt8(ascii: "0"))
                        if z < 0 || z + 5 > n { break }
                        if (z == he || base[z - 1] == 10) && base[z + 1] == 13 && base[z + 2] == 10 && base[z + 3] == 13 && base[z + 4] == 10 {
                            found = z + 5; break
                        }
                        k = z + 1
                    }
                    if found < 0 { break }
                    endOfMsg = found
                } else {
                    endOfMsg = he + cl
                    if endOfMsg > n { break }
                }
                let messages = UInt64(sendCounts[Int(answered & UInt64(sendCounts.count - 1))])
                // A proxy's own 400 page (the gateway answers JSON): the proxy rejected the bytes
                // before forwarding them, and closes the connection.
                let proxyRejected = status == 400 && cl >= 6 && hasPrefixCI(base, he, he + cl, "<html>")
                if status == 408 || proxyRejected {
                    // Not processed, nor anything after it: retried on a new connection.
                    retryOnClose = true
                    if stats.errorSamples.count < 5 {
                        let body = String(decoding: UnsafeBufferPointer(start: base + he, count: min(cl, 120)), as: UTF8.self)
                        stats.noteError("HTTP \(status) (retried on a new connection): " + body)
                    }
                    return n
                }
                requests[Int(answered & UInt64(requests.count - 1))] = nil
                if status >= 200 && status < 300 {
                    stats.responsesOK &+= messages
                } else {
                    stats.responsesFailed &+= messages
                    if stats.errorSamples.count < 5 {
                        stats.noteError("HTTP \(status): " + String(decoding: UnsafeBufferPointer(start: base + he, count: min(cl, 200)), as: UTF8.self))
                    }
                }
                let t0 = sendTimes[Int(answered & UInt64(sendTimes.count - 1))]
                stats.responseLatency.recordClamped((now &- t0) / 1000)
                answered &+= 1
                i = endOfMsg
            }
            return i
        }
        buf.moveReaderIndex(forwardBy: used)
        if buf.readableBytes > 0 { cumulation = buf }
    }
}
