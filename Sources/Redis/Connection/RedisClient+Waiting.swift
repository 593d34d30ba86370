import NIOCore
import NIOPosix

/// A command held while the command connection is down (``RedisClient/send(_:)``).
struct WaitingCommand: Sendable {
    let id: UInt64
    /// The loop that sent it, with ``RedisConfiguration/commandConnectionPerEventLoop``.
    let loop: ObjectIdentifier?
    /// A command a connection could not write (``RedisClient/holdUnsent(_:from:)``): it was sent
    /// before every command that is only waiting, so it waits ahead of them.
    let unsent: Bool
    /// A blocking command: taken from the queue, it is not counted in ``RedisClient``'s
    /// `drainedOnShared` or `drainedOnOwn` (its reply may take long, and every loop would wait for it).
    var blocking = false
    /// Its ticket (the queue's unsent ones are in ticket order) and when it stops waiting.
    let place: CommandPlace
    /// Writes the command (at its `place`) on the connection and completes the caller's
    /// promise from its reply; on the shared connection, counted among its loop's commands there.
    let writer: @Sendable (RedisConnection, FallbackCount?, CommandPlace) -> EventLoopFuture<Void>
    /// Fails the caller's promise.
    let fail: @Sendable (any Error) -> Void

    /// Writes the command on `connection`; `count`: see ``writer``.
    func write(on connection: RedisConnection, count: FallbackCount?) -> EventLoopFuture<Void> {
        self.writer(connection, count, self.place)
    }
}

extension RedisClient {
    /// Holds `command` until the shared command connection is back (written then, after every
    /// command held before it), for at most ``RedisConfiguration/reconnectWait``. Before
    /// ``RedisClient/start()`` no connection is on its way: it fails at once.
    func wait<Command: RedisCommand>(_ command: Command, from loop: (any EventLoop)?) -> EventLoopFuture<Command.Response> {
        let timerLoop = loop ?? self.eventLoopGroup.any()
        let promise = timerLoop.makePromise(of: Command.Response.self)
        let key = loop.map { ObjectIdentifier($0) }
        let refused = self.hold(
            from: key, timerLoop: timerLoop, unsent: nil, uncounting: nil, blocking: command.blockingTimeout != nil,
            write: { connection, count, place in
                let reply = connection.send(command, origin: count, place: place)
                reply.cascade(to: promise)
                return reply.map { _ in }
            },
            fail: { promise.fail($0) })
        if let refused { promise.fail(refused) }
        return promise.futureResult
    }

    /// Holds `command`, which a command connection could not write at all (it closed with the
    /// command still queued: Redis never got it), like a command sent while no connection is up
    /// (``wait(_:from:)``), behind the commands held already. `key`: the loop whose command it
    /// is, with ``RedisConfiguration/commandConnectionPerEventLoop``. `false` when it cannot wait.
    /// A command of a loop sent on the shared connection no longer counts there once it waits
    /// (it may go on its loop's own connection next).
    func holdUnsent(_ command: RedisOutboundCommand, from key: ObjectIdentifier?) -> Bool {
        let refused = self.hold(
            from: key, timerLoop: command.promise.futureResult.eventLoop, unsent: command.place, uncounting: command.origin,
            blocking: command.blocking,
            write: { connection, count, place in
                var command = command
                command.origin = count
                command.place = place
                return connection.resend(command).map { _ in }
            },
            fail: { command.promise.fail($0) })
        return refused == nil
    }

