import Logging
import NIOCore
import NIOWebSocket
import STOMPCodec
import SwitchboardRoutes
import SwitchboardWire

/// What the WebSocket upgrade request told about a connection.
package struct HandshakeInfo: Sendable {
    /// A token from the `access_token` query parameter or cookie.
    package var token: String?
    package var remoteAddress: String?
    package var origin: String?
    package init(token: String? = nil, remoteAddress: String? = nil, origin: String? = nil) {
        self.token = token
        self.remoteAddress = remoteAddress
        self.origin = origin
    }
}

/// One STOMP session, as a channel handler after the WebSocket upgrade.
///
/// The protocol rules live in ``STOMPSessionStateMachine``: this handler feeds it the
/// channel's events and carries out the actions it returns (write a frame, start a step —
/// authenticate, subscribe, publish, call a route —, pause or resume reading, close).
/// Delivery goes through the event loop's ``LoopShard``, publishing through the
/// ``BrokerEngine`` and the ``AppRoute``s of ``GatewayServices``.
///
/// Causality: a message that reaches the session while one of its steps is unanswered is
/// held back until that step's receipt is written, so the `RECEIPT` of a `SEND` always comes
/// before any message the `SEND` caused (a backend's reply, the sender's own copy).
package final class STOMPSessionHandler: ChannelDuplexHandler, SubscriptionSink, HeartbeatClient, SessionDeliveryTarget {
    package typealias InboundIn = STOMPFrame
    /// Nothing above the session writes; it writes complete WebSocket frames itself.
    package typealias OutboundIn = ByteBuffer
    package typealias OutboundOut = ByteBuffer

    let services: GatewayServices
    var config: SessionConfiguration { services.configuration }
    package let sessionID: String
    /// The session's logger (metadata: session, then user and STOMP version), made on first
    /// use: most sessions never log, and setting `Logger` metadata costs allocations.
    var logger: Logger {
        if let sessionLogger { return sessionLogger }
        var logger = services.logger
        logger[metadataKey: "session"] = "\(sessionID)"
        if let machine, machine.phase == .connected {
            if let user = machine.identity?.user { logger[metadataKey: "user"] = "\(user)" }
            logger[metadataKey: "stomp.version"] = "\(machine.version.rawValue)"
        }
        sessionLogger = logger
        return logger
    }
    private var sessionLogger: Logger?

    var context: ChannelHandlerContext?
    /// Where the session's frames enter the pipeline: the WebSocket frame decoder's context when
    /// there is one, else ``context``. The handlers between it and the session (the decoder and
    /// ``WebSocketSTOMPTransport``) are inbound-only, so a write from there reaches the same
    /// next handler (TLS, or the socket) without walking them: on the fan-out path that is two
    /// context hops less per write and per flush.
    package private(set) var writer: ChannelHandlerContext?
    /// The WebSocket transport below, when there is one (found when the handler is added).
    var transport: WebSocketSTOMPTransport?
    var shard: LoopShard!
    /// The protocol state; created when the handler is added (it needs the loop's clock).
    var machine: STOMPSessionStateMachine!
    /// What the WebSocket handshake carried.
    let handshake: HandshakeInfo

    /// The negotiated version (1.2 until CONNECT).
    package var version: STOMPVersion { machine?.version ?? .v1_2 }
    /// The authenticated user, when there is one.
    package var user: String? { identity?.user }
    package var identity: SessionIdentity? { machine?.identity }
    /// The user counted in ``GatewayServices/userSessions`` for this session.
    var countedUser: String?

    var subscriptions: [String: LocalSubscription] = [:]
    /// The join/leave notices of subscriptions with `x-presence: true`, by subscription id.
    var presenceSubscriptions: [String: LocalSubscription] = [:]
    /// What `SUBSCRIBE` steps found in history, until their receipts are written.
    var subscribeOutcomes: [STOMPSessionStateMachine.StepID: SubscribeOutcome] = [:]

    var escape = true
    /// `\r` is escaped for 1.2 peers only.
    var escapeCR = true
    var wroteSinceFlush = false
    /// Deliveries of the current flush pass not yet handed to NIO (see ``deliver(_:to:batch:)``).
    var undelivered: ByteBuffer?
    /// Whether ``undelivered`` is this session's own buffer (two or more messages) rather
    /// than one message's shared frame.
    var undeliveredIsOwn = false
    /// Deliveries held back until the step they may have been caused by is answered, oldest
    /// first; nil (no storage) in almost every session.
    var held: CircularBuffer<(step: STOMPSessionStateMachine.StepID, bytes: ByteBuffer)>?
    var heldBytes = 0
    /// Bytes of the live messages kept while replays are read
    /// (``LocalSubscription/deferredDuringReplay``), and whether one more went past the limit.
    var deferredBytes = 0
    var deferredOverLimit = false
    /// Replayed messages not written yet, oldest subscription first: set while writes are paced
    /// by a replay (see ``pumpReplay(context:)``); nil in almost every session.
    var replayBacklog: CircularBuffer<ReplayRemainder>?
    /// Writes of a paced replay (and of the deliveries held behind it) the socket has not
    /// taken yet: the pacing ends once none is left.
    var replayWritesPending: Int32 = 0
    /// ``pumpReplay(context:)`` is running (its flushes run handlers at once).
    var pumpingReplay = false
    /// ``runActions()`` is running (an action may feed the machine an event).
    var running = false
    /// The session's `connected` fact was recorded and its `disconnected` not yet.
    var inPresence = false
    private var cleanedUp = false
    /// Cancelled when the session ends: route calls not started yet are dropped (made at its
    /// first `/app` SEND).
    var routeCancellation: RouteCancellation?

    package init(services: GatewayServices, handshake: HandshakeInfo = HandshakeInfo()) {
        self.services = services
        self.handshake = handshake
        self.sessionID = services.sessionIDs.next()
    }

    /// Forgets the logger made so far: its metadata changed (the session connected).
    func resetLogger() { sessionLogger = nil }

    // MARK: Lifecycle

    package func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.transport = try? context.pipeline.syncOperations.handler(type: WebSocketSTOMPTransport.self)
        self.writer = (try? context.pipeline.syncOperations.context(handlerType: ByteToMessageHandler<WebSocketFrameDecoder>.self)) ?? context
        self.shard = services.hub.shard(for: context.eventLoop)
        machine = STOMPSessionStateMachine(
            policy: services.policy, sessionID: sessionID, handshakeToken: handshake.token,
            openedAt: shard.tick, tickMs: services.hub.heartbeatResolution.nanoseconds / 1_000_000)
        shard.addHeartbeatClient(self)
        shard.registerSession(self)
        services.stats.connectionsOpen.add(1)
        services.stats.connectionsTotal.add(1)
        let high = max(config.maxPendingOutboundBytes, 2)
        // Synchronously where the channel allows it: no future per connection.
        let waterMark = ChannelOptions.Types.WriteBufferWaterMark(low: high / 2, high: high)
        if let options = context.channel.syncOptions {
            try? options.setOption(ChannelOptions.writeBufferWaterMark, value: waterMark)
        } else {
            _ = context.channel.setOption(ChannelOptions.writeBufferWaterMark, value: waterMark)
        }
    }

    /// Nagle on (`TCP_NODELAY` off) while the loop is saturated; see ``LoopBusyMode``.
    package func setNagle(_ enabled: Bool) {
        guard let context else { return }
        _ = context.channel.setOption(ChannelOptions.tcpOption(.tcp_nodelay), value: enabled ? 0 : 1)
    }

    package func handlerRemoved(context: ChannelHandlerContext) {
        cleanUp()
        self.context = nil
        self.writer = nil
        self.transport = nil
    }

    package func channelInactive(context: ChannelHandlerContext) {
        cleanUp()
        context.fireChannelInactive()
    }

    /// Drops subscriptions, timers and the machine's state. Runs once.
    func cleanUp() {
        guard !cleanedUp, machine != nil else { return }
        cleanedUp = true
        sessionEnded(.client, wasConnected: machine.connectionClosed())
        // After the machine is closed: a call failing at once here is then dropped, not taken
        // for a route failure of the live session (an ERROR, a `disconnected` of reason `error`).
        routeCancellation?.cancel()
        if let countedUser { services.userSessions.remove(countedUser) }
        for sub in subscriptions.values { shard.remove(sub) }
        services.stats.subscriptions.subtract(subscriptions.count)
        subscriptions.removeAll()
        for sub in presenceSubscriptions.values { shard.remove(sub) }
        presenceSubscriptions.removeAll()
        held = nil
        replayBacklog = nil
        shard?.removeHeartbeatClient(self)
        shard?.unregisterSession(self)
        services.stats.connectionsOpen.subtract(1)
    }

    // MARK: Inbound

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if machine.phase == .awaitingConnect, frame.command == .connect || frame.command == .stomp,
            let version = STOMPVersion.negotiate(acceptVersion: frame.headers["accept-version"], supported: machine.config.supportedVersions)
        {
            // The ERROR of a CONNECT that fails after the version is agreed (a bad heart-beat,
            // a refused login) is escaped as that version's headers are (none for 1.0).
            escape = version.escapesHeaders
            escapeCR = version == .v1_2
        }
        machine.read(at: shard.tick)
        shard.counters.framesIn[frame.command.ordinal] &+= 1
        machine.frameReceived(frame, now: .now())
        runActions()
    }

    package func channelReadComplete(context: ChannelHandlerContext) {
        flushIfNeeded()
        context.fireChannelReadComplete()
    }

    package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is STOMPTransportActivity {
            machine.read(at: shard.tick)
        } else if event is STOMPTransportClosing {
            // A close frame went out below: nothing more may be written, and the session is
            // over: its subscriptions leave the shard now, not once the socket is closed (the
            // echo may wait behind unsent bytes), and its unsent bytes count no more.
            undelivered = nil
            cleanUp()
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    package func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let failure: SessionFailure
        if let decoding = error as? STOMPDecodingError {
            let receipt = decoding.receipt
            switch decoding {
            case .frameTooLarge, .bodyTooLarge:
                failure = SessionFailure(decoding.description, receiptID: receipt, kind: .limit, closeCode: .messageTooLarge)
            case .tooManyHeaders, .headerLineTooLong, .headersTooLarge:
                failure = SessionFailure(decoding.description, receiptID: receipt, kind: .limit, closeCode: .policyViolation)
            default: failure = SessionFailure(decoding.description, receiptID: receipt)
            }
        } else if let exceeded = error as? PreConnectInputExceeded {
            failure = SessionFailure(exceeded.description, kind: .limit, closeCode: .policyViolation)
        } else if let limited = error as? RateLimitExceeded {
            machine.errorOccurred(SessionFailure(limited.description, kind: .limit, lingers: false))
            runActions()
            return
        } else {
            // WebSocket protocol errors are answered by the transport below (a close frame).
            logger.debug("connection error", metadata: ["error": "\(error)"])
            context.close(promise: nil)
            return
        }
        // After the frames decoded before the bad bytes, in their turn.
        machine.decodingFailed(failure)
        runActions()
    }

    package func channelWritabilityChanged(context: ChannelHandlerContext) {
        if isPacingReplay {
            // The replay filled the connection's buffer (live deliveries wait): it goes on now.
            if context.channel.isWritable {
                pumpReplay(context: context)
                if !isPacingReplay {
                    runActions()  // the client's frames that waited for the replay
                    flushIfNeeded()
                }
            }
            context.fireChannelWritabilityChanged()
            return
        }
        machine.writabilityChanged(isWritable: context.channel.isWritable)
        runActions()
        context.fireChannelWritabilityChanged()
    }

    // MARK: Outbound

    /// Holds back socket reads while the machine says so.
    package func read(context: ChannelHandlerContext) {
        if machine.readRequested() { context.read() }
    }

    /// Encodes and writes a server frame (not flushed), after the deliveries before it.
    func send(_ frame: STOMPFrame) {
        guard let context else { return }
        settleUndelivered(context: context)
        write(frame)
    }

    /// Encodes and writes a server frame (not flushed), without first writing deliveries.
    func write(_ frame: STOMPFrame) {
        guard let context else { return }
        let buffer = WebSocketServerFrame.build(
            opcode: .text, payloadCapacity: 64 + frame.body.readableBytes,
            allocator: context.channel.allocator
        ) { out in
            STOMPFrameEncoder.encode(frame, escapeHeaders: escape, escapeCarriageReturn: escapeCR, into: &out)
        }
        shard.counters.framesOut[frame.command.ordinal] &+= 1
        shard.counters.bytesOut &+= buffer.readableBytes
        writeOut(buffer, context: context)
        wroteSinceFlush = true
    }

    func sendReceipt(_ receipt: String?) {
        guard let receipt else { return }
        send(STOMPFrame(.receipt, headers: ["receipt-id": receipt]))
    }

    func flushIfNeeded() {
        guard let context else { return }
        if deferredOverLimit {
            failDeferredOverLimit()
            return
        }
        settleUndelivered(context: context)
        guard wroteSinceFlush else { return }
        wroteSinceFlush = false
        (writer ?? context).flush()
    }

    // MARK: SubscriptionSink

    package func deliver(_ message: PublishedMessage, to subscription: LocalSubscription, batch: inout DeliveryBatch) {
        guard machine.phase == .connected, context != nil else { return }
        // A watcher is told about the other sessions, not about itself.
        if subscription.isPresence, message.headers[PresenceNotice.sessionHeader] == sessionID { return }
        // A resume from further than this instance had delivered: the client has these.
        if let claimed = subscription.claimedThrough, let position = message.position, position.epoch == claimed.epoch {
            if position.sequence <= claimed.sequence {
                if subscription.replayPending { subscription.skippedAsClientsThrough = position }
                return
            }
            subscription.claimedThrough = nil
        }
        if subscription.replayPending, let claimed = subscription.claimedThrough, let position = message.position, position.epoch != claimed.epoch {
            // The client comes from another epoch than this one (Redis started the history
            // over, and one of the two instances has not heard of it yet): written now, a copy
            // of the epoch the replay then leaves behind went out after it, a duplicate and out
            // of order. Kept until the replay tells.
            let size = Self.deferredSize(message)
            if !deferredOverLimit, subscription.deferredDuringReplay.count < LocalSubscription.maxDeferredDuringReplay,
                heldBytes + deferredBytes + size <= config.maxPendingOutboundBytes
            {
                subscription.deferredDuringReplay.append(message)
                deferredBytes += size
            } else {
                deferredOverLimit = true  // the session fails at the pass's flush
            }
            return
        }
        // The seam of a resumed subscription: the replay already had these.
        if let through = subscription.replayedThrough, let position = message.position {
            if position.epoch == through.epoch && position.sequence <= through.sequence { return }
            // Of the epoch this instance registered at, when the replay came from a newer one
            // (Redis started the history over, and this instance has not heard of it yet): the
            // client is past it.
            if position.epoch == subscription.leavingEpoch { return }
            // Numbered in an epoch the embedded history dropped (its ring evicted, then made anew
            // for this registration) before the registration, and queued for this loop since:
            // older than anything the client was told of.
            if subscription.replayedInStep, Self.epoch(position.epoch, isOlderThan: through.epoch) { return }
            subscription.replayedThrough = nil
            subscription.leavingEpoch = nil
        }
        if subscription.replayPending, let position = message.position {
            if let live = subscription.liveDuringReplay, live.first.epoch == position.epoch {
                subscription.liveDuringReplay = (live.first, position)
            } else {
                subscription.liveDuringReplay = (position, position)
            }
        }
        // The shared allocator, not `context.channel.allocator`: reaching the channel costs
        // reference counting on every delivery.
        let buffer = batch.frames.frame(
            message, subscription: subscription.id, ack: subscription.ackMode != .auto,
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
        batch.delivered &+= 1
        batch.bytes &+= buffer.readableBytes
    }

    /// Allocator for delivered frames (NIO's default allocator, as every channel here uses).
    static let allocator = ByteBufferAllocator()

    package func flushDeliveries() {
        flushIfNeeded()
    }

    /// Hands the pass's deliveries to NIO, before any other write so frames keep their order
    /// — or, while a step of this session is unanswered, holds them until it is.
    ///
    /// - Parameter newest: the newest step the deliveries may have been caused by; the
    ///   machine's newest by default.
    @inline(__always)
    func settleUndelivered(context: ChannelHandlerContext, newest: STOMPSessionStateMachine.StepID? = nil) {
        if held == nil, !machine.isBusy, replayBacklog == nil {
            // Almost always: nothing to wait for.
            if let buffer = takeUndelivered() { writeOut(buffer, context: context) }
            return
        }
        let behind = newest ?? machine.newestStep
        let mustHold = replayBacklog != nil || (machine.oldestUnansweredStep.map { $0 <= behind } ?? false)
        if !mustHold { releaseHeld(through: nil, context: context) }
        guard let buffer = takeUndelivered() else { return }
        if mustHold {
            hold(buffer, behind: behind, context: context)
        } else {
            writeOut(buffer, context: context)
        }
    }

    /// Writes `bytes` to the connection (not flushed), and counts it as a write for the
    /// heart-beats: only bytes that go out do (deliveries held behind a step do not).
    @inline(__always)
    func writeOut(_ bytes: ByteBuffer, context: ChannelHandlerContext) {
        (writer ?? context).write(wrapOutboundOut(bytes), promise: nil)
        machine.wrote(at: shard.tick)
    }

    func takeUndelivered() -> ByteBuffer? {
        undeliveredIsOwn = false
        return undelivered.take()
    }

    /// Drops the deliveries not written yet (held behind steps, or gathered this tick): the
    /// session ends with an error, and the client resumes from what it got.
    func discardUnwritten() {
        held = nil
        heldBytes = 0
        replayBacklog = nil
        _ = takeUndelivered()
    }

    /// Keeps `buffer` until step `step` is answered (and a replay being written is out). Past
    /// the pending-bytes limit the oldest held deliveries go out anyway (the connection's own
    /// limit then decides), unless a subscription waits for its replay or a replay is being
    /// written: its live messages would come before the replay, so the session ends as a slow
    /// consumer (the client resumes from what it got).
    func hold(_ buffer: ByteBuffer, behind step: STOMPSessionStateMachine.StepID, context: ChannelHandlerContext) {
        if held == nil { held = CircularBuffer(initialCapacity: 2) }
        if held!.last?.step == step {
            // Appended in place (the buffer taken out is the only reference, and grows by
            // doubling): a new buffer per pass copied everything held so far each time, and a
            // step held for seconds (a slow webhook) cost the loop megabytes squared.
            var merged = held!.removeLast().bytes
            merged.writeImmutableBuffer(buffer)
            held!.append((step, merged))
        } else {
            held!.append((step, buffer))
        }
        heldBytes += buffer.readableBytes
        if heldBytes > config.maxPendingOutboundBytes, replayBacklog != nil || subscriptions.values.contains(where: \.replayPending) {
            machine.writabilityChanged(isWritable: false)
            runActions()
            return
        }
        while heldBytes > config.maxPendingOutboundBytes, let oldest = held!.popFirst() {
            heldBytes -= oldest.bytes.readableBytes
            writeOut(oldest.bytes, context: context)
            wroteSinceFlush = true
        }
    }

    /// Writes the held deliveries that waited for steps up to `step` (all when nil).
    func releaseHeld(through step: STOMPSessionStateMachine.StepID?, context: ChannelHandlerContext) {
        if isPacingReplay {
            pumpReplay(context: context)  // after the replay, as fast as the connection takes them
            return
        }
        guard held != nil else { return }
        while let first = held!.first, step == nil || first.step <= step! {
            held!.removeFirst()
            heldBytes -= first.bytes.readableBytes
            writeOut(first.bytes, context: context)
            wroteSinceFlush = true
        }
        if held!.isEmpty { held = nil }
    }

    // MARK: Heart-beats and timeouts

    /// A STOMP heart-beat (one end-of-line) in a text frame; shared by every session.
    static let heartBeatFrame = WebSocketServerFrame.make(opcode: .text, payload: ByteBuffer(string: "\n"), allocator: ByteBufferAllocator())

    package func heartbeatTick(_ tick: UInt64) -> UInt64? {
        switch machine.tick(tick, now: .now()) {
        case .wait(let next):
            return next
        case .sendHeartbeat(let next):
            if let context {
                settleUndelivered(context: context)
                // Settling can end the session (deliveries held over the limit while a replay
                // is paced): its close frame is out, and no frame may follow it (RFC 6455 §5.5.1).
                guard machine.phase == .connected else { return nil }
                (writer ?? context).writeAndFlush(wrapOutboundOut(Self.heartBeatFrame), promise: nil)
            }
            return next
        case .closed:
            runActions()
            return nil
        }
    }

    /// NIO's pending writes on the connection and the deliveries held behind a step; 0 once the
    /// session is closing (its connection goes within moments, and what it holds with it).
    package var pendingOutboundBytes: Int {
        guard machine != nil, machine.phase != .closed else { return 0 }
        let socket = context.flatMap { try? $0.channel.syncOptions?.getOption(ChannelOptions.bufferedWritableBytes) } ?? 0
        return socket + heldBytes + deferredBytes
    }

    /// The frames held by open transactions: in the instance's total against
    /// `limits.max-pending-bytes-total` (100,000 sessions could each hold 4 MiB of them), not a
    /// sign of a slow consumer.
    package var heldInboundBytes: Int {
        guard machine != nil, machine.phase != .closed else { return 0 }
        return machine.heldTransactionBytes
    }
    package var outboundSample = OutboundSample()

    package var unsentKernelBytes: Int? {
        guard let provider = context?.channel as? any SocketOptionProvider else { return nil }
        return TCPInfo.unsentBytes(provider)
    }

    /// Ends the session (shutdown, a lost lease, the instance's outbound cap). With
    /// `waitForStep`, a step in flight (a route call, an unconfirmed publish) completes first,
    /// so its receipt still goes out; then the `ERROR`.
    package func close(reason: String, waitForStep: Bool, kind: SessionErrorKind) {
        machine.closeRequested(reason: reason, waitForStep: waitForStep, kind: kind)
        runActions()
    }

    /// The session is over: counts it if it was connected, and records why if its `connected`
    /// fact was recorded (also when `CONNECTED` was still waiting for that fact to be stored).
    func sessionEnded(_ reason: DisconnectReason, wasConnected: Bool) {
        if wasConnected {
            services.stats.sessionsConnected.subtract(1)
            services.stats.sessionsByVersion[version.ordinal].subtract(1)
        }
        guard inPresence else { return }
        inPresence = false
        record(.disconnected(reason))
    }

    /// Hands a lifecycle fact of this session to the recorder, if events are on.
    @inline(__always)
    func record(_ kind: LifecycleFact.Kind) {
        guard let lifecycle = services.lifecycle else { return }
        lifecycle.record(fact(kind), on: shard.eventLoop)
    }

    func fact(_ kind: LifecycleFact.Kind) -> LifecycleFact {
        LifecycleFact(session: sessionID, kind: kind, time: Self.wallClockMillis())
    }

    /// Sends a WebSocket close frame after what is queued, then closes the channel (with
    /// `linger`, after waiting briefly for the client's close frame:
    /// ``WebSocketSTOMPTransport/close(after:linger:)``). A peer that does not read gets cut
    /// off after a short grace period.
    func closeConnection(context: ChannelHandlerContext, code: WebSocketErrorCode, linger: Bool) {
        let promise = context.eventLoop.makePromise(of: Void.self)
        settleUndelivered(context: context)
        if transport?.claimCloseFrame() ?? true {
            context.writeAndFlush(wrapOutboundOut(WebSocketServerFrame.close(code: code, allocator: context.channel.allocator)), promise: promise)
        } else {
            context.writeAndFlush(wrapOutboundOut(ByteBuffer()), promise: promise)
        }
        wroteSinceFlush = false
        if let transport {
            transport.close(after: promise.futureResult, linger: linger)
            return
        }
        let channel = context.channel
        let timeout = context.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
        promise.futureResult.whenComplete { _ in
            timeout.cancel()
            channel.close(promise: nil)
        }
    }
}
