import NIOCore

/// The pure state machine behind ``RedisChannelHandler``.
///
/// It performs no I/O: every event returns an action the handler executes. It is generic over the
/// promise type so it can be unit-tested with plain values.
///
/// Lifecycle: `initialized` → (`channelActive`) → `handshaking` (HELLO 3, or the RESP2 fallback
/// AUTH / CLIENT SETNAME / SELECT) → `ready` (pipelined commands, replies matched FIFO) → `closing` → `closed`.
package struct RedisConnectionStateMachine<Promise> {
    /// A step of the connection handshake; the handler builds the actual command from the configuration.
    package enum HandshakeCommand: Hashable, Sendable {
        case hello
        case auth
        case clientSetName
        case select
    }

    /// What a pending command expects as its reply.
    package enum PendingKind: Hashable, Sendable {
        /// One ordinary reply.
        case command
        /// A (P|S)(UN)SUBSCRIBE of `names` awaiting their confirmations of kind `confirmation`
        /// (e.g. `subscribe`), one per name given (twice for a name given twice); the first
        /// `confirmed` names have theirs.
        case subscription(confirmation: String, names: [String], confirmed: Int = 0)
        /// A write that must reach replicas (``ReplicatedWrite``): its reply is held until the
        /// next `.replicaWait`'s count arrives.
        case replicatedWrite(WAIT)
        /// The `WAIT` written behind the replicated writes of one flush.
        case replicaWait
    }

    /// A replicated write Redis stored, waiting for the `WAIT` behind it.
    struct HeldWrite {
        var promise: Promise
        var reply: RESPToken
        var minimumReplicas: Int
    }

    package struct Pending {
        package var promise: Promise
        package var kind: PendingKind
        package var deadline: NIODeadline?
        /// Not written after all (``withdraw(where:)``): no reply comes for it, and closing does
        /// not fail it (whoever withdrew it completes it).
        var withdrawn = false
    }

    package struct HandshakeConfiguration: Hashable, Sendable {
        package var preference: RedisProtocolPreference
        package var hasPassword: Bool
        package var hasClientName: Bool
        package var database: Int

        package init(preference: RedisProtocolPreference, hasPassword: Bool, hasClientName: Bool, database: Int) {
            self.preference = preference
            self.hasPassword = hasPassword
            self.hasClientName = hasClientName
            self.database = database
        }

        package init(_ configuration: RedisConfiguration) {
            self.init(
                preference: configuration.protocolPreference,
                hasPassword: configuration.password != nil,
                hasClientName: configuration.clientName != nil,
                database: configuration.database
            )
        }

        /// The steps after HELLO 3 succeeded (HELLO already did AUTH and SETNAME).
        var stepsAfterHello: [HandshakeCommand] { self.database != 0 ? [.select] : [] }

        /// The RESP2 handshake steps.
        var resp2Steps: [HandshakeCommand] {
            var steps: [HandshakeCommand] = []
            if self.hasPassword { steps.append(.auth) }
            if self.hasClientName { steps.append(.clientSetName) }
            if self.database != 0 { steps.append(.select) }
            return steps
        }
    }

    enum State {
        case initialized
        case handshaking(current: HandshakeCommand, remaining: [HandshakeCommand], protocolVersion: Int)
        case ready(protocolVersion: Int, subscribeMode: Bool)
        case closing
        case closed
    }

    private(set) var state: State = .initialized
    private var pending = CircularBuffer<Pending>(initialCapacity: 16)
    /// Replicated writes answered by Redis, waiting for their `WAIT`'s count.
    private var held: [HeldWrite] = []
    /// The `WAIT` owed for the replicated writes enqueued since the last one (the largest
    /// count and timeout among them).
    private var waitOwed: WAIT?
    /// The earliest deadline a timer is currently scheduled for.
    private var scheduledTimer: NIODeadline?
    /// Where the command after the last withdrawn one is (``withdraw(where:)``).
    private var withdrawHint: Int?
    /// How many of ``pending`` are withdrawn.
    private var withdrawnCount = 0
    /// How many of ``pending`` are group-commit `WAIT`s (at most one: see ``takeOwedWait()``).
    private var waitsPending = 0
    /// The deadline of the `WAIT` in flight: a command written behind it runs only after it.
    package private(set) var waitDeadline: NIODeadline?
    let handshake: HandshakeConfiguration

    package init(handshake: HandshakeConfiguration) {
        self.handshake = handshake
    }

    /// Number of commands awaiting a reply.
    package var pendingCount: Int { self.pending.count - self.withdrawnCount }

    /// Number of commands awaiting a reply that may still change data: not the group-commit
    /// `WAIT`s (a command sent after one on another connection cannot run before anything it
    /// covers: those ran already).
    package var unrunCount: Int { self.pendingCount - self.waitsPending }

    /// The negotiated protocol version once ready.
    package var protocolVersion: Int? {
        if case .ready(let version, _) = self.state { return version }
        return nil
    }

    package var isReady: Bool { self.protocolVersion != nil }

    // MARK: Handshake

    package enum HandshakeAction {
        case send(HandshakeCommand)
        case succeeded(protocolVersion: Int)
        case failed(any Error)
        case none
    }

    /// The channel became active: start the handshake.
    package mutating func channelActive() -> HandshakeAction {
        guard case .initialized = self.state else { return .none }
        switch self.handshake.preference {
        case .resp3WithFallback:
            self.state = .handshaking(current: .hello, remaining: self.handshake.stepsAfterHello, protocolVersion: 3)
            return .send(.hello)
        case .resp2:
            return self.advanceHandshake(remaining: self.handshake.resp2Steps, protocolVersion: 2)
        }
    }

    private mutating func advanceHandshake(remaining: [HandshakeCommand], protocolVersion: Int) -> HandshakeAction {
        var remaining = remaining
        if remaining.isEmpty {
            self.state = .ready(protocolVersion: protocolVersion, subscribeMode: false)
            return .succeeded(protocolVersion: protocolVersion)
        }
        let next = remaining.removeFirst()
        self.state = .handshaking(current: next, remaining: remaining, protocolVersion: protocolVersion)
        return .send(next)
    }

    /// The handshake did not finish in time.
    package mutating func handshakeTimedOut() -> HandshakeAction {
        guard case .handshaking = self.state else { return .none }
        self.state = .closing
        return .failed(RedisClientError.connectTimeout)
    }

    // MARK: Commands

    package enum EnqueueAction {
        /// Write the command; if `scheduleTimer` is set, schedule ``timerFired(now:)`` at that deadline.
        case write(scheduleTimer: NIODeadline?)
        /// Fail the command right away.
        case fail(any Error)
    }

    /// A command is about to be written.
    package mutating func enqueue(_ promise: Promise, kind: PendingKind = .command, deadline: NIODeadline?) -> EnqueueAction {
        switch self.state {
        case .ready(let version, let subscribeMode):
            if case .subscription = kind, !subscribeMode {
                self.state = .ready(protocolVersion: version, subscribeMode: true)
            }
            self.pending.append(Pending(promise: promise, kind: kind, deadline: deadline))
            if case .replicaWait = kind {
                self.waitsPending += 1
                self.waitDeadline = deadline
            }
            if case .replicatedWrite(let wait) = kind {
                self.waitOwed = WAIT(
                    replicas: max(wait.replicas, self.waitOwed?.replicas ?? 0), timeout: max(wait.timeout, self.waitOwed?.timeout ?? .zero))
            }
            var schedule: NIODeadline? = nil
            if let deadline, self.scheduledTimer.map({ deadline < $0 }) ?? true {
                self.scheduledTimer = deadline
                schedule = deadline
            }
            return .write(scheduleTimer: schedule)
        case .initialized, .handshaking:
            return .fail(RedisClientError.notConnected)
        case .closing, .closed:
            return .fail(RedisClientError(.notConnected, detail: "the connection closed before the command was written; not sent"))
        }
    }

    /// The command of `promise` was not written: its write failed (the socket closed with it
    /// still queued, so Redis never got all of its bytes). It no longer waits for a reply, and
    /// whoever sent it may send it again elsewhere. `false` when it is not pending (answered, or
    /// failed with everything else already). The unwritten commands are the newest: searched
    /// from the end; NIO fails them oldest first, so the next one is usually right after the last
    /// one (tried first). Withdrawn entries are marked, not removed (a removal in the middle
    /// moves every later one): withdrawing k of them is O(k).
    package mutating func withdraw(where isIt: (Promise) -> Bool) -> Bool {
        if let hint = self.withdrawHint, hint < self.pending.count {
            let index = self.pending.index(self.pending.startIndex, offsetBy: hint)
            if !self.pending[index].withdrawn, isIt(self.pending[index].promise) {
                self.pending[index].withdrawn = true
                self.withdrawnCount += 1
                self.withdrawHint = hint + 1
                return true
            }
        }
        var index = self.pending.endIndex
        while index != self.pending.startIndex {
            index = self.pending.index(before: index)
            if !self.pending[index].withdrawn, isIt(self.pending[index].promise) {
                self.pending[index].withdrawn = true
                self.withdrawnCount += 1
                self.withdrawHint = self.pending.distance(from: self.pending.startIndex, to: index) + 1
                return true
            }
        }
        return false
    }

    /// Drops withdrawn entries from the head (none is answered; replies match the rest).
    private mutating func skipWithdrawn() {
        while let first = self.pending.first, first.withdrawn {
            self.pending.removeFirst()
            self.withdrawnCount -= 1
        }
    }

    /// The connection is about to flush (or its `WAIT` was answered): the `WAIT` to write (and
    /// enqueue as `.replicaWait`) behind the replicated writes since the last one, if any, and
    /// none while one is in flight. Redis runs a connection's commands in order: with replicas
    /// down every `WAIT` takes its whole timeout, and one written at every flush queued up, each
    /// behind the other, until the commands behind them passed their deadline (the connection
    /// then closed, failing writes that were stored). The one owed covers what was written
    /// meanwhile.
    /// Whether replicated writes wait for a `WAIT` not written yet.
    package var owesWait: Bool { self.waitOwed != nil }

    package mutating func takeOwedWait() -> WAIT? {
        guard self.waitsPending == 0, let wait = self.waitOwed else { return nil }
        self.waitOwed = nil
        return wait
    }

    // MARK: Replies

    package enum ReceiveAction {
        case none
        case sendHandshake(HandshakeCommand)
        case handshakeSucceeded(protocolVersion: Int)
        /// Fail the connect attempt and close the channel.
        case handshakeFailed(any Error)
        case succeed(Promise, RESPToken)
        case fail(Promise, any Error)
        /// A published message arrived on a subscription.
        case deliver(RedisPubSubMessage)
        /// The server ended a subscription by itself (a `sunsubscribe` push when a Redis Cluster
        /// slot moves away from the node): the name must be subscribed again elsewhere.
        case unsubscribedByServer(RedisSubscriptionKind, String)
        /// Fail all these promises and close the channel.
        case failAllAndClose([Promise], any Error)
        /// A `WAIT`'s count arrived: complete the replicated writes it covered (and the `WAIT`).
        case complete([(Promise, Result<RESPToken, any Error>)])
    }

    /// A complete RESP value arrived.
    package mutating func receivedToken(_ token: RESPToken) -> ReceiveAction {
        switch self.state {
        case .initialized:
            self.state = .closing
            return .failAllAndClose([], RedisClientError.unsolicitedReply)
        case .handshaking(let current, let remaining, let version):
            return self.receivedHandshakeReply(token, current: current, remaining: remaining, version: version)
        case .ready(let version, let subscribeMode):
            return self.receivedReply(token, protocolVersion: version, subscribeMode: subscribeMode)
        case .closing, .closed:
            return .none
        }
    }

    private mutating func receivedHandshakeReply(
        _ token: RESPToken,
        current: HandshakeCommand,
        remaining: [HandshakeCommand],
        version: Int
    ) -> ReceiveAction {
        if case .push = token.value { return .none }  // e.g. early invalidation pushes
        let action: HandshakeAction
        if let error = Self.serverError(token) {
            if current == .hello, !error.isAuthenticationError {
                // The server does not speak RESP3 (or refuses HELLO): fall back to RESP2.
                action = self.advanceHandshake(remaining: self.handshake.resp2Steps, protocolVersion: 2)
            } else {
                self.state = .closing
                action = .failed(error)
            }
        } else {
            action = self.advanceHandshake(remaining: remaining, protocolVersion: version)
        }
        switch action {
        case .send(let command): return .sendHandshake(command)
        case .succeeded(let version): return .handshakeSucceeded(protocolVersion: version)
        case .failed(let error): return .handshakeFailed(error)
        case .none: return .none
        }
    }

    private mutating func receivedReply(_ token: RESPToken, protocolVersion: Int, subscribeMode: Bool) -> ReceiveAction {
        // Out-of-band messages: RESP3 pushes, and in RESP2 subscribe mode arrays shaped like pushes.
        var pushElements: [RESPToken]? = nil
        switch token.value {
        case .push(let elements):
            pushElements = Array(elements)
        case .array(let elements) where subscribeMode && protocolVersion == 2 && elements.count >= 3:
            let all = Array(elements)
            if let kind = try? String(fromRESP: all[0]), Self.isPubSubKind(kind) { pushElements = all }
        default:
            break
        }
        if let elements = pushElements {
            return self.receivedPush(elements, token: token)
        }
        self.skipWithdrawn()
        // A health `PING` written behind a `SUNSUBSCRIBE` of a moving slot (see below): the stray
        // `MOVED` answered the `PING`, and its `PONG` comes next. It never answers a subscription
        // command (confirmed by a push, refused by an error): taken as one, it recorded the next
        // `SSUBSCRIBE` as confirmed. Dropped, before or with nothing pending.
        if subscribeMode, Self.isPong(token), self.pending.first.map({ if case .subscription = $0.kind { true } else { false } }) ?? true {
            return .none
        }
        guard let head = self.pending.popFirst() else {
            // A subscriber's `SUNSUBSCRIBE` of a channel whose slot just moved away: the server's
            // own `sunsubscribe` push came first and was taken as its confirmation, then its
            // reply (`MOVED`) finds nothing pending (valkey-io/valkey#1066). Ignored: closing
            // the connection would lose what its other channels are sent until it is back.
            if subscribeMode, Self.serverError(token) != nil { return .none }
            self.state = .closing
            return .failAllAndClose([], RedisClientError.unsolicitedReply)
        }
        switch head.kind {
        case .replicaWait:
            self.waitsPending -= 1
            if self.waitsPending == 0 { self.waitDeadline = nil }
            return .complete(self.releaseHeld(waitReply: token) + [(head.promise, .success(token))])
        case .replicatedWrite(let wait):
            if let error = Self.serverError(token) { return .fail(head.promise, error) }
            self.held.append(HeldWrite(promise: head.promise, reply: token, minimumReplicas: wait.replicas))
            return .none
        case .command, .subscription:
            if let error = Self.serverError(token) {
                return .fail(head.promise, error)
            }
            return .succeed(head.promise, token)
        }
    }

    /// `PING`'s reply: `+PONG`, or in RESP2 subscribe mode `[pong, <message>]`.
    static func isPong(_ token: RESPToken) -> Bool {
        switch token.value {
        case .simpleString(let text): return String(buffer: text).uppercased() == "PONG"
        case .array(let elements):
            let all = Array(elements)
            return all.count == 2 && (try? String(fromRESP: all[0]))?.lowercased() == "pong"
        default: return false
        }
    }

    /// The held writes' outcomes, given their `WAIT`'s reply: each succeeds when at least its
    /// own number of replicas acknowledged.
    private mutating func releaseHeld(waitReply: RESPToken) -> [(Promise, Result<RESPToken, any Error>)] {
        let writes = self.held
        self.held.removeAll(keepingCapacity: true)
        // The writes succeeded on the primary: whatever went wrong with their WAIT (an ACL that
        // refuses it, a replica that cannot run it), they are stored, their replication unknown.
        // Not a plain failure, which would tell the caller nothing was stored.
        if let error = Self.serverError(waitReply) {
            let failure = RedisClientError(.notReplicated, detail: "stored on the primary, but WAIT failed (\(error)): replication unknown")
            return writes.map { ($0.promise, .failure(failure)) }
        }
        guard let count = try? Int(fromRESP: waitReply) else {
            let failure = RedisClientError(.notReplicated, detail: "stored on the primary, but WAIT replied \(waitReply), not an integer: replication unknown")
            return writes.map { ($0.promise, .failure(failure)) }
        }
        return writes.map { write in
            guard count >= write.minimumReplicas else {
                let detail = "stored on the primary, but acknowledged by \(count) of the \(write.minimumReplicas) replicas required within the wait"
                return (write.promise, .failure(RedisClientError(.notReplicated, detail: detail)))
            }
            return (write.promise, .success(write.reply))
        }
    }

    private static func isPubSubKind(_ kind: String) -> Bool {
        switch kind.lowercased() {
        case "message", "pmessage", "smessage", "subscribe", "unsubscribe", "psubscribe", "punsubscribe", "ssubscribe", "sunsubscribe":
            return true
        default:
            return false
        }
    }

    private mutating func receivedPush(_ elements: [RESPToken], token: RESPToken) -> ReceiveAction {
        if let message = RedisPubSubMessage(elements: elements) {
            return .deliver(message)
        }
        guard let first = elements.first, let kind = (try? String(fromRESP: first))?.lowercased() else { return .none }
        // A subscription confirmation: count it against the head command if its kind and name
        // match. A server-side `sunsubscribe` of another channel (its slot moved) while a
        // `SUNSUBSCRIBE` waits was taken as its confirmation, and that channel was not reported
        // lost (it stayed silent until the next reconnect).
        self.skipWithdrawn()
        let name = elements.count >= 2 ? try? String(fromRESP: elements[1]) : nil
        guard let head = self.pending.first, case .subscription(let confirmation, var names, let confirmed) = head.kind,
            confirmation == kind, let name, let index = Self.awaitedIndex(of: name, in: names, from: confirmed)
        else {
            // Unsolicited: a server-side unsubscribe (slot migration), or another push (invalidate, ...).
            if elements.count >= 2, let name = try? String(fromRESP: elements[1]), let kind = Self.unsubscribeKind(kind) {
                return .unsubscribedByServer(kind, name)
            }
            return .none
        }
        // Redis confirms in the order the names were sent: the next one, in constant time (a
        // re-subscribe after a reconnect sends every name in one command: tens of thousands of
        // confirmations). Out of order, the name found later swaps places with the next (a copy).
        if index != confirmed { names.swapAt(index, confirmed) }
        if confirmed + 1 < names.count {
            self.pending[self.pending.startIndex].kind = .subscription(confirmation: confirmation, names: names, confirmed: confirmed + 1)
            return .none
        }
        self.pending.removeFirst()
        return .succeed(head.promise, token)
    }

    /// Where `name` is among the names not confirmed yet (from `start` on), comparing bytes
    /// as Redis does (Swift's `==` takes canonically equivalent strings for one).
    private static func awaitedIndex(of name: String, in names: [String], from start: Int) -> Int? {
        guard start < names.count else { return nil }
        if names[start].utf8.elementsEqual(name.utf8) { return start }
        return names[(start + 1)...].firstIndex { $0.utf8.elementsEqual(name.utf8) }
    }

    private static func unsubscribeKind(_ kind: String) -> RedisSubscriptionKind? {
        switch kind {
        case "unsubscribe": .channel
        case "punsubscribe": .pattern
        case "sunsubscribe": .shardChannel
        default: nil
        }
    }

    static func serverError(_ token: RESPToken) -> RedisServerError? {
        switch token.value {
        case .simpleError(let b), .bulkError(let b): return RedisServerError(message: String(buffer: b))
        default: return nil
        }
    }

    // MARK: Timeouts

    package enum TimerAction {
        case none
        case reschedule(NIODeadline)
        case failAllAndClose([Promise], any Error)
    }

    /// A scheduled command timer fired.
    package mutating func timerFired(now: NIODeadline) -> TimerAction {
        self.scheduledTimer = nil
        guard case .ready = self.state else { return .none }
        var earliest: NIODeadline? = nil
        for entry in self.pending where !entry.withdrawn {
            guard let deadline = entry.deadline else { continue }
            if deadline <= now {
                // The reply stream is now out of sync: fail everything and close.
                let promises = self.drainPending()
                self.state = .closing
                return .failAllAndClose(promises, RedisClientError.commandTimeout)
            }
            earliest = earliest.map { min($0, deadline) } ?? deadline
        }
        guard let earliest else { return .none }
        self.scheduledTimer = earliest
        return .reschedule(earliest)
    }

    // MARK: Closing

    package enum CloseAction {
        case none
        /// Fail these promises; if `handshakeError` is set, also fail the connect attempt.
        case failAll([Promise], any Error, handshakeError: (any Error)?)
    }

    /// The channel closed.
    package mutating func channelInactive() -> CloseAction {
        let wasHandshaking: Bool
        if case .handshaking = self.state { wasHandshaking = true } else { wasHandshaking = false }
        if case .initialized = self.state { self.state = .closed; return .failAll([], RedisClientError.connectionClosed, handshakeError: RedisClientError.connectionClosed) }
        self.state = .closed
        let promises = self.drainPending()
        return .failAll(promises, RedisClientError.connectionClosed, handshakeError: wasHandshaking ? RedisClientError.connectionClosed : nil)
    }

    /// An error was caught in the pipeline (e.g. a parse error); the channel must be closed.
    package mutating func errorCaught(_ error: any Error) -> CloseAction {
        switch self.state {
        case .closed, .closing:
            return .none
        case .handshaking, .initialized:
            self.state = .closing
            return .failAll(self.drainPending(), error, handshakeError: error)
        case .ready:
            self.state = .closing
            return .failAll(self.drainPending(), error, handshakeError: nil)
        }
    }

    private mutating func drainPending() -> [Promise] {
        let promises = self.held.map(\.promise) + self.pending.lazy.filter { !$0.withdrawn }.map(\.promise)
        self.pending.removeAll()
        self.withdrawnCount = 0
        self.waitsPending = 0
        self.waitDeadline = nil
        self.withdrawHint = nil
        self.held.removeAll()
        self.waitOwed = nil
        return promises
    }
}
