import Logging
import NIOCore
import Synchronization

/// An encoded command travelling down the pipeline to ``RedisChannelHandler``.
package struct RedisOutboundCommand: Sendable {
    package var bytes: ByteBuffer
    package var kind: RedisConnectionStateMachine<EventLoopPromise<RESPToken>>.PendingKind
    package var promise: EventLoopPromise<RESPToken>
    /// See ``RedisCommand/blockingTimeout``.
    package var blockingTimeout: TimeAmount?
    /// With ``RedisConfiguration/commandConnectionPerEventLoop``, how the client counts it in
    /// flight: the loop whose command this is when it goes on another loop's connection (the
    /// shared one), counted among that loop's commands there (if it is not written there, its
    /// loop's later commands wait behind it: ``RedisConnection/onUnsent(_:)``), and whether a
    /// drain took it from the queue.
    package var origin: FallbackCount?
    /// Where it stands among its ``RedisClient``'s commands.
    package var place: CommandPlace

    /// A blocking command: its reply may take long.
    var blocking: Bool { self.blockingTimeout != nil }

    package init(
        bytes: ByteBuffer,
        kind: RedisConnectionStateMachine<EventLoopPromise<RESPToken>>.PendingKind = .command,
        promise: EventLoopPromise<RESPToken>,
        blockingTimeout: TimeAmount? = nil,
        origin: FallbackCount? = nil,
        place: CommandPlace = CommandPlace()
    ) {
        self.bytes = bytes
        self.kind = kind
        self.promise = promise
        self.blockingTimeout = blockingTimeout
        self.origin = origin
        self.place = place
    }
}

/// Where a command stands among its ``RedisClient``'s commands: the order the client took it in,
/// and, once held, until when it may wait for a connection.
package struct CommandPlace: Sendable {
    /// Its place in the order the client took its commands in (0: not sent through one). A
    /// command a connection hands back unwritten (``RedisConnection/onUnsent(_:)``) is held in
    /// this order among the others handed back: two connections may hand theirs back at once,
    /// and one of them a batch of older commands taken from the queue of held ones.
    package var ticket: UInt64
    /// Once held (waiting for a connection): when it stops waiting. Handed back again, it keeps
    /// it: ``RedisConfiguration/reconnectWait`` bounds its whole wait, however many connections
    /// failed to write it.
    package var heldUntil: NIODeadline?

    package init(ticket: UInt64 = 0, heldUntil: NIODeadline? = nil) {
        self.ticket = ticket
        self.heldUntil = heldUntil
    }
}

/// One command counted in flight until it is answered, or until it is held again because the
/// connection could not write it: whichever comes first uncounts it, once. Counted as
/// - a command of a loop sent on the shared connection, among the loop's commands there
///   (``RedisClient``'s `fallbacksInFlight`; `loop`);
/// - a command a drain took from the queue (``RedisClient``'s `drainedOnShared`, `drainedOnOwn`; `drained`):
///   commands of other loops sent later must not overtake it on their own connections.
package final class FallbackCount: Sendable {
    /// Where a drain wrote the queue's commands.
    package enum Drained: Sendable {
        /// On the shared connection.
        case shared
        /// On a loop's own connection (back before the shared one).
        case own
    }

    /// The loop whose command went on the shared connection; `nil`: not a loop's fallback (sent
    /// from no event loop, or drained on its loop's own connection).
    package let loop: ObjectIdentifier?
    /// Taken from the queue, and written where.
    package let drained: Drained?
    private let counted = Atomic<Bool>(true)

    package init(loop: ObjectIdentifier?, drained: Drained? = nil) {
        self.loop = loop
        self.drained = drained
    }

    /// `true` the first time only.
    package func uncount() -> Bool { self.counted.exchange(false, ordering: .acquiringAndReleasing) }
}

