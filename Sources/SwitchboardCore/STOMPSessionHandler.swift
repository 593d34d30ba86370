import Logging
import NIOCore
import NIOWebSocket
import STOMPCodec

/// One STOMP session, as a channel handler after the WebSocket upgrade.
///
/// Protocol logic lives here (negotiation, heart-beats, receipts, transactions, errors);
/// delivery goes through the event loop's ``LoopShard`` and publishing through the
/// ``BrokerEngine`` and ``AppRoute``s of ``GatewayServices``.
///
/// Frames are handled in order. While an asynchronous step runs (an `/app` route call, a
/// publish the engine has not confirmed), later frames queue and reading from the socket
/// pauses, so receipts come back in frame order and a fast client cannot flood memory.
/// What the WebSocket upgrade request told about a connection.
public struct HandshakeInfo: Sendable {
    /// A token from the `access_token` query parameter or cookie.
    public var token: String?
    public var remoteAddress: String?
    public var origin: String?
    public init(token: String? = nil, remoteAddress: String? = nil, origin: String? = nil) {
        self.token = token
        self.remoteAddress = remoteAddress
        self.origin = origin
    }
}

public final class STOMPSessionHandler: ChannelDuplexHandler, SubscriptionSink, HeartbeatClient, SessionDeliveryTarget {
    public typealias InboundIn = STOMPFrame
    /// Nothing above the session writes; it writes complete WebSocket frames itself.
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    enum State {
        case awaitingConnect
        case connected
        case closing
    }

    let services: GatewayServices
    var config: SessionConfiguration { services.configuration }
    public let sessionID: String
    var logger: Logger

    var context: ChannelHandlerContext?
    /// The WebSocket transport below, when there is one (found when the handler is added).
    var transport: WebSocketSTOMPTransport?
    var shard: LoopShard!
    var state: State = .awaitingConnect
    public internal(set) var version: STOMPVersion = .v1_2
    var escape = true
    /// `\r` is escaped for 1.2 peers only.
    var escapeCR = true
    /// The authenticated user, when there is one.
    public internal(set) var user: String?
    public internal(set) var identity: SessionIdentity?
    /// What the WebSocket handshake carried.
    let handshake: HandshakeInfo

    var subscriptions: [String: LocalSubscription] = [:]
    var transactions: [String: [STOMPFrame]] = [:]

    // Heart-beats, counted in shard ticks; 0 means off.
    var sendEveryTicks: UInt64 = 0
    var expectWithinTicks: UInt64 = 0
    var lastReadTick: UInt64 = 0
    var lastWriteTick: UInt64 = 0
    var openedTick: UInt64 = 0

    // Ordered processing.
    var inFlight = false
    var draining = false
    /// Capacity 1 to start (both queues are empty in almost every session): the default of 16
    /// would cost about 2 kB per idle connection.
    var queued = CircularBuffer<STOMPFrame>(initialCapacity: 1)
    /// SENDs awaiting confirmation while later frames go ahead (see the `+Pipeline` file).
    var pipeline = CircularBuffer<PipelinedSend>(initialCapacity: 1)
    /// Sequence number of `pipeline.first`.
    var pipelineBase: UInt64 = 0
    var readPending = false
    var wroteSinceFlush = false
    /// Deliveries of the current flush pass not yet handed to NIO (see ``deliver(_:to:batch:)``).
    var undelivered: ByteBuffer?
    /// Whether ``undelivered`` is this session's own buffer (two or more messages) rather
    /// than one message's shared frame.
    var undeliveredIsOwn = false
    var frameBucket: TokenBucket?
    /// Set by ``close(reason:)`` while a step is in flight.
    var closeAfterInFlight: String?

    public init(services: GatewayServices, handshake: HandshakeInfo = HandshakeInfo()) {
        self.services = services
        self.handshake = handshake
        self.sessionID = services.sessionIDs.next()
        var logger = services.logger
        logger[metadataKey: "session"] = "\(sessionID)"
        self.logger = logger
    }

