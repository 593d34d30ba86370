// Subscriber ramp and open-loop publisher.

import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

struct LoopSet {
    let group: MultiThreadedEventLoopGroup
    let loops: [any EventLoop]
    let stats: [LoopStats]
    var pairs: [(any EventLoop, LoopStats)] { Array(zip(loops, stats)) }

    init(threads: Int) {
        group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        loops = Array(group.makeIterator())
        stats = loops.map { _ in LoopStats() }
    }
}

func topicNames(_ c: ConnOptions) -> [String] {
    if c.topics > 0 { return (0..<c.topics).map { "\(c.topicPrefix)\($0)" } }
    return [c.topic]
}

/// `IP_BIND_ADDRESS_NO_PORT` (Linux): with a source address bound, the port is chosen at
/// `connect()` for the whole 4-tuple instead of at `bind()` among ports free on that address,
/// which gets slow (and runs out) once earlier runs left tens of thousands in TIME_WAIT.
let bindAddressNoPort = ChannelOptions.Types.SocketOption(level: .ip, name: NIOBSDSocket.Option(rawValue: 24))

/// Opens `connections` subscriber connections at `rampPerSecond`, round-robin over the
/// loops and the source addresses. Blocks until all were initiated.
func startSubscribers(_ set: LoopSet, _ c: ConnOptions, _ s: SubscriberOptions) throws {
    let topics = topicNames(c)
    let sources: [SocketAddress] = try c.sourceAddressList.map { try SocketAddress(ipAddress: $0, port: 0) }
    let start = monoNanos()
    let ramp = s.rampPerSecond > 0 ? Double(s.rampPerSecond) : 1e12
    let vhost = c.vhost ?? c.host
    // Resolved once: `connect(host:port:)` would run getaddrinfo and Happy Eyeballs per connection,
    // which costs the generator more CPU than the server spends on the handshake.
    let target = try SocketAddress.makeAddressResolvingHost(c.host, port: c.port)
    for i in 0..<s.connections {
        let due = start + UInt64(Double(i) / ramp * 1e9)
        let now = monoNanos()
        if due > now + 200_000 { usleep(useconds_t((due - now) / 1000)) }
        let loopIdx = i % set.loops.count
        let loop = set.loops[loopIdx]
        let stats = set.stats[loopIdx]
        let global = s.indexOffset + i
        let t = global % topics.count
        let cfg = ConnConfig(
            mode: c.mode, role: .subscriber, hostHeader: "\(c.host):\(c.port)",
            wsPath: c.wsPath.replacingTopic(topics[t]),
            destination: topics[t], topicIndex: t, divisor: UInt64(topics.count),
            login: c.login, passcode: c.passcode, vhost: vhost,
            handshakeTimeout: .seconds(Int64(s.handshakeTimeout)), pipelineSubscribe: s.pipelineSubscribe,
            heartBeat: s.heartBeat)
        var bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(.seconds(Int64(s.handshakeTimeout)))
            .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                let h = WSConn(cfg: cfg, stats: stats)
                stats.connectStarted += 1
                if stats.firstConnectStartMono == 0 { stats.firstConnectStartMono = h.startMono }
                stats.conns.append(h)
                return channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(h) }
            }
        if !sources.isEmpty {
            bootstrap =
                bootstrap
                .channelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
                .channelOption(bindAddressNoPort, value: 1)
                .bind(to: sources[global % sources.count])
        }
        bootstrap.connect(to: target).whenFailure { error in
            stats.connectFailed += 1
            if stats.connectStarted == 0 { stats.connectStarted += 1 }
            stats.noteError("connect: \(error)")
        }
    }
}