    /// Queues a held command with its expiry; the error it fails with at once when it cannot
    /// wait (no wait configured, not started, shut down, or too many waiting). An `unsent` one
    /// the client took before a held command was refused (``expireWaiting(from:)``) fails
    /// at once instead (through `fail`): it may have been sent after the refused one.
    ///
    /// An `unsent` one (at its place; `nil`: it only waits, and takes the next ticket) goes ahead of
    /// the commands that only wait: it was sent before any of them (directly while none waited,
    /// or in a batch taken from the queue). Among the unsent ones it goes in ticket order: a
    /// connection hands its unwritten commands over in order, but two may do it at once (the
    /// shared one refusing a batch of older ones taken from the queue while a loop's own hands
    /// back newer ones).
    private func hold(
        from key: ObjectIdentifier?, timerLoop: any EventLoop, unsent: CommandPlace?, uncounting count: FallbackCount?, blocking: Bool,
        write: @escaping @Sendable (RedisConnection, FallbackCount?, CommandPlace) -> EventLoopFuture<Void>,
        fail: @escaping @Sendable (any Error) -> Void
    ) -> (any Error)? {
        let wait = self.configuration.reconnectWait
        let (started, stopped) = self.state.withLockedValue { ($0.started, $0.waitingStopped) }
        if stopped { return Self.stoppedWaiting }
        guard wait > .zero, started else { return RedisClientError.notConnected }
        let limit = self.configuration.maximumWaitingCommands
        let held = self.state.withLockedValue { state -> Result<(id: UInt64, until: NIODeadline), RedisClientError>? in
            // An unsent one was admitted once already (and refusing it would leave a gap).
            guard !state.isShutdown, unsent != nil || (state.waiting?.count ?? 0) < limit else { return nil }
            if let ticket = unsent?.ticket, ticket != 0, ticket <= state.refusedThrough {
                if let count { Self.uncount(count, &state) }
                return .failure(RedisClientError(.notConnected, detail: "a command sent before it was refused (not connected in time); not sent"))
            }
            state.waitingIDs &+= 1
            let id = state.waitingIDs
            if state.waiting == nil { state.waiting = CircularBuffer(initialCapacity: 16) }
            // Held before, it keeps its deadline.
            let until = unsent?.heldUntil ?? .now() + wait
            if var place = unsent {
                // The unsent ones are the queue's first `unsentAhead`, in ticket order (0: not
                // the client's, the newest).
                if place.ticket == 0 {
                    state.tickets &+= 1
                    place.ticket = state.tickets
                }
                place.heldUntil = until
                let command = WaitingCommand(id: id, loop: key, unsent: true, blocking: blocking, place: place, writer: write, fail: fail)
                Self.insertUnsent(command, into: &state.waiting!, ahead: state.unsentAhead)
                state.unsentAhead += 1
            } else {
                state.tickets &+= 1
                let place = CommandPlace(ticket: state.tickets, heldUntil: until)
                let command = WaitingCommand(id: id, loop: key, unsent: false, blocking: blocking, place: place, writer: write, fail: fail)
                state.waiting!.append(command)
            }
            if let key { state.waitingFromLoop[key, default: 0] += 1 }
            if let count { Self.uncount(count, &state) }
            return .success((id, until))
        }
        let id: UInt64
        let until: NIODeadline
        switch held {
        case .success(let admitted): (id, until) = admitted
        case .failure(let error):
            fail(error)
            return nil
        case nil:
            let shutdown = self.state.withLockedValue { $0.isShutdown }
            return shutdown
                ? RedisClientError.shutdown
                : RedisClientError(.queueFull, detail: "\(limit) commands already wait for the command connection; not sent")
        }
        timerLoop.scheduleTask(deadline: until) {
            let error = RedisClientError(.notConnected, detail: "not connected within \(wait.nanoseconds / 1_000_000) ms; not sent")
            for expired in self.expireWaiting(from: id) { expired.fail(error) }
        }
        // If a connection came back while this was being queued (or is up, and only another
        // connection failed to write it), nothing else would write it: the shared one, or
        // while it is gone the loop's own.
        let (shared, own) = self.state.withLockedValue { state in
            (
                state.commandConnection.flatMap { $0.isActive ? $0 : nil },
                key.flatMap { state.commandConnection == nil ? state.loopConnections[$0] : nil }.flatMap { $0.isActive ? $0 : nil }
            )
        }
        if let shared {
            self.writeWaiting(on: shared)
        } else if let own, let key {
            self.writeLoopsWaiting(key, on: own)
        }
        return nil
    }