    // MARK: Lifecycle

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.transport = try? context.pipeline.syncOperations.handler(type: WebSocketSTOMPTransport.self)
        self.shard = services.hub.shard(for: context.eventLoop)
        openedTick = shard.tick
        lastReadTick = shard.tick
        lastWriteTick = shard.tick
        shard.addHeartbeatClient(self)
        if config.maxFramesPerSecond > 0 { frameBucket = TokenBucket(rate: config.maxFramesPerSecond, burst: 2 * config.maxFramesPerSecond) }
        shard.registerSession(self)
        services.stats.connectionsOpen.add(1)
        services.stats.connectionsTotal.add(1)
        let high = max(config.maxPendingOutboundBytes, 2)
        _ = context.channel.setOption(ChannelOptions.writeBufferWaterMark, value: .init(low: high / 2, high: high))
    }

    /// Nagle on (`TCP_NODELAY` off) while the loop is saturated; see ``LoopBusyMode``.
    public func setNagle(_ enabled: Bool) {
        guard let context else { return }
        _ = context.channel.setOption(ChannelOptions.tcpOption(.tcp_nodelay), value: enabled ? 0 : 1)
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        cleanUp()
        self.context = nil
        self.transport = nil
    }

    public func channelInactive(context: ChannelHandlerContext) {
        cleanUp()
        context.fireChannelInactive()
    }

    private var cleanedUp = false

    /// Drops subscriptions, open transactions and timers. Runs once.
    func cleanUp() {
        guard !cleanedUp else { return }
        cleanedUp = true
        if state == .connected { sessionEnded() }
        if let identity { services.userSessions.remove(identity.user) }
        state = .closing
        for sub in subscriptions.values { shard.remove(sub) }
        services.stats.subscriptions.subtract(subscriptions.count)
        subscriptions.removeAll()
        transactions.removeAll()
        queued.removeAll()
        pipeline.removeAll()
        shard?.removeHeartbeatClient(self)
        shard?.unregisterSession(self)
        services.stats.connectionsOpen.subtract(1)
    }

    // MARK: Inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        lastReadTick = shard.tick
        if frameBucket != nil, !frameBucket!.take(1), state != .closing {
            fail("rate limit exceeded: more than \(config.maxFramesPerSecond) frames per second", kind: .limit)
            return
        }
        shard.counters.framesIn[frame.command.ordinal] &+= 1
        guard state != .closing else { return }
        if !queued.isEmpty || !canHandleNow(frame) {
            guard queued.count < config.maxQueuedFrames else {
                fail("too many frames queued behind an unfinished SEND (limit \(config.maxQueuedFrames))", kind: .limit)
                return
            }
            queued.append(frame)
            return
        }
        handle(frame)
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        flushIfNeeded()
        context.fireChannelReadComplete()
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is STOMPTransportActivity {
            lastReadTick = shard.tick
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let decoding = error as? STOMPDecodingError {
            switch decoding {
            case .frameTooLarge, .bodyTooLarge: fail(decoding.description, kind: .limit, closeCode: .messageTooLarge)
            case .tooManyHeaders, .headerLineTooLong, .headersTooLarge: fail(decoding.description, kind: .limit, closeCode: .policyViolation)
            default: fail(decoding.description)
            }
        } else if let limited = error as? RateLimitExceeded {
            fail(limited.description, kind: .limit)
        } else if let ws = error as? NIOWebSocketError {
            switch ws {
            case .invalidFrameLength:
                fail("frame too large (limit \(config.decoderLimits.maxFrameBytes) bytes)", kind: .limit, closeCode: .messageTooLarge)
            default:
                fail("WebSocket protocol error: \(ws)", closeCode: .protocolError)
            }
        } else {
            logger.debug("connection error", metadata: ["error": "\(error)"])
            context.close(promise: nil)
        }
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        if !context.channel.isWritable && state != .closing {
            logger.info("slow consumer: closing", metadata: ["pending.limit": "\(config.maxPendingOutboundBytes)"])
            fail("slow consumer: more than \(config.maxPendingOutboundBytes) bytes pending delivery", kind: .slowConsumer)
        }
        context.fireChannelWritabilityChanged()
    }

    // MARK: Outbound

    /// Holds back socket reads while a frame is being processed asynchronously.
    public func read(context: ChannelHandlerContext) {
        if readsPaused {
            readPending = true
        } else {
            context.read()
        }
    }

    /// Encodes and writes a server frame (not flushed).
    func send(_ frame: STOMPFrame) {
        guard let context else { return }
        writeUndelivered(context: context)
        let buffer = WebSocketServerFrame.build(opcode: .text, payloadCapacity: 64 + frame.body.readableBytes,
                                                allocator: context.channel.allocator) { out in
            STOMPFrameEncoder.encode(frame, escapeHeaders: escape, escapeCarriageReturn: escapeCR, into: &out)
        }
        shard.counters.framesOut[frame.command.ordinal] &+= 1
        shard.counters.bytesOut &+= buffer.readableBytes
        context.write(wrapOutboundOut(buffer), promise: nil)
        lastWriteTick = shard.tick
        wroteSinceFlush = true
    }

    func flushIfNeeded() {
        guard wroteSinceFlush, let context else { return }
        wroteSinceFlush = false
        // One walk down the pipeline for the write and its flush, not two.
        if let buffer = takeUndelivered() {
            context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        } else {
            context.flush()
        }
    }

    func sendReceipt(for frame: STOMPFrame) {
        guard let receipt = frame.headers["receipt"] else { return }
        send(STOMPFrame(.receipt, headers: ["receipt-id": receipt]))
    }

    // MARK: SubscriptionSink

    public func deliver(_ message: PublishedMessage, to subscription: LocalSubscription, batch: inout DeliveryBatch) {
        guard state == .connected, let context else { return }
        // The shared allocator, not `context.channel.allocator`: reaching the channel costs
        // reference counting on every delivery.
        let buffer = batch.frames.frame(message, subscription: subscription.id, ack: subscription.ackMode != .auto,
                                        escape: escape, escapeCR: escapeCR, allocator: Self.allocator)
        // One NIO write per connection per pass: the first message's frame is kept as is
        // (shared with the other subscribers); from the second on, the pass's frames are
        // copied into one buffer of this session's. NIO's per-write bookkeeping costs more
        // than copying a few hundred bytes.
        if undelivered == nil {
            undelivered = buffer
        } else {
            if !undeliveredIsOwn {
                var own = Self.allocator.buffer(capacity: 2 * (undelivered!.readableBytes + buffer.readableBytes))
                own.writeImmutableBuffer(undelivered!)
                undelivered = own
                undeliveredIsOwn = true
            }
            undelivered!.writeImmutableBuffer(buffer)
        }
        wroteSinceFlush = true
        lastWriteTick = batch.tick
        batch.delivered &+= 1
        batch.bytes &+= buffer.readableBytes
    }

    /// Allocator for delivered frames (NIO's default allocator, as every channel here uses).
    static let allocator = ByteBufferAllocator()

    public func flushDeliveries() {
        flushIfNeeded()
    }

    /// Hands the pass's deliveries to NIO; before any other write, so frames keep their order.
    @inline(__always)
    func writeUndelivered(context: ChannelHandlerContext) {
        guard let buffer = takeUndelivered() else { return }
        context.write(wrapOutboundOut(buffer), promise: nil)
    }

    private func takeUndelivered() -> ByteBuffer? {
        undeliveredIsOwn = false
        return undelivered.take()
    }

    // MARK: Heart-beats and timeouts

    /// A STOMP heart-beat (one end-of-line) in a text frame; shared by every session.
    static let heartBeatFrame = WebSocketServerFrame.make(opcode: .text, payload: ByteBuffer(string: "\n"), allocator: ByteBufferAllocator())

    public func heartbeatTick(_ tick: UInt64) -> UInt64? {
        switch state {
        case .awaitingConnect:
            let limit = ticks(config.connectTimeout.nanoseconds / 1_000_000, roundUp: true)
            if tick - openedTick > limit {
                // A CONNECT being authenticated is not late: look again at the next tick.
                if isBusy { return tick + 1 }
                fail("no CONNECT frame within \(config.connectTimeout.nanoseconds / 1_000_000) ms", kind: .limit)
                return nil
            }
            return openedTick + limit + 1
        case .connected:
            var next = UInt64.max
            if let expiry = identity?.expiresAt {
                let left = expiry - NIODeadline.now()
                if left <= .zero {
                    fail("authentication expired: the token's exp has passed", kind: .auth)
                    return nil
                }
                next = tick + ticks(max(left.nanoseconds / 1_000_000, 1), roundUp: true)
            }
            if expectWithinTicks > 0 {
                if tick - lastReadTick > expectWithinTicks {
                    if isBusy {
                        next = tick + 1
                    } else {
                        logger.info("heart-beat timeout: closing")
                        fail("heart-beat timeout: nothing received from the client in time", kind: .heartBeatTimeout)
                        return nil
                    }
                } else {
                    next = min(next, lastReadTick + expectWithinTicks + 1)
                }
            }
            if sendEveryTicks > 0 {
                if tick - lastWriteTick >= sendEveryTicks, let context {
                    writeUndelivered(context: context)
                    context.writeAndFlush(wrapOutboundOut(Self.heartBeatFrame), promise: nil)
                    lastWriteTick = tick
                }
                next = min(next, lastWriteTick + sendEveryTicks)
            }
            return next == .max ? nil : next
        case .closing:
            return nil
        }
    }

    /// Ends the session for shutdown. A step in flight (a route call, an unconfirmed publish)
    /// completes first, so its receipt still goes out; then the `ERROR`.
    public func close(reason: String) {
        if isBusy {
            closeAfterInFlight = reason
        } else {
            fail(reason, kind: .shutdown)
        }
    }

    /// Counts a session that was connected and is no longer.
    func sessionEnded() {
        services.stats.sessionsConnected.subtract(1)
        services.stats.sessionsByVersion[version.ordinal].subtract(1)
    }

    /// Converts milliseconds to shard ticks.
    func ticks(_ ms: Int64, roundUp: Bool) -> UInt64 {
        let res = max(services.hub.heartbeatResolution.nanoseconds / 1_000_000, 1)
        let t = roundUp ? (ms + res - 1) / res : ms / res
        return UInt64(max(t, 1))
    }

    // MARK: Errors

    /// Sends `ERROR` with `message` (and `receipt-id` when `frame` asked for a receipt),
    /// then closes the connection. Other sessions are unaffected.
    func fail(_ message: String, frame: STOMPFrame? = nil, extraHeaders: STOMPHeaders = STOMPHeaders(), details: String? = nil,
              kind: SessionErrorKind = .protocolViolation, closeCode: WebSocketErrorCode = .normalClosure) {
        guard state != .closing, let context else { return }
        let wasConnected = state == .connected
        services.stats.errors[kind.index].add(1)
        logger.debug("session error", metadata: ["error": "\(message)"])
        var headers: STOMPHeaders = ["message": message]
        if let receipt = frame?.headers["receipt"] { headers.add("receipt-id", receipt) }
        for (n, v) in extraHeaders { headers.add(n, v) }
        let body = ByteBuffer(string: details ?? message)
        headers.add("content-type", "text/plain")
        headers.add("content-length", String(body.readableBytes))
        send(STOMPFrame(.error, headers: headers, body: body))
        if wasConnected { sessionEnded() }
        state = .closing
        closeConnection(context: context, code: closeCode)
    }

    /// Sends a WebSocket close frame after what is queued, then closes the channel. A peer
    /// that does not read gets cut off after a short grace period.
    func closeConnection(context: ChannelHandlerContext, code: WebSocketErrorCode) {
        let promise = context.eventLoop.makePromise(of: Void.self)
        writeUndelivered(context: context)
        if transport?.claimCloseFrame() ?? true {
            context.writeAndFlush(wrapOutboundOut(WebSocketServerFrame.close(code: code, allocator: context.channel.allocator)), promise: promise)
        } else {
            context.writeAndFlush(wrapOutboundOut(ByteBuffer()), promise: promise)
        }
        wroteSinceFlush = false
        let channel = context.channel
        let timeout = context.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
        promise.futureResult.whenComplete { _ in
            timeout.cancel()
            channel.close(promise: nil)
        }
        // Nothing more is read from a closing session.
        inFlight = false
        queued.removeAll()
        pipeline.removeAll()
    }
}
