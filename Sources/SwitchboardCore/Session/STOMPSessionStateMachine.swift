import NIOCore
import NIOWebSocket
import STOMPCodec
import SwitchboardRoutes
import SwitchboardWire

/// The protocol logic of one STOMP session, as a value type that performs no I/O.
///
/// ``STOMPSessionHandler`` feeds it events — a frame received, a step completed, a timer tick,
/// the channel's write-ability, a close request — and executes the ``Action``s it then pulls
/// with ``nextAction()``: start a step, send a receipt, resume reading, close. The machine
/// owns every ordering rule:
///
/// - Frames are handled in arrival order. A frame whose work is asynchronous (an `/app` route
///   call, a publish the engine confirms later, an authentication) is a *step*. A *serial*
///   step holds up every later frame; a *pipelined* step (a SEND to a backend that keeps the
///   order of what it is handed) lets later pipelinable SENDs go ahead, up to
///   `maxPipelinedSends` at once. Any other frame waits until the pipeline is empty.
/// - Receipts go out strictly in frame order, each once its frame's work is done. A failed
///   step is answered with an `ERROR` after the receipts of every frame before it.
/// - Frames inside a transaction are held until `COMMIT`, then handled in order, with their
///   receipts, and the `COMMIT`'s receipt last (``QueuedWork/endOfTransaction(receipt:)``).
/// - A `DISCONNECT`'s receipt is the last frame the session sends.
/// - A close request (shutdown) lets the step in flight finish and answers it first.
/// - Heart-beats, the heart-beat timeout, a token's expiry and the CONNECT deadline are
///   decided in ``tick(_:now:)``.
package struct STOMPSessionStateMachine {
    /// Numbers the steps of one session, in the order they started.
    package typealias StepID = UInt64

    /// Where the session is.
    package enum Phase: Equatable {
        case awaitingConnect
        case connected
        case closed
    }

    /// What waits to be handled, in order.
    package enum QueuedWork {
        /// A frame; `commitReceipt`: the receipt of the `COMMIT` that replays it (echoed by an
        /// `ERROR` it causes when it has none of its own).
        case frame(STOMPFrame, commitReceipt: String? = nil)
        /// The end of a committed transaction's replay: the `COMMIT`'s receipt goes out here.
        case endOfTransaction(receipt: String?)
        /// Bytes after the frames before them could not be decoded: the `ERROR`, once those
        /// frames are handled and answered.
        case failure(SessionFailure)
    }

    /// Work the handler carries out for a step; it reports the outcome with
    /// ``stepCompleted(_:_:)`` (at once, or later).
    package enum Command {
        /// CONNECT accepted by the protocol rules: authenticate `token` (when an
        /// authenticator is configured and a token was presented), then report
        /// ``StepResult/connected(_:)``.
        case connect(token: String?)
        /// SUBSCRIBE: register the subscription, then report once the engine has the interest.
        case subscribe(Subscription)
        /// SEND to a broker destination: publish.
        case publish(destination: String, frame: STOMPFrame)
        /// SEND to an application destination with a route: hand it to the route.
        case route(destination: String, route: any AppRoute, frame: STOMPFrame)
    }

    /// A validated SUBSCRIBE.
    package struct Subscription {
        package var id: String
        /// The destination as the client sent it.
        package var destination: String
        /// What it matches (a user destination already routed to this session's user).
        package var pattern: DestinationPattern
        package var ackMode: AckMode
        /// Where to start in the destination's history (`x-resume-from`, `x-last`); nil: live only.
        package var start: HistoryStart? = nil
        /// `x-presence: true`: join/leave notices of other sessions come on this subscription too.
        package var presence = false
        /// The SUBSCRIBE asked for a receipt (which then waits for its `subscribed` fact to be stored).
        package var wantsReceipt = false
    }

    /// How a step ended.
    package enum StepResult {
        case success
        /// The CONNECT step: the session's identity (nil: anonymous).
        case connected(SessionIdentity?)
        case failure(SessionFailure)
    }

    /// The session is now connected: write `frame` (`CONNECTED`), then the receipt.
    package struct ConnectedSession {
        package var frame: STOMPFrame
        package var receipt: String?
        package var version: STOMPVersion
        package var identity: SessionIdentity?
        /// Negotiated heart-beat intervals in ms (0: none).
        package var serverSendsMs: Int
        package var serverExpectsMs: Int
    }

    /// Why and how the session ends.
    package struct SessionClose {
        /// The `ERROR` to send first; nil for a `DISCONNECT`.
        package var failure: SessionFailure?
        /// The `DISCONNECT`'s receipt, sent last.
        package var receipt: String?
        /// Whether the session had completed CONNECT (for the gauges).
        package var wasConnected: Bool
    }

    /// What the handler does next.
    package enum Action {
        /// Carry out `command`; report its end with ``stepCompleted(_:_:)``.
        case execute(Command, step: StepID)
        /// Remove subscription `id` (if any), then send the receipt, if any.
        /// Remove these subscriptions (none: an id the session does not have, answered all the
        /// same), then send the receipt.
        case unsubscribe(ids: [String], receipt: String?)
        /// Send a `RECEIPT` for a frame that needed no step.
        case sendReceipt(String)
        /// Step `step` is answered, in frame order: send its receipt, if any. Nothing the
        /// session holds back for causality needs to wait for it any more.
        case stepAnswered(StepID, receipt: String?)
        case connected(ConnectedSession)
        /// Send the `ERROR` (or the `DISCONNECT` receipt) and close the connection.
        case close(SessionClose)
        /// Reading from the socket may resume (a read was held back).
        case resumeReads
    }

    package let policy: SessionPolicy
    var config: SessionConfiguration { policy.configuration }

    package private(set) var phase: Phase = .awaitingConnect
    package private(set) var version: STOMPVersion = .v1_2
    package private(set) var identity: SessionIdentity?
    /// The token from the WebSocket handshake, used when CONNECT carries none.
    let handshakeToken: String?

    /// Capacity 1 to start (the queues are empty in almost every session): the default of 16
    /// would cost about 2 kB per idle connection.
    private var queue = CircularBuffer<QueuedWork>(initialCapacity: 1)
    /// A replay is being written as fast as the connection takes it (see
    /// ``replayPacing(_:)``): no frame of the client is handled meanwhile.
    package private(set) var pacingReplay = false
    struct PendingStep {
        let id: StepID
        /// The frame's receipt: sent when the step succeeds.
        let receipt: String?
        /// Echoed as `receipt-id` when it fails: the frame's receipt, else that of the `COMMIT`
        /// that replayed it.
        let errorReceipt: String?
        var outcome: StepResult?
    }
    /// The serial step in flight.
    private var serial: PendingStep?
    /// Pipelined steps, oldest first; their answers go out in this order.
    private var pipeline = CircularBuffer<PendingStep>(initialCapacity: 1)
    private var nextStepID: StepID = 1
    /// The receipt of the `COMMIT` whose frame is being handled (``QueuedWork/frame(_:commitReceipt:)``).
    var committing: String?
    /// Open transactions and the frames they hold.
    private var transactions: [String: [STOMPFrame]] = [:]
    /// Bytes held by the open transactions (bodies and headers), at most
    /// ``SessionConfiguration/maxTransactionBytes``.
    private var transactionBytes = 0
    /// Subscription ids in use.
    package private(set) var subscriptionIDs: Set<String> = []
    /// STOMP 1.0: each subscription's destination, which an `UNSUBSCRIBE` without `id` names
    /// (a subscription made with an `id` too).
    private(set) var destinationsOfIDs: [String: String] = [:]
    /// A shutdown waiting for the step in flight.
    private var closeAfterInFlight: SessionFailure?
    /// The close to report, once decided.
    private var pendingClose: SessionClose?
    /// A socket read was held back while reads were paused.
    private var readPending = false
    private var frameBucket: TokenBucket?
    /// Since when a read is held back (frames wait unread in the socket meanwhile).
    private var readsHeldSince: NIODeadline?

    /// Heart-beat and timeout bookkeeping, in timer ticks (see ``tick(_:now:)``).
    var heartbeat = HeartbeatState()

    /// - Parameters:
    ///   - openedAt: the timer tick the connection opened at (the CONNECT deadline counts from it).
    ///   - tickMs: the length of one timer tick in ms.
    package init(
        policy: SessionPolicy, sessionID: String, handshakeToken: String? = nil, openedAt tick: UInt64, tickMs: Int64,
        now: NIODeadline = .now()
    ) {
        self.policy = policy
        self.sessionID = sessionID
        self.handshakeToken = handshakeToken
        self.heartbeat = HeartbeatState(
            openedTick: tick, tickMs: tickMs,
            connectTimeoutMs: policy.configuration.connectTimeout.nanoseconds / 1_000_000)
        let rate = policy.configuration.maxFramesPerSecond
        if rate > 0 { frameBucket = TokenBucket(rate: rate, burst: 2 * rate, now: now) }
    }

    // MARK: Queries

    /// Whether a step is in flight (serial or pipelined).
    package var isBusy: Bool { serial != nil || !pipeline.isEmpty }

    /// Whether socket reads wait: a serial step runs, frames are queued, the pipeline is full, or
    /// a replay is being written.
    package var readsPaused: Bool {
        serial != nil || !queue.isEmpty || pipeline.count >= config.maxPipelinedSends || pacingReplay
    }

    /// The newest step started (0: none yet); deliveries arriving now may have been caused by it.
    package var newestStep: StepID { nextStepID &- 1 }

    /// The oldest step not answered yet, if any.
    package var oldestUnansweredStep: StepID? { pipeline.first?.id ?? serial?.id }

    // MARK: Inputs

    /// A frame arrived from the client.
    package mutating func frameReceived(_ frame: STOMPFrame, now: NIODeadline) {
        guard phase != .closed else { return }
        if frameBucket != nil, !frameBucket!.take(1, now: now) {
            fail(SessionFailure("rate limit exceeded: more than \(config.maxFramesPerSecond) frames per second", kind: .limit, lingers: false))
            return
        }
        guard queue.count < config.maxQueuedFrames else {
            fail(SessionFailure("too many frames queued behind an unfinished SEND (limit \(config.maxQueuedFrames))", kind: .limit))
            return
        }
        queue.append(.frame(frame))
    }

    /// The handler wants to read from the socket; false: hold the read back until
    /// ``Action/resumeReads``.
    package mutating func readRequested(now: @autoclosure () -> NIODeadline = .now()) -> Bool {
        if readsPaused {
            if readsHeldSince == nil, frameBucket != nil { readsHeldSince = now() }
            readPending = true
            return false
        }
        return true
    }

    /// Reads resume (after ``Action/resumeReads``): what the client sent while they were held
    /// back arrives at once. The frame-rate limit allows it at the rate over that time (it
    /// counted it all at this moment: a client within the limit was cut off after any pause
    /// longer than the burst, say a slow webhook's, or a paced replay whose ACKs waited).
    package mutating func readsResumed(now: NIODeadline) {
        guard let since = readsHeldSince else { return }
        readsHeldSince = nil
        frameBucket?.credit(for: now - since, now: now)
    }

    /// Step `step` ended. A step the session no longer waits for (it closed) is ignored.
    package mutating func stepCompleted(_ step: StepID, _ result: StepResult) {
        guard phase != .closed else { return }
        if serial?.id == step {
            serial!.outcome = result
            return
        }
        guard let first = pipeline.first?.id, step >= first else { return }
        let index = pipeline.index(pipeline.startIndex, offsetBy: Int(step - first))
        guard index < pipeline.endIndex, pipeline[index].id == step else { return }
        pipeline[index].outcome = result
    }

    /// A replay started (or finished) being written as fast as the connection takes it. Until it
    /// is out, the client's later frames wait (and reading from the socket pauses), as behind a
    /// step: an `UNSUBSCRIBE`, a new `SUBSCRIBE` with the same id or a `DISCONNECT` handled
    /// meanwhile would be answered before messages already held for the session (they would come
    /// after its receipt, or repeat positions on a reused id). The client is not expected to send
    /// heart-beats meanwhile: ``SessionConfiguration/replayStallTimeout`` catches a peer that is gone.
    package mutating func replayPacing(_ pacing: Bool, at tick: UInt64) {
        guard phase != .closed else { return }
        pacingReplay = pacing
        // Nothing was read meanwhile: the heart-beat timeout counts from here.
        if !pacing { heartbeat.lastReadTick = max(heartbeat.lastReadTick, tick) }
    }

    /// The connection stopped taking writes fast enough.
    package mutating func writabilityChanged(isWritable: Bool) {
        guard !isWritable, phase != .closed else { return }
        fail(SessionFailure("slow consumer: more than \(config.maxPendingOutboundBytes) bytes pending delivery", kind: .slowConsumer))
    }

    /// The gateway ends the session (shutdown). With `waitForStep`, a step in flight completes
    /// first, so its receipt still goes out; then the `ERROR`. Without (the drain's grace is
    /// over), the `ERROR` goes out at once and the step is abandoned: the client never gets its
    /// receipt, so it knows the outcome is unknown.
    /// `kind`: ``SessionErrorKind/shutdown``, or ``SessionErrorKind/leaseLost`` when the
    /// instance lost its presence lease.
    package mutating func closeRequested(reason: String, waitForStep: Bool = true, kind: SessionErrorKind = .shutdown) {
        guard phase != .closed else { return }
        // A server going down, or one that lost its presence lease (the client is to reconnect
        // too), closes with 1001, "going away" (RFC 6455 §7.4.1): a client that takes 1000 for
        // a normal, final end would not reconnect.
        let failure = SessionFailure(reason, kind: kind, closeCode: kind == .shutdown || kind == .leaseLost ? .goingAway : .normalClosure)
        if isBusy && waitForStep {
            closeAfterInFlight = failure
        } else {
            fail(failure)
        }
    }

    /// The connection is gone: nothing more is handled. Returns whether the session had
    /// completed CONNECT and was not already ended by an action.
    package mutating func connectionClosed() -> Bool {
        let wasConnected = phase == .connected
        if phase != .closed { enterClosed() }
        pendingClose = nil
        return wasConnected
    }

    /// A fatal error (a transport error, a rate limit): `ERROR` at once, then close.
    package mutating func errorOccurred(_ failure: SessionFailure) {
        fail(failure)
    }

    /// The client's bytes after the frames decoded so far are malformed (or over a limit): the
    /// `ERROR` comes after those frames are handled and answered, as for a frame refused in
    /// its turn. It went out at once, and the frames before it in the same read lost their
    /// receipts (a `SEND` to a webhook may have acted).
    package mutating func decodingFailed(_ failure: SessionFailure) {
        guard phase != .closed else { return }
        queue.append(.failure(failure))
    }

    // MARK: Output

    /// The next thing to do, or nil when the session waits for an event.
    package mutating func nextAction() -> Action? {
        while true {
            if let close = pendingClose {
                pendingClose = nil
                return .close(close)
            }
            guard phase != .closed else { return nil }
            if let action = answerCompletedStep() { return action }
            if pendingClose != nil { continue }  // a failed step
            if let close = closeAfterInFlight, !isBusy {
                fail(close)
                continue
            }
            if let work = queue.first, canHandleNow(work) {
                queue.removeFirst()
                if let action = handle(work) { return action }
                continue
            }
            // (Closing after the steps in flight: nothing more is read or started.)
            if readPending, !readsPaused, closeAfterInFlight == nil {
                readPending = false
                return .resumeReads
            }
            return nil
        }
    }

    /// The answer of the oldest completed step, if it is its turn.
    private mutating func answerCompletedStep() -> Action? {
        if let step = serial, let outcome = step.outcome {
            serial = nil
            return answer(step, outcome)
        }
        if let head = pipeline.first, let outcome = head.outcome {
            pipeline.removeFirst()
            return answer(head, outcome)
        }
        return nil
    }

    private mutating func answer(_ step: PendingStep, _ outcome: StepResult) -> Action? {
        switch outcome {
        case .success:
            return .stepAnswered(step.id, receipt: step.receipt)
        case .connected(let identity):
            return completeConnect(step, identity: identity)
        case .failure(var failure):
            if failure.receiptID == nil { failure.receiptID = step.errorReceipt }
            fail(failure)
            return nil
        }
    }

    /// Whether `work` may be handled now rather than wait: nothing runs serially, the session
    /// is not closing, and either nothing is pipelined or it can join the pipeline.
    private func canHandleNow(_ work: QueuedWork) -> Bool {
        // Closing after the steps in flight (a shutdown, a lost lease): no SEND joins them, or
        // a client streaming SENDs would keep the pipeline busy until the grace ran out and
        // every step in flight then went unanswered.
        guard serial == nil, !pacingReplay, closeAfterInFlight == nil else { return false }
        if pipeline.isEmpty { return true }
        guard case .frame(let frame, _) = work, phase == .connected else { return false }
        return pipeline.count < config.maxPipelinedSends && policy.isPipelinable(frame, identity: identity)
    }

    private mutating func handle(_ work: QueuedWork) -> Action? {
        switch work {
        case .endOfTransaction(let receipt):
            return receipt.map { .sendReceipt($0) }
        case .frame(let frame, let commitReceipt):
            committing = commitReceipt
            defer { committing = nil }
            return handle(frame)
        case .failure(let failure):
            fail(failure)
            return nil
        }
    }

    // MARK: Steps

    /// Starts a step for `frame`: pipelined when its backend keeps order, else serial.
    mutating func startStep(_ command: Command, for frame: STOMPFrame, pipelined: Bool) -> Action {
        let id = nextStepID
        nextStepID &+= 1
        let step = PendingStep(id: id, receipt: frame.headers["receipt"], errorReceipt: frame.headers["receipt"] ?? committing)
        if pipelined {
            pipeline.append(step)
        } else {
            serial = step
        }
        return .execute(command, step: id)
    }

    /// Ends the session with an `ERROR`: nothing else is handled or answered.
    mutating func fail(_ failure: SessionFailure) {
        guard phase != .closed else { return }
        pendingClose = SessionClose(failure: failure, receipt: nil, wasConnected: phase == .connected)
        enterClosed()
    }

    /// Ends the session after a `DISCONNECT`.
    mutating func disconnect(receipt: String?) -> Action {
        let close = SessionClose(failure: nil, receipt: receipt, wasConnected: phase == .connected)
        enterClosed()
        return .close(close)
    }

    private mutating func enterClosed() {
        phase = .closed
        queue.removeAll()
        pipeline.removeAll()
        serial = nil
        transactions.removeAll()
        transactionBytes = 0
        closeAfterInFlight = nil
        readPending = false
    }

    // MARK: Transactions

    /// Holds `frame` in transaction `tx`; false (after failing the session) if impossible.
    mutating func appendToTransaction(_ tx: String, _ frame: STOMPFrame) -> Bool {
        guard transactions[tx] != nil else { failFrame("unknown transaction '\(tx)'", frame); return false }
        guard transactions[tx]!.count < config.maxFramesPerTransaction else {
            failFrame("transaction '\(tx)' is too large (limit \(config.maxFramesPerTransaction) frames)", frame, kind: .limit)
            return false
        }
        let size = Self.heldSize(frame)
        guard transactionBytes + size <= config.maxTransactionBytes else {
            failFrame(
                "transactions hold too many bytes (limit \(config.maxTransactionBytes) bytes per session, open transactions together)",
                frame, kind: .limit)
            return false
        }
        transactions[tx]!.append(frame)
        transactionBytes += size
        return true
    }

    mutating func beginTransaction(_ tx: String, _ frame: STOMPFrame) -> Action? {
        guard transactions[tx] == nil else { failFrame("transaction '\(tx)' is already open", frame); return nil }
        guard transactions.count < config.maxTransactionsPerSession else {
            failFrame("too many open transactions (limit \(config.maxTransactionsPerSession))", frame, kind: .limit); return nil
        }
        transactions[tx] = []
        return frame.headers["receipt"].map { .sendReceipt($0) }
    }

    /// Replays the transaction's frames in order, each with its receipt, then the COMMIT's receipt.
    mutating func commitTransaction(_ tx: String, _ frame: STOMPFrame) {
        guard let frames = transactions.removeValue(forKey: tx) else { failFrame("unknown transaction '\(tx)'", frame); return }
        transactionBytes -= frames.reduce(0) { $0 + Self.heldSize($1) }
        var replay = frames
        for i in replay.indices { replay[i].headers.remove("transaction") }
        queue.prepend(.endOfTransaction(receipt: frame.headers["receipt"]))
        for f in replay.reversed() { queue.prepend(.frame(f, commitReceipt: frame.headers["receipt"])) }
    }

    mutating func abortTransaction(_ tx: String, _ frame: STOMPFrame) -> Action? {
        guard let frames = transactions.removeValue(forKey: tx) else { failFrame("unknown transaction '\(tx)'", frame); return nil }
        transactionBytes -= frames.reduce(0) { $0 + Self.heldSize($1) }
        return frame.headers["receipt"].map { .sendReceipt($0) }
    }

    /// What a frame held in a transaction counts against ``SessionConfiguration/maxTransactionBytes``:
    /// the storage its body keeps alive (not only the body's bytes: a slice keeps its whole
    /// buffer), ``heldFrameOverhead`` for the frame and its header list, and per header what its
    /// two strings take (``heldHeaderOverhead``, and the text of one too long to be stored
    /// inline). Counting the bytes of the text only, frames of many short headers held 8 times
    /// what they counted.
    package static func heldSize(_ frame: STOMPFrame) -> Int {
        frame.headers.reduce(max(frame.body.readableBytes, frame.body.storageCapacity) + heldFrameOverhead) {
            $0 + heldHeaderOverhead + heldText($1.name) + heldText($1.value)
        }
    }
    /// The frame, and its header list's storage (room for 8 headers at least).
    static let heldFrameOverhead = 320
    /// Two `String`s and their slot in the header list.
    static let heldHeaderOverhead = 32
    /// A string of more than 15 UTF-8 bytes is stored on the heap, after a 32-byte header.
    static func heldText(_ text: String) -> Int {
        let count = text.utf8.count
        return count > 15 ? count + 32 : 0
    }

    /// Bytes held by the open transactions (counted in the instance's outbound total too).
    package var heldTransactionBytes: Int { transactionBytes }

    // MARK: Subscriptions

    mutating func addSubscriptionID(_ id: String, destination: String) {
        subscriptionIDs.insert(id)
        if version == .v1_0 { destinationsOfIDs[id] = destination }
    }
    mutating func removeSubscriptionID(_ id: String) -> Bool {
        destinationsOfIDs[id] = nil
        return subscriptionIDs.remove(id) != nil
    }

    // MARK: CONNECT

    mutating func completeConnect(_ step: PendingStep, identity: SessionIdentity?) -> Action? {
        self.identity = identity
        let clientBeat = connectHeartBeat
        let (sendMs, expectMs) = STOMPHeartBeat.negotiate(client: clientBeat, server: config.heartBeat)
        heartbeat.connected(sendMs: sendMs, expectMs: expectMs, tolerance: config.heartBeatTolerance, expiresAt: identity?.expiresAt)
        phase = .connected
        var headers: STOMPHeaders = [
            "version": version.rawValue,
            "server": config.serverName,
            "session": sessionID,
            "heart-beat": STOMPHeartBeat(send: sendMs, receive: expectMs).headerValue,
        ]
        if let user = identity?.user { headers.add("user-name", user) }
        return .connected(
            ConnectedSession(
                frame: STOMPFrame(.connected, headers: headers), receipt: step.receipt,
                version: version, identity: identity, serverSendsMs: sendMs, serverExpectsMs: expectMs))
    }

    /// The heart-beat the CONNECT being authenticated asked for.
    var connectHeartBeat = STOMPHeartBeat.none
    /// The `session` header of `CONNECTED`.
    package let sessionID: String

    mutating func setVersion(_ v: STOMPVersion) { version = v }
}