/// Expected deliveries for connections of one loop given `published` messages over
/// `topicCount` round-robin topics; returns (expected, unique, gapLost, subsByTopic).
func lossAccounting(_ set: LoopSet, published: UInt64?, topicCount: Int) -> (expected: UInt64, unique: UInt64, lost: UInt64, subsByTopic: [Int]) {
    var expected: UInt64 = 0, unique: UInt64 = 0, lost: UInt64 = 0
    var subs = [Int](repeating: 0, count: topicCount)
    for (loop, stats) in set.pairs {
        let r = try? loop.submit { () -> (UInt64, UInt64, UInt64, [Int]) in
            var e: UInt64 = 0, u: UInt64 = 0, l: UInt64 = 0
            var sb = [Int](repeating: 0, count: topicCount)
            for conn in stats.conns where conn.everReady {
                let t = conn.cfg.topicIndex
                sb[t] += 1
                u += conn.unique
                if let p = published {
                    let k = UInt64(topicCount)
                    let exp = p / k + (UInt64(t) < p % k ? 1 : 0)
                    e += exp
                    if exp > conn.unique { l += exp - conn.unique }
                } else {
                    let seen = UInt64(conn.maxIndex + 1)
                    if seen > conn.unique { l += seen - conn.unique }
                }
            }
            return (e, u, l, sb)
        }.wait()
        if let (e, u, l, sb) = r {
            expected += e; unique += u; lost += l
            for i in 0..<topicCount { subs[i] += sb[i] }
        }
    }
    return (expected, unique, lost, subs)
}

/// Open-loop publisher: a 1 ms timer on one event loop computes how many messages are due by
/// the wall clock and writes them, round-robin over its connections, one flush per
/// connection per tick. It never waits for replies; a connection with more than
/// `maxInflight` unanswered requests is skipped (the publisher then falls behind, which the
/// report shows as a publish rate below target).
final class Publisher: @unchecked Sendable {
    let loop: any EventLoop
    let stats: LoopStats
    let c: ConnOptions
    let p: PublisherOptions
    let topics: [[UInt8]]
    let httpPaths: [[UInt8]]
    var httpConns: [HTTPPubConn] = []
    var stompConns: [WSConn] = []
    var seq: UInt64 = 0
    var total: UInt64 = 0
    var startMono: UInt64 = 0
    var task: RepeatedTask?
    let done: EventLoopPromise<Void>
    var rr = 0
    var finished = false
    let hostHeader: [UInt8]

    init(loop: any EventLoop, stats: LoopStats, c: ConnOptions, p: PublisherOptions) {
        self.loop = loop
        self.stats = stats
        self.c = c
        self.p = p
        let names = topicNames(c)
        if let d = p.sendDestination {
            topics = names.map { _ in Array(d.utf8) }
        } else {
            topics = names.map { Array($0.utf8) }
        }
        httpPaths = names.map { Array(p.publishURL.replacingTopic($0).utf8) }
        done = loop.makePromise()
        hostHeader = Array("\(p.publishHost ?? c.host):\(p.publishPort ?? c.port)".utf8)
    }