    /// The command `id` waited its time: it fails, and so does every command held behind it (in
    /// the order they were sent), so that none is sent after an earlier one was refused (a
    /// session's `SEND`s, or a pipelined client's, would otherwise be published with a gap).
    /// So does every command taken until now that a connection hands back later (one still on
    /// its way to a connection that is closing: ``State/refusedThrough``).
    private func expireWaiting(from id: UInt64) -> [WaitingCommand] {
        self.state.withLockedValue { state -> [WaitingCommand] in
            // Not found: written (or failed) already.
            guard let waiting = state.waiting, let index = waiting.firstIndex(where: { $0.id == id }) else { return [] }
            state.refusedThrough = state.tickets
            let expired = Array(waiting[index...])
            state.waiting!.removeSubrange(index...)
            state.unsentAhead = min(state.unsentAhead, state.waiting!.count)
            Self.uncountWaiting(expired, &state)
            return expired
        }
    }

    /// Inserts `command` among the first `ahead` (the unsent ones, in ticket order), after those
    /// whose ticket is not above its own.
    static func insertUnsent(_ command: WaitingCommand, into waiting: inout CircularBuffer<WaitingCommand>, ahead: Int) {
        var (low, high) = (0, ahead)
        while low < high {
            let middle = (low + high) / 2
            if waiting[waiting.index(waiting.startIndex, offsetBy: middle)].place.ticket <= command.place.ticket {
                low = middle + 1
            } else {
                high = middle
            }
        }
        waiting.insert(command, at: waiting.index(waiting.startIndex, offsetBy: low))
    }

    /// `commands` left the queue: their loops hold that many fewer (``State/waitingFromLoop``).
    static func uncountWaiting(_ commands: [WaitingCommand], _ state: inout State) {
        for case let key? in commands.lazy.map(\.loop) {
            let left = state.waitingFromLoop[key, default: 1] - 1
            state.waitingFromLoop[key] = left > 0 ? left : nil
        }
    }

    /// Whether every held command is `key`'s loop's.
    static func onlyLoopWaits(_ key: ObjectIdentifier, _ state: State) -> Bool {
        (state.waiting?.count ?? 0) == state.waitingFromLoop[key, default: 0]
    }

    /// Takes the held commands of `key`'s loop out of the queue, in order (its own connection is
    /// back before the shared one: they go there).
    static func takeWaiting(of key: ObjectIdentifier, _ state: inout State) -> [WaitingCommand] {
        guard let waiting = state.waiting, state.waitingFromLoop.removeValue(forKey: key) != nil else { return [] }
        var mine: [WaitingCommand] = []
        var others = CircularBuffer<WaitingCommand>(initialCapacity: waiting.count)
        for command in waiting {
            if command.loop == key { mine.append(command) } else { others.append(command) }
        }
        state.waiting = others
        state.unsentAhead = others.prefix(while: \.unsent).count
        // Counted in flight (``writeDrained(_:on:)``), on this loop's own connection.
        let counted = mine.count { !$0.blocking }
        if counted > 0 {
            state.drainedOnOwn = (key, (state.drainedOnOwn?.count ?? 0) + counted)
        }
        return mine
    }

    /// `key`'s own connection is back (or the shared one gone): on its loop, writes what the loop
    /// holds there, unless the shared connection is there (then it writes them, in order with
    /// the rest).
    func writeLoopsWaiting(_ key: ObjectIdentifier, on connection: RedisConnection) {
        let id = ObjectIdentifier(connection)
        let start = self.state.withLockedValue { state -> Bool in
            guard state.loopDrainsScheduled[key] != id else { return false }
            state.loopDrainsScheduled[key] = id
            return true
        }
        if start { connection.channel.eventLoop.execute { self.writeLoopsWaitingNow(key, on: connection) } }
    }