/// What a connection's handler tells other threads: whether it still takes commands (cleared
/// as soon as it starts closing: a TLS connection stays active for its `close_notify`
/// exchange, refusing every command), and how many replies it owes.
package final class CommandAcceptance: Sendable {
    private let open = Atomic<Bool>(true)
    private let owed = Atomic<Int>(0)

    package init() {}

    package var isOpen: Bool { self.open.load(ordering: .acquiring) }
    func close() { self.open.store(false, ordering: .releasing) }

    /// Replies owed for commands written (or queued to be) that may not have run yet (see
    /// ``RedisConnectionStateMachine/unrunCount``): while any is, a command sent after them on
    /// another connection could run first.
    package var owesReplies: Bool { self.owed.load(ordering: .acquiring) > 0 }
    func setOwed(_ count: Int) { self.owed.store(count, ordering: .releasing) }

    private let demotedFlag = Atomic<Bool>(false)
    /// Closed because the server answered `READONLY` (a replica now): its owner backs off as
    /// after a failed attempt, not as after a connection that lived.
    package var closedAsDemoted: Bool { self.demotedFlag.load(ordering: .acquiring) }
    func markDemoted() { self.demotedFlag.store(true, ordering: .releasing) }

    private let inbound = Atomic<UInt64>(NIODeadline.now().uptimeNanoseconds)
    /// When bytes last arrived (a reply, a message): proof that the peer is there.
    package var lastInbound: NIODeadline { .uptimeNanoseconds(self.inbound.load(ordering: .relaxed)) }
    func receivedNow() { self.inbound.store(NIODeadline.now().uptimeNanoseconds, ordering: .relaxed) }
}

