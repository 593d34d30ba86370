import NIOCore
import NIOPosix

/// A command held while the command connection is down (``RedisClient/send(_:)``).
struct WaitingCommand: Sendable {
    let id: UInt64
    /// The loop that sent it, with ``RedisConfiguration/commandConnectionPerEventLoop``.
    let loop: ObjectIdentifier?
    /// Writes the command on the connection and completes the caller's promise from its reply.
    let write: @Sendable (RedisConnection) -> EventLoopFuture<Void>
    /// Fails the caller's promise.
    let fail: @Sendable (any Error) -> Void
}

extension RedisClient {
    /// Holds `command` until the shared command connection is back (written then, after every
    /// command held before it), for at most ``RedisConfiguration/reconnectWait``. Before
    /// ``RedisClient/start()`` no connection is on its way: it fails at once.
    func wait<Command: RedisCommand>(_ command: Command, from loop: (any EventLoop)?) -> EventLoopFuture<Command.Response> {
        let timerLoop = loop ?? self.eventLoopGroup.any()
        let wait = self.configuration.reconnectWait
        guard wait > .zero, self.state.withLockedValue({ $0.started }) else { return timerLoop.makeFailedFuture(RedisClientError.notConnected) }
        let promise = timerLoop.makePromise(of: Command.Response.self)
        let key = loop.map { ObjectIdentifier($0) }
        let limit = self.configuration.maximumWaitingCommands
        let id = self.state.withLockedValue { state -> UInt64? in
            guard !state.isShutdown, (state.waiting?.count ?? 0) < limit else { return nil }
            state.waitingIDs &+= 1
            let id = state.waitingIDs
            let waiting = WaitingCommand(
                id: id, loop: key,
                write: { connection in
                    let reply = connection.send(command)
                    reply.cascade(to: promise)
                    return reply.map { _ in }
                },
                fail: { promise.fail($0) })
            if state.waiting == nil { state.waiting = CircularBuffer(initialCapacity: 16) }
            state.waiting!.append(waiting)
            if let key { state.waitingFromLoop[key, default: 0] += 1 }
            return id
        }
        guard let id else {
            let shutdown = self.state.withLockedValue { $0.isShutdown }
            promise.fail(
                shutdown
                    ? RedisClientError.shutdown
                    : RedisClientError(.queueFull, detail: "\(limit) commands already wait for the command connection; not sent"))
            return promise.futureResult
        }
        timerLoop.scheduleTask(in: wait) {
            let error = RedisClientError(.notConnected, detail: "not connected within \(wait.nanoseconds / 1_000_000) ms; not sent")
            for expired in self.expireWaiting(from: id) { expired.fail(error) }
        }
        // If the connection came back while this was being queued, nothing else would write it.
        let connection = self.state.withLockedValue { $0.commandConnection.flatMap { $0.isActive ? $0 : nil } }
        if let connection { self.writeWaiting(on: connection) }
        return promise.futureResult
    }

    /// The command `id` waited its time: it fails, and so does every command held with it (one
    /// queue, first in first out), so that none is sent after an earlier one was refused (a
    /// session's `SEND`s, or a pipelined client's, would otherwise be published with a gap).
    private func expireWaiting(from id: UInt64) -> CircularBuffer<WaitingCommand> {
        self.state.withLockedValue { state -> CircularBuffer<WaitingCommand> in
            // Ids grow in queue order: one older than the head was written or failed already.
            guard let waiting = state.waiting, let head = waiting.first, head.id <= id else { return [] }
            state.waiting = CircularBuffer(initialCapacity: 16)
            state.waitingFromLoop = [:]
            return waiting
        }
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
        return mine
    }

    /// `key`'s own connection is back: on its loop, writes what the loop holds there, unless the
    /// shared connection is back too (then it writes them, in order with the rest).
    func writeLoopsWaiting(_ key: ObjectIdentifier, on connection: RedisConnection) {
        connection.channel.eventLoop.execute {
            let held = self.state.withLockedValue { state -> [WaitingCommand] in
                guard state.loopConnections[key] === connection, connection.isActive,
                    state.commandConnection.map({ !$0.isActive }) ?? true
                else { return [] }
                return Self.takeWaiting(of: key, &state)
            }
            for command in held { _ = command.write(connection) }
        }
    }

    /// Writes the held commands on `connection`, on its event loop, in order, one batch per loop
    /// task (so that the connection flushes and reads replies in between) until none is left;
    /// commands sent meanwhile queue behind them, and once none is left go directly again.
    func writeWaiting(on connection: RedisConnection) {
        connection.channel.eventLoop.execute { self.writeWaitingBatch(on: connection) }
    }

    private func writeWaitingBatch(on connection: RedisConnection) {
        let batch = self.state.withLockedValue { state -> CircularBuffer<WaitingCommand> in
            // Only on the current connection: a newer one writes them once it is up.
            guard let waiting = state.waiting, state.commandConnection === connection, connection.isActive else { return [] }
            state.waiting = waiting.isEmpty ? nil : CircularBuffer(initialCapacity: 16)
            state.waitingFromLoop = [:]  // the whole queue is taken
            // Written on the shared connection: each loop's own waits for the replies.
            for case let key? in waiting.lazy.map(\.loop) { state.fallbacksInFlight[key, default: 0] += 1 }
            return waiting
        }
        if batch.isEmpty { return }
        for command in batch {
            let written = command.write(connection)
            if let key = command.loop { written.whenComplete { _ in self.fallbackAnswered(key) } }
        }
        connection.channel.eventLoop.execute { self.writeWaitingBatch(on: connection) }
    }

    /// Fails every held command (at shutdown).
    func failWaiting(_ error: any Error) {
        let waiting = self.state.withLockedValue { state -> CircularBuffer<WaitingCommand> in
            defer {
                state.waiting = nil
                state.waitingFromLoop = [:]
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