    private func writeLoopsWaitingNow(_ key: ObjectIdentifier, on connection: RedisConnection) {
        let held = self.state.withLockedValue { state -> [WaitingCommand]? in
            // The shared one gone (not just closing: what it could not write is handed back
            // only as it closes, and must not be overtaken), with nothing on its way to it any
            // more (else: again in a moment).
            // Nor while commands taken from the queue are in flight on another connection.
            if state.loopConnections[key] === connection, connection.isActive, state.commandConnection == nil, state.waitingFromLoop[key] != nil,
                Self.transitPending(&state) || Self.drainedElsewhere(than: key, state)
            {
                return nil
            }
            if state.loopDrainsScheduled[key] == ObjectIdentifier(connection) { state.loopDrainsScheduled[key] = nil }
            // Only when no other loop's commands wait (else they all go, in order, on the
            // shared connection once it is back).
            guard state.loopConnections[key] === connection, connection.isActive, state.commandConnection == nil, Self.onlyLoopWaits(key, state)
            else { return [] }
            return Self.takeWaiting(of: key, &state)
        }
        guard let held else {
            connection.channel.eventLoop.scheduleTask(in: .milliseconds(1)) { self.writeLoopsWaitingNow(key, on: connection) }
            return
        }
        self.writeDrained(held, on: connection)
    }

    /// Whether commands taken from the queue are in flight on a connection other than `key`'s
    /// loop's own: its commands could run before them there.
    static func drainedElsewhere(than key: ObjectIdentifier, _ state: State) -> Bool {
        state.drainedOnShared > 0 || (state.drainedOnOwn.map { $0.loop != key } ?? false)
    }

    /// Writes what ``takeWaiting(of:_:)`` took on the loop's own `connection`, each counted in
    /// flight until answered (but a blocking one).
    func writeDrained(_ held: [WaitingCommand], on connection: RedisConnection) {
        for command in held {
            guard !command.blocking else {
                _ = command.write(on: connection, count: nil)
                continue
            }
            let count = FallbackCount(loop: nil, drained: .own)
            command.write(on: connection, count: count).whenComplete { _ in self.answered(count) }
        }
    }

    /// Writes the held commands on `connection`, on its event loop, in order, one batch per loop
    /// task (so that the connection flushes and reads replies in between) until none is left;
    /// commands sent meanwhile queue behind them, and once none is left go directly again.
    func writeWaiting(on connection: RedisConnection) {
        let id = ObjectIdentifier(connection)
        let start = self.state.withLockedValue { state -> Bool in
            guard state.commandConnection === connection, state.drainScheduled != id else { return false }
            state.drainScheduled = id
            return true
        }
        if start { connection.channel.eventLoop.execute { self.writeWaitingBatch(on: connection) } }
    }

    private func writeWaitingBatch(on connection: RedisConnection) {
        let id = ObjectIdentifier(connection)
        let batch = self.state.withLockedValue { state -> [(WaitingCommand, FallbackCount)]? in
            // Only on the current connection: a newer one writes them once it is up.
            guard let waiting = state.waiting, !waiting.isEmpty, state.commandConnection === connection, connection.isActive else {
                if state.waiting?.isEmpty == true, state.commandConnection === connection { state.waiting = nil }
                if state.drainScheduled == id { state.drainScheduled = nil }
                return []
            }
            // Writes still on their way to the shared connection that closed may be refused
            // there, and held ahead of these; commands taken from the queue may be in flight on
            // a loop's own connection: again in a moment.
            if Self.transitPending(&state) || state.drainedOnOwn != nil { return nil }
            // A loop whose commands are queued may have earlier ones in flight on its own
            // connection (sent before anything waited, or queued behind another loop's while it
            // was up), which they could overtake: the queue goes up to its first one, the rest
            // in a moment.
            let taken = Self.writablePrefix(of: waiting, state)
            if taken == 0 { return nil }
            let batch = Array(waiting.prefix(taken))
            state.waiting!.removeFirst(taken)
            state.unsentAhead = max(0, state.unsentAhead - taken)
            Self.uncountWaiting(batch, &state)
            // Written on the shared connection: each loop's own waits for the replies, and so
            // do the other loops' own (but not for a blocking command's).
            state.drainedOnShared += batch.count { !$0.blocking }
            return batch.map { command in
                if let key = command.loop { state.fallbacksInFlight[key, default: 0] += 1 }
                return (command, FallbackCount(loop: command.loop, drained: command.blocking ? nil : .shared))
            }
        }
        guard let batch else {
            connection.channel.eventLoop.scheduleTask(in: .milliseconds(1)) { self.writeWaitingBatch(on: connection) }
            return
        }
        if batch.isEmpty { return }
        for (command, count) in batch {
            command.write(on: connection, count: count).whenComplete { _ in self.answered(count) }
        }
        connection.channel.eventLoop.execute { self.writeWaitingBatch(on: connection) }
    }