/// Drives a Redis connection: runs the handshake, matches pipelined replies to commands (FIFO),
/// enforces command timeouts and routes pub/sub messages to `pushHandler`.
///
/// All logic lives in ``RedisConnectionStateMachine``; this handler only executes its actions.
package final class RedisChannelHandler: ChannelDuplexHandler {
    package typealias InboundIn = RESPToken
    package typealias OutboundIn = RedisOutboundCommand
    package typealias OutboundOut = ByteBuffer

    private var stateMachine: RedisConnectionStateMachine<EventLoopPromise<RESPToken>>
    private let configuration: RedisConfiguration
    private let handshakePromise: EventLoopPromise<Int>
    private let pushHandler: (@Sendable (RedisPubSubMessage) -> Void)?
    /// Closed for a `READONLY` answer (once).
    private var demoted = false
    private let serverUnsubscribeHandler: (@Sendable (RedisSubscriptionKind, String) -> Void)?
    private let logger: Logger
    private let acceptance: CommandAcceptance
    private var handshakeTimeout: Scheduled<Void>?
    private var context: ChannelHandlerContext?
    private var flushScheduled = false
    /// The application asked to stop reading pushes (``setReadsPaused(_:)``): reads are held
    /// while no reply is owed, and go on whenever one is (a paused subscriber connection still
    /// reads the confirmation of its own `SUBSCRIBE`).
    private var readsPaused = false
    private var readHeld = false
    /// The socket error that closed the connection (``errorCaught(context:error:)``).
    private var socketError: String?

    /// - Parameters:
    ///   - handshakePromise: succeeded with the negotiated protocol version (2 or 3) once the connection is ready.
    ///   - pushHandler: invoked on the event loop for every published message received.
    package init(
        configuration: RedisConfiguration,
        handshakePromise: EventLoopPromise<Int>,
        pushHandler: (@Sendable (RedisPubSubMessage) -> Void)?,
        serverUnsubscribeHandler: (@Sendable (RedisSubscriptionKind, String) -> Void)? = nil,
        acceptance: CommandAcceptance = CommandAcceptance(),
        logger: Logger
    ) {
        self.acceptance = acceptance
        self.serverUnsubscribeHandler = serverUnsubscribeHandler
        self.configuration = configuration
        self.stateMachine = .init(handshake: .init(configuration))
        self.handshakePromise = handshakePromise
        self.pushHandler = pushHandler
        self.logger = logger
    }

    /// Holds reads while `paused` and no reply is owed; true when that changed. On the loop.
    package func setReadsPaused(_ paused: Bool) -> Bool {
        guard paused != self.readsPaused else { return false }
        self.readsPaused = paused
        if !paused, let context = self.context { self.releaseHeldRead(context: context) }
        return true
    }

    package func read(context: ChannelHandlerContext) {
        if self.readsPaused, self.stateMachine.isReady, self.stateMachine.pendingCount == 0 {
            self.readHeld = true
        } else {
            context.read()
        }
    }

    private func releaseHeldRead(context: ChannelHandlerContext) {
        guard self.readHeld else { return }
        self.readHeld = false
        context.read()
    }

    package func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { self.startHandshake(context: context) }
    }

    package func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.handshakeTimeout?.cancel()
    }

    package func channelActive(context: ChannelHandlerContext) {
        self.startHandshake(context: context)
        context.fireChannelActive()
    }

    private func startHandshake(context: ChannelHandlerContext) {
        let action = self.stateMachine.channelActive()
        if case .none = action { return }
        self.handshakeTimeout = context.eventLoop.assumeIsolated().scheduleTask(in: self.configuration.connectTimeout) {
            self.handleHandshake(self.stateMachine.handshakeTimedOut())
        }
        self.handleHandshake(action)
    }

    private func handleHandshake(_ action: RedisConnectionStateMachine<EventLoopPromise<RESPToken>>.HandshakeAction) {
        guard let context = self.context else { return }
        switch action {
        case .none:
            break
        case .send(let step):
            context.writeAndFlush(self.wrapOutboundOut(self.encodeHandshake(step, allocator: context.channel.allocator)), promise: nil)
        case .succeeded(let version):
            self.handshakeTimeout?.cancel()
            self.logger.debug("redis handshake complete", metadata: ["resp": "\(version)"])
            self.handshakePromise.succeed(version)
        case .failed(let error):
            self.handshakeTimeout?.cancel()
            self.acceptance.close()
            self.handshakePromise.fail(error)
            context.close(promise: nil)
        }
    }

    private func encodeHandshake(
        _ step: RedisConnectionStateMachine<EventLoopPromise<RESPToken>>.HandshakeCommand,
        allocator: ByteBufferAllocator
    ) -> ByteBuffer {
        var encoder = RESPCommandEncoder(buffer: allocator.buffer(capacity: 64))
        let c = self.configuration
        switch step {
        case .hello:
            HELLO(protocolVersion: 3, username: c.username, password: c.password, clientName: c.clientName).encode(into: &encoder)
        case .auth:
            AUTH(username: c.username, password: c.password ?? "").encode(into: &encoder)
        case .clientSetName:
            CLIENTSETNAME(name: c.clientName ?? "").encode(into: &encoder)
        case .select:
            SELECT(database: c.database).encode(into: &encoder)
        }
        return encoder.buffer
    }

    package func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let command = self.unwrapOutboundIn(data)
        guard self.acceptance.isOpen else {
            // Closing (a TLS close waits for `close_notify`): not written, see below.
            let error = RedisClientError(.notConnected, detail: "the connection is closing; not sent")
            if let promise { promise.fail(error) } else { command.promise.fail(error) }
            return
        }
        var deadline: NIODeadline? = context.eventLoop.now + self.configuration.commandTimeout
        if let blocking = command.blockingTimeout {
            deadline = blocking == .zero ? nil : deadline! + blocking
        }
        // Behind a `WAIT` in flight the command runs only once it is answered.
        if let waiting = self.stateMachine.waitDeadline, let own = deadline, waiting > own { deadline = waiting }
        switch self.stateMachine.enqueue(command.promise, kind: command.kind, deadline: deadline) {
        case .write(let scheduleTimer):
            self.publishOwed()
            context.write(self.wrapOutboundOut(command.bytes), promise: promise)
            if let scheduleTimer { self.scheduleTimer(at: scheduleTimer, context: context) }
            self.scheduleFlush(context: context)
            self.releaseHeldRead(context: context)  // its reply must be read
        case .fail(let error):
            // Not written. With a write promise, its owner (``RedisConnection``) decides what
            // becomes of the command (sent again on another connection, or failed).
            if let promise { promise.fail(error) } else { command.promise.fail(error) }
        }
    }

    /// The command of `promise` was not written after all (its write failed: the socket closed
    /// with it still queued): it no longer waits for a reply here. `false` if it was answered
    /// or failed already. On the loop.
    ///
    /// The count of replies owed other threads see (``CommandAcceptance/owesReplies``) is left
    /// as it is: it drops at `channelInactive`, once every command not written was handed over
    /// (a drain seeing it drop earlier could write a later command before an earlier one is).
    package func withdraw(_ promise: EventLoopPromise<RESPToken>) -> Bool {
        self.stateMachine.withdraw { $0.futureResult === promise.futureResult }
    }

    /// Tells other threads how many replies are owed (``CommandAcceptance/owesReplies``); not
    /// once closing: commands failed then (a timeout) may still run until the socket closed,
    /// and unwritten ones are still being handed over. `channelInactive` sets the last count.
    private func publishOwed() {
        if self.acceptance.isOpen { self.acceptance.setOwed(self.stateMachine.unrunCount) }
    }

    /// Flushes once the tasks already queued on the loop have run, so the commands written in
    /// one loop tick (from many sessions) go out in one `write` to Redis.
    private func scheduleFlush(context: ChannelHandlerContext) {
        guard !self.flushScheduled else { return }
        self.flushScheduled = true
        context.eventLoop.assumeIsolated().execute {
            self.flushScheduled = false
            if let context = self.context { self.flushWritingOwedWait(context: context) }
        }
    }

    /// A close asked for (``RedisConnection/close()``, a failover): no command is taken from now on.
    package func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .all { self.acceptance.close() }
        context.close(mode: mode, promise: promise)
    }

    package func flush(context: ChannelHandlerContext) {
        self.flushWritingOwedWait(context: context)
    }

    /// Flushes, with one `WAIT` behind the replicated writes written since the last one (group
    /// commit: it covers them all).
    private func flushWritingOwedWait(context: ChannelHandlerContext) {
        if let wait = self.stateMachine.takeOwedWait() {
            var encoder = RESPCommandEncoder(buffer: context.channel.allocator.buffer(capacity: 32))
            wait.encode(into: &encoder)
            let deadline = context.eventLoop.now + self.configuration.commandTimeout + wait.timeout
            let promise = context.eventLoop.makePromise(of: RESPToken.self)
            switch self.stateMachine.enqueue(promise, kind: .replicaWait, deadline: deadline) {
            case .write(let scheduleTimer):
                self.publishOwed()
                context.write(self.wrapOutboundOut(encoder.buffer), promise: nil)
                if let scheduleTimer { self.scheduleTimer(at: scheduleTimer, context: context) }
            case .fail(let error):
                promise.fail(error)  // closing: the held writes were failed with everything else
            }
        }
        context.flush()
    }

    private func scheduleTimer(at deadline: NIODeadline, context: ChannelHandlerContext) {
        context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            switch self.stateMachine.timerFired(now: context.eventLoop.now) {
            case .none:
                break
            case .reschedule(let next):
                if let context = self.context { self.scheduleTimer(at: next, context: context) }
            case .failAllAndClose(let promises, let error):
                self.acceptance.close()
                self.logger.warning("redis command timed out; closing connection", metadata: ["pending": "\(promises.count)"])
                for promise in promises { promise.fail(error) }
                self.context?.close(promise: nil)
            }
        }
    }

    package func channelReadComplete(context: ChannelHandlerContext) {
        self.acceptance.receivedNow()  // once per read, not per reply
        context.fireChannelReadComplete()
    }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let token = self.unwrapInboundIn(data)
        let action = self.stateMachine.receivedToken(token)
        // Before the promises complete (what runs then may check it).
        self.publishOwed()
        switch action {
        case .none:
            break
        case .sendHandshake(let step):
            self.handleHandshake(.send(step))
        case .handshakeSucceeded(let version):
            self.handleHandshake(.succeeded(protocolVersion: version))
        case .handshakeFailed(let error):
            self.handleHandshake(.failed(error))
        case .succeed(let promise, let token):
            promise.succeed(token)
        case .fail(let promise, let error):
            // Marked before the caller hears of it (a connection's setup checks the mark).
            self.closeIfDemoted(error, context: context)
            promise.fail(error)
        case .deliver(let message):
            self.pushHandler?(message)
        case .unsubscribedByServer(let kind, let name):
            self.serverUnsubscribeHandler?(kind, name)
        case .failAllAndClose(let promises, let error):
            self.acceptance.close()
            self.logger.error("redis protocol error; closing connection", metadata: ["error": "\(error)"])
            for promise in promises { promise.fail(error) }
            context.close(promise: nil)
        case .complete(let outcomes):
            for case (_, .failure(let error)) in outcomes { self.closeIfDemoted(error, context: context) }
            for (promise, outcome) in outcomes { promise.completeWith(outcome) }
            // The `WAIT` in flight was answered: the one owed for the writes since goes now.
            if self.stateMachine.owesWait { self.flushWritingOwedWait(context: context) }
        }
    }

    /// A write answered `READONLY`: the server was demoted (`FAILOVER`, `REPLICAOF`, a managed
    /// service's failover behind a DNS name) while this command connection stayed open. Nothing
    /// else closes it (Sentinel kills the old primary's clients; without it every write failed
    /// for as long as the connection lived): it is closed, and the owner reconnects (to the
    /// primary Sentinel names, or wherever the address leads now). That write did not run.
    private func closeIfDemoted(_ error: any Error, context: ChannelHandlerContext) {
        guard self.pushHandler == nil, !self.demoted, (error as? RedisServerError)?.isReadOnly == true, context.channel.isActive else { return }
        self.demoted = true
        self.acceptance.markDemoted()
        self.logger.warning("redis answered READONLY (the server is a replica now): reconnecting", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    package func channelInactive(context: ChannelHandlerContext) {
        self.acceptance.close()
        var action = self.stateMachine.channelInactive()
        self.acceptance.setOwed(self.stateMachine.unrunCount)
        if let detail = self.socketError, case .failAll(let promises, _, let handshakeError) = action {
            let error = RedisClientError(.connectionClosed, detail: detail)
            action = .failAll(promises, error, handshakeError: handshakeError.map { _ in error })
        }
        self.executeClose(action, context: context, close: false)
        context.fireChannelInactive()
    }

    /// A socket error (e.g. `ECONNRESET` when the server died) fails the pending commands
    /// with ``RedisClientError/connectionClosed``, like a clean close: sent, outcome unknown.
    /// The channel is closed first: NIO then fails the writes still queued in it, whose
    /// commands Redis never got (``withdraw(_:)``: sent again elsewhere); the rest fail once it
    /// is inactive.
    ///
    /// Any other error that ends the connection fails the commands sent the same way: TLS's
    /// unclean shutdown (a server gone without `close_notify`, which NIOSSL reports before the
    /// channel goes inactive), a reply that cannot be parsed. Redis may have run them all. (They
    /// failed with that error itself, which callers took for "not run": a 503 to retry, and a
    /// duplicate once retried.) A handshake still fails with the error itself, whose cause
    /// ``RedisConnection`` describes.
    package func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.logger.debug("redis connection error", metadata: ["error": "\(error)"])
        self.acceptance.close()
        if error is IOError, context.channel.isActive, self.socketError == nil {
            self.socketError = "\(error)"
            context.close(promise: nil)
            return
        }
        let lost = RedisClientError(.connectionClosed, detail: "\(error)")
        var action = self.stateMachine.errorCaught(lost)
        if !(error is IOError), case .failAll(let promises, _, .some) = action {
            action = .failAll(promises, lost, handshakeError: error)
        }
        self.executeClose(action, context: context, close: true)
    }

    private func executeClose(
        _ action: RedisConnectionStateMachine<EventLoopPromise<RESPToken>>.CloseAction,
        context: ChannelHandlerContext,
        close: Bool
    ) {
        switch action {
        case .none:
            break
        case .failAll(let promises, let error, let handshakeError):
            for promise in promises { promise.fail(error) }
            if let handshakeError {
                self.handshakeTimeout?.cancel()
                self.handshakePromise.fail(handshakeError)
            }
            if close { context.close(promise: nil) }
        }
    }
}
