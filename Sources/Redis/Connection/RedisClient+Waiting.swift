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
    /// Writes the command on the connection and completes the caller's promise from its reply;
    /// on the shared connection, counted among its loop's commands there.
    let write: @Sendable (RedisConnection, FallbackCount?) -> EventLoopFuture<Void>
    /// Fails the caller's promise.
    let fail: @Sendable (any Error) -> Void
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
            from: key, timerLoop: timerLoop, unsent: false, uncounting: nil,
            write: { connection, count in
                let reply = connection.send(command, origin: count)
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
            from: key, timerLoop: command.promise.futureResult.eventLoop, unsent: true, uncounting: command.origin,
            write: { connection, count in
                var command = command
                command.origin = count
                return connection.resend(command).map { _ in }
            },
            fail: { command.promise.fail($0) })
        return refused == nil
    }

    /// Queues a held command with its expiry; the error it fails with at once when it cannot
    /// wait (no wait configured, not started, shut down, or too many waiting).
    ///
    /// An `unsent` one goes ahead of the commands that only wait, behind the unsent ones queued
    /// before it: it was sent before any of them (directly while none waited, or in a batch
    /// taken from the queue), and a connection hands its unwritten commands over in order.
    private func hold(
        from key: ObjectIdentifier?, timerLoop: any EventLoop, unsent: Bool, uncounting count: FallbackCount?,
        write: @escaping @Sendable (RedisConnection, FallbackCount?) -> EventLoopFuture<Void>,
        fail: @escaping @Sendable (any Error) -> Void
    ) -> (any Error)? {
        let wait = self.configuration.reconnectWait
        guard wait > .zero, self.state.withLockedValue({ $0.started }) else { return RedisClientError.notConnected }
        let limit = self.configuration.maximumWaitingCommands
        let id = self.state.withLockedValue { state -> UInt64? in
            // An unsent one was admitted once already (and refusing it would leave a gap).
            guard !state.isShutdown, unsent || (state.waiting?.count ?? 0) < limit else { return nil }
            state.waitingIDs &+= 1
            let id = state.waitingIDs
            if state.waiting == nil { state.waiting = CircularBuffer(initialCapacity: 16) }
            let command = WaitingCommand(id: id, loop: key, unsent: unsent, write: write, fail: fail)
            if unsent {
                // The unsent ones are the queue's first `unsentAhead`.
                state.waiting!.insert(command, at: state.waiting!.index(state.waiting!.startIndex, offsetBy: state.unsentAhead))
                state.unsentAhead += 1
            } else {
                state.waiting!.append(command)
            }
            if let key { state.waitingFromLoop[key, default: 0] += 1 }
            if let count, count.uncount() { Self.uncountFallback(count.loop, &state) }
            return id
        }
        guard let id else {
            let shutdown = self.state.withLockedValue { $0.isShutdown }
            return shutdown
                ? RedisClientError.shutdown
                : RedisClientError(.queueFull, detail: "\(limit) commands already wait for the command connection; not sent")
        }
        timerLoop.scheduleTask(in: wait) {
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
    private func expireWaiting(from id: UInt64) -> [WaitingCommand] {
        self.state.withLockedValue { state -> [WaitingCommand] in
            // Not found: written (or failed) already.
            guard let waiting = state.waiting, let index = waiting.firstIndex(where: { $0.id == id }) else { return [] }
            let expired = Array(waiting[index...])
            state.waiting!.removeSubrange(index...)
            state.unsentAhead = min(state.unsentAhead, state.waiting!.count)
            for case let key? in expired.lazy.map(\.loop) {
                let left = state.waitingFromLoop[key, default: 1] - 1
                state.waitingFromLoop[key] = left > 0 ? left : nil
            }
            return expired
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
            if state.loopConnections[key] === connection, connection.isActive, state.commandConnection == nil, Self.transitPending(&state) {
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
        for command in held { _ = command.write(connection, nil) }
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
        let batch = self.state.withLockedValue { state -> [(WaitingCommand, FallbackCount?)]? in
            // Only on the current connection: a newer one writes them once it is up.
            guard let waiting = state.waiting, !waiting.isEmpty, state.commandConnection === connection, connection.isActive else {
                if state.waiting?.isEmpty == true, state.commandConnection === connection { state.waiting = nil }
                if state.drainScheduled == id { state.drainScheduled = nil }
                return []
            }
            // Writes still on their way to the shared connection that closed may be refused
            // there, and held ahead of these: again in a moment.
            if Self.transitPending(&state) { return nil }
            state.waiting = CircularBuffer(initialCapacity: 16)
            state.waitingFromLoop = [:]  // the whole queue is taken
            state.unsentAhead = 0
            // Written on the shared connection: each loop's own waits for the replies.
            return waiting.map { command in
                guard let key = command.loop else { return (command, nil) }
                state.fallbacksInFlight[key, default: 0] += 1
                return (command, FallbackCount(loop: key))
            }
        }
        guard let batch else {
            connection.channel.eventLoop.scheduleTask(in: .milliseconds(1)) { self.writeWaitingBatch(on: connection) }
            return
        }
        if batch.isEmpty { return }
        for (command, count) in batch {
            let written = command.write(connection, count)
            if let count { written.whenComplete { _ in if count.uncount() { self.fallbackAnswered(count.loop) } } }
        }
        connection.channel.eventLoop.execute { self.writeWaitingBatch(on: connection) }
    }

    /// Whether a shared command connection that closed may still have writes on their way to
    /// its loop (see ``RedisConnection/hasWritesInTransit``): commands held now must not be
    /// written elsewhere before those are refused and held ahead of them.
    static func transitPending(_ state: inout State) -> Bool {
        if state.closedShared.isEmpty { return false }
        state.closedShared.removeAll { !$0.hasWritesInTransit }
        return !state.closedShared.isEmpty
    }

    /// A command of `key`'s loop on the shared connection was answered (or is held again).
    func fallbackAnswered(_ key: ObjectIdentifier) {
        self.state.withLockedValue { state in Self.uncountFallback(key, &state) }
    }

    static func uncountFallback(_ key: ObjectIdentifier, _ state: inout State) {
        let left = state.fallbacksInFlight[key, default: 1] - 1
        state.fallbacksInFlight[key] = left > 0 ? left : nil
    }

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
}