    /// How many of the queue's first commands can go on the shared connection now: up to the
    /// first of a loop whose own connection owes replies.
    static func writablePrefix(of waiting: CircularBuffer<WaitingCommand>, _ state: State) -> Int {
        func owes(_ key: ObjectIdentifier) -> Bool { state.loopConnections[key]?.owesReplies == true }
        guard state.waitingFromLoop.keys.contains(where: owes) else { return waiting.count }
        return waiting.prefix { command in command.loop.map { !owes($0) } ?? true }.count
    }

    /// Whether a shared command connection that closed may still have writes on their way to
    /// its loop (see ``RedisConnection/hasWritesInTransit``): commands held now must not be
    /// written elsewhere before those are refused and held ahead of them.
    static func transitPending(_ state: inout State) -> Bool {
        if state.closedShared.isEmpty { return false }
        state.closedShared.removeAll { !$0.hasWritesInTransit }
        return !state.closedShared.isEmpty
    }

    /// A command counted in flight was answered.
    func answered(_ count: FallbackCount) {
        guard count.uncount() else { return }
        self.state.withLockedValue { state in Self.uncounted(count, &state) }
    }

    /// A command counted in flight was answered, or is held again: uncounted, once.
    static func uncount(_ count: FallbackCount, _ state: inout State) {
        if count.uncount() { Self.uncounted(count, &state) }
    }

    private static func uncounted(_ count: FallbackCount, _ state: inout State) {
        if let key = count.loop {
            let left = state.fallbacksInFlight[key, default: 1] - 1
            state.fallbacksInFlight[key] = left > 0 ? left : nil
        }
        switch count.drained {
        case .shared?: state.drainedOnShared = max(0, state.drainedOnShared - 1)
        case .own?: state.drainedOnOwn = state.drainedOnOwn.flatMap { $0.count > 1 ? ($0.loop, $0.count - 1) : nil }
        case nil: break
        }
    }

    /// Commands no longer wait for a connection: those held fail now, later ones at once, with
    /// ``RedisClientError/notConnected`` (as with a ``RedisConfiguration/reconnectWait`` of
    /// zero). For a graceful stop: what waits would otherwise be cut off unanswered when the
    /// caller goes (an HTTP request whose connection closes). Commands still go out while a
    /// connection is up.
    public func stopWaiting() {
        self.state.withLockedValue { $0.waitingStopped = true }
        self.failWaiting(Self.stoppedWaiting)
    }

    static let stoppedWaiting = RedisClientError(.notConnected, detail: "not connected, and no longer waiting (stopping); not sent")

    /// Fails every held command (at shutdown).
    func failWaiting(_ error: any Error) {
        let waiting = self.state.withLockedValue { state -> CircularBuffer<WaitingCommand> in
            defer {
                state.waiting = nil
                state.waitingFromLoop = [:]
                state.unsentAhead = 0
            }
            return state.waiting ?? []
        }
        for command in waiting { command.fail(error) }
    }
}

extension RedisClient {
    /// How many commands wait for the command connection now (tests, metrics).
    package var waitingCommands: Int { self.state.withLockedValue { $0.waiting?.count ?? 0 } }

    /// Whether the queue is open: commands wait, or it emptied and the connection that took
    /// them has not closed it yet (tests).
    package var queueOpen: Bool { self.state.withLockedValue { $0.waiting != nil } }
}