    func connect() throws {
        let host = p.publishHost ?? c.host
        let port = p.publishPort ?? c.port
        let stats = self.stats
        switch p.via {
        case .http:
            let loop = self.loop
            func open(_ h: HTTPPubConn) -> EventLoopFuture<any Channel> {
                ClientBootstrap(group: loop)
                    .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
                    .channelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(h) } }
                    .connect(host: host, port: port)
            }
            for _ in 0..<p.httpConnections {
                let h = HTTPPubConn(stats: stats)
                h.reconnect = { h in
                    open(h).whenFailure { error in
                        stats.noteError("publisher: reconnect after 408 failed: \(error)")
                    }
                }
                _ = try open(h).wait()
                httpConns.append(h)
            }
        case .stomp:
            for _ in 0..<p.publishConnections {
                let cfg = ConnConfig(
                    mode: .stomp, role: .publisher, hostHeader: "\(host):\(port)", wsPath: p.publishWSPath ?? c.wsPath,
                    destination: "", topicIndex: 0, divisor: 1, login: c.login, passcode: c.passcode,
                    vhost: c.vhost ?? host, handshakeTimeout: .seconds(30))
                let h = WSConn(cfg: cfg, stats: stats)
                if p.receipts { h.receiptSendTimes = [UInt64](repeating: 0, count: 1 << 20) }
                let ready = loop.makePromise(of: Void.self)
                h.onReady = { _ in ready.succeed(()) }
                let ch = try ClientBootstrap(group: loop)
                    .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
                    .channelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(h) } }
                    .connect(host: host, port: port).wait()
                ch.closeFuture.whenComplete { _ in ready.fail(ChannelError.ioOnClosedChannel) }
                try ready.futureResult.wait()
                stompConns.append(h)
            }
        }
    }

    func start() -> EventLoopFuture<Void> {
        seq = p.seqStart
        total = p.seqStart + UInt64(p.rate * p.duration)
        loop.execute { [self] in
            startMono = monoNanos()
            stats.publishStartMono = startMono
            task = loop.scheduleRepeatedTask(initialDelay: .zero, delay: .microseconds(Int64(p.tickMicros))) { [self] t in
                tick(t)
            }
        }
        return done.futureResult
    }

    private func tick(_ t: RepeatedTask) {
        let now = monoNanos()
        let elapsed = Double(now &- startMono) / 1e9
        var due = elapsed >= p.duration ? total : p.seqStart + UInt64(elapsed * p.rate)
        if due > total { due = total }
        if seq < due {
            let wall = wallNanos()
            let alloc = ByteBufferAllocator()
            switch p.via {
            case .http:
                var outs = [ByteBuffer?](repeating: nil, count: httpConns.count)
                // (request index, offset, length) of each request written into outs[k]: kept as
                // slices once the buffer is complete, so a 408 can resend them.
                var written = [[(UInt64, Int, Int)]](repeating: [], count: httpConns.count)
                var stalled = 0
                while seq < due && stalled < httpConns.count {
                    let k = rr
                    rr = (rr + 1) % httpConns.count
                    let conn = httpConns[k]
                    if !conn.active || conn.inflight >= UInt64(p.maxInflight) { stalled += 1; continue }
                    stalled = 0
                    if outs[k] == nil { outs[k] = alloc.buffer(capacity: 4096) }
                    let start = outs[k]!.writerIndex
                    if p.batch > 1 {
                        let n = min(UInt64(p.batch), due - seq)
                        writeHTTPBatch(&outs[k]!, first: seq, count: n, wall: wall)
                        written[k].append((conn.sent, start, outs[k]!.writerIndex - start))
                        conn.noteSent(messages: UInt32(n))
                        seq += n
                        stats.published &+= n
                        continue
                    }
                    writeHTTP(&outs[k]!, seq: seq, wall: wall)
                    written[k].append((conn.sent, start, outs[k]!.writerIndex - start))
                    conn.noteSent()
                    seq += 1
                    stats.published &+= 1
                }
                for k in 0..<httpConns.count {
                    guard let b = outs[k] else { continue }
                    let conn = httpConns[k]
                    for (index, offset, length) in written[k] {
                        conn.requests[Int(index & UInt64(conn.requests.count - 1))] = b.getSlice(at: offset, length: length)
                    }
                    if let ctx = conn.context { ctx.writeAndFlush(NIOAny(b), promise: nil) }
                }
            case .stomp:
                var outs = [ByteBuffer?](repeating: nil, count: stompConns.count)
                var stalled = 0
                while seq < due && stalled < stompConns.count {
                    let k = rr
                    rr = (rr + 1) % stompConns.count
                    let conn = stompConns[k]
                    guard conn.isReady, let ch = conn.channel, ch.isWritable else { stalled += 1; continue }
                    stalled = 0
                    if outs[k] == nil { outs[k] = alloc.buffer(capacity: 4096) }
                    let topic = Int(seq % UInt64(topics.count))
                    conn.appendSend(
                        into: &outs[k]!, destination: topics[topic], seq: seq, wall: wall,
                        padding: p.padding, receipt: p.receipts, allocator: alloc)
                    seq += 1
                    stats.published &+= 1
                }
                for k in 0..<stompConns.count {
                    if let b = outs[k], let ch = stompConns[k].channel { ch.writeAndFlush(b, promise: nil) }
                }
            }
        }
        if seq >= total {
            stats.publishEndMono = monoNanos()
            t.cancel()
            finished = true
            done.succeed(())
        } else if elapsed > p.duration * 3 + 10 {
            // hopelessly behind: stop and report what was sent
            stats.publishEndMono = monoNanos()
            t.cancel()
            finished = true
            done.succeed(())
        }
    }

    /// One `POST` whose body is a JSON array of `count` notifications, `first` onwards.
    private func writeHTTPBatch(_ b: inout ByteBuffer, first: UInt64, count: UInt64, wall: UInt64) {
        func itemLength(_ seq: UInt64) -> Int {
            let topic = Int(seq % UInt64(topics.count))
            return 10 + topics[topic].count + 13 + decimalDigits(seq) + 1 + decimalDigits(wall) + 1 + p.padding + 2
        }
        var bodyLen = 2 + Int(count) - 1
        for seq in first..<(first + count) { bodyLen += itemLength(seq) }
        b.writeStaticString("POST ")
        b.writeBytes(httpPaths[0])
        b.writeStaticString(" HTTP/1.1\r\nHost: ")
        b.writeBytes(hostHeader)
        b.writeStaticString("\r\nContent-Type: application/json\r\nContent-Length: ")
        b.writeDecimal(UInt64(bodyLen))
        b.writeStaticString("\r\n\r\n[")
        for seq in first..<(first + count) {
            if seq != first { b.writeStaticString(",") }
            b.writeStaticString("{\"topic\":\"")
            b.writeBytes(topics[Int(seq % UInt64(topics.count))])
            b.writeStaticString("\",\"message\":\"")
            b.writeDecimal(seq)
            b.writeStaticString(" ")
            b.writeDecimal(wall)
            b.writeStaticString(" ")
            b.writeRepeatingByte(UInt8(ascii: "x"), count: p.padding)
            b.writeStaticString("\"}")
        }
        b.writeStaticString("]")
    }

    private func writeHTTP(_ b: inout ByteBuffer, seq: UInt64, wall: UInt64) {
        let topic = Int(seq % UInt64(topics.count))
        let padding = p.padding
        let payloadLen = decimalDigits(seq) + 1 + decimalDigits(wall) + 1 + padding
        let json = p.publishFormat == .json
        let bodyLen = json ? (10 + topics[topic].count + 13 + payloadLen + 2) : payloadLen
        b.writeStaticString("POST ")
        b.writeBytes(httpPaths[topic])
        b.writeStaticString(" HTTP/1.1\r\nHost: ")
        b.writeBytes(hostHeader)
        b.writeStaticString(json ? "\r\nContent-Type: application/json\r\nContent-Length: " : "\r\nContent-Type: text/plain\r\nContent-Length: ")
        b.writeDecimal(UInt64(bodyLen))
        b.writeStaticString("\r\n\r\n")
        if json {
            b.writeStaticString("{\"topic\":\"")  // 10
            b.writeBytes(topics[topic])
            b.writeStaticString("\",\"message\":\"")  // 13
        }
        b.writeDecimal(seq)
        b.writeStaticString(" ")
        b.writeDecimal(wall)
        b.writeStaticString(" ")
        b.writeRepeatingByte(UInt8(ascii: "x"), count: padding)
        if json { b.writeStaticString("\"}") }
    }
}

extension String {
    /// Replaces every "{topic}" (no Foundation needed).
    func replacingTopic(_ topic: String) -> String {
        let parts = self.split(separator: "{topic}", omittingEmptySubsequences: false)
        return parts.joined(separator: topic)
    }
}
