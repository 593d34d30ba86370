import NIOCore

/// A ``RedisClusterClient/send(_:)`` waiting for its node's command connection.
struct QueuedSend: Sendable {
    /// Writes the command on the connection (and completes the caller's promise from its reply).
    let write: @Sendable (RedisConnection) -> Void
    /// The connection could not be opened: the command goes to its slot's detour.
    let fallBack: @Sendable () -> Void
}

/// A ``RedisClusterClient/send(_:)`` off the direct way, in its slot's detour (see
/// ``SlotOrderStateMachine``).
struct DetouredSend: Sendable {
    let command: any RedisCommand
    /// When retries end (the command timeout, from when it was sent).
    let deadline: NIODeadline
    /// Completes the caller's promise.
    let complete: @Sendable (Result<RESPToken, any Error>) -> Void
}

typealias DetourEntry = SlotOrderStateMachine<DetouredSend>.Entry

/// Where a ``RedisClusterClient/send(_:)`` on the direct way goes, and what it needs if it is
/// redirected.
private struct DirectSend: Sendable {
    let slot: Int
    /// Its place in the slot's order (``SlotOrderStateMachine``).
    let sequence: UInt64
    let node: RedisServerAddress
    /// When retries end, if it is redirected.
    let deadline: NIODeadline
}

/// How ``RedisClusterClient/send(_:)`` goes on.
private enum SendRoute {
    case direct(RedisConnection, DirectSend)
    case open(RedisServerAddress)
    case queued
    case detoured([DetourEntry]?)
    case full
    /// Too many sends wait for the node's connection to open.
    case openQueueFull(DirectSend)
    case shutdown
}

extension RedisClusterClient {
    /// Sends `command` (see ``execute(_:)``) and returns a future on one of the client's event loops,
    /// like ``RedisClient/send(_:)``, so callers written against futures run on either client.
    ///
    /// Commands for one slot run in the order they were sent, as on one server. They are written
    /// on their node's pipelined connection in that order (also while it is still opening). A
    /// command that is redirected (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`), or whose node cannot
    /// be reached, is not overtaken: the slot's later commands wait until it is done, then go
    /// pipelined where it went (see ``SlotOrderStateMachine``).
    public func send<Command: RedisCommand>(_ command: Command) -> EventLoopFuture<Command.Response> {
        let hashSlot: HashSlot?
        do { hashSlot = try HashSlot(keys: command.keysAffected) } catch { return self.eventLoopGroup.any().makeFailedFuture(error) }
        let slot = hashSlot?.rawValue ?? HashSlot.count
        let promise = self.eventLoopGroup.any().makePromise(of: Command.Response.self)
        let deadline = NIODeadline.now() + self.configuration.commandTimeout
        // The direct way (the hot path) builds no closure: only a command that waits for its
        // node's connection, or goes to the detour, is wrapped.
        let route = self.state.withLockedValue { state -> SendRoute in
            guard !state.isShutdown else { return .shutdown }
            let node = state.topology.flatMap { topology in hashSlot.map { topology.primary(for: $0) } ?? topology.primaries.first }
            let action = state.order.send(slot: slot, direct: node != nil, node: node, maximumWaiting: self.cluster.maximumPendingCommandsPerNode) {
                DetouredSend(command, deadline: deadline, promise: promise)
            }
            guard case .direct(let sequence) = action, let node else {
                switch action {
                case .runRound(let round): return .detoured(round)
                case .full: return .full
                default: return .detoured(nil)
                }
            }
            let target = DirectSend(slot: slot, sequence: sequence, node: node, deadline: deadline)
            if let connection = state.readyConnections[node], connection.isActive, state.queuedSends[node] == nil {
                return .direct(connection, target)
            }
            let queued = QueuedSend(
                write: { connection in self.write(command, target, on: connection, promise: promise) },
                fallBack: {
                    self.answered(slot: slot, redirected: DetourEntry(sequence: sequence, item: DetouredSend(command, deadline: deadline, promise: promise)))
                }
            )
            if state.queuedSends[node] != nil {
                // Bounded like the commands in flight: while a node's connection opens (up to the
                // connect timeout), every send for its slots waits here.
                guard state.queuedSends[node]!.count < self.cluster.maximumPendingCommandsPerNode else { return .openQueueFull(target) }
                state.queuedSends[node]!.append(queued)
                return .queued
            }
            state.queuedSends[node] = [queued]
            return .open(node)
        }
        switch route {
        case .direct(let connection, let target): self.write(command, target, on: connection, promise: promise)
        case .open(let node): self.openAndDrain(node)
        case .queued, .detoured(nil): break
        case .detoured(let round?): self.runDetour(slot: slot, round)
        case .openQueueFull(let target):
            let limit = self.cluster.maximumPendingCommandsPerNode
            promise.fail(RedisClientError(.queueFull, detail: "\(limit) commands wait for the connection to \(target.node) to open; not sent"))
            self.answered(slot: target.slot, redirected: nil)
        case .shutdown:
            promise.fail(RedisClientError.shutdown)
        case .full:
            let limit = self.cluster.maximumPendingCommandsPerNode
            promise.fail(RedisClientError(.queueFull, detail: "\(limit) commands of slot \(slot) wait behind a redirected one; not sent"))
        }
        return promise.futureResult
    }

    /// Writes `command` on `connection` (counted against the node's limit) and completes
    /// `promise`; a redirected command goes to its slot's detour.
    private func write<Command: RedisCommand>(
        _ command: Command, _ target: DirectSend, on connection: RedisConnection, promise: EventLoopPromise<Command.Response>
    ) {
        // A send queued while the node's connection opened may come here after its deadline.
        guard NIODeadline.now() < target.deadline else {
            promise.fail(RedisClientError(.clusterUnavailable, detail: "waited for the connection to \(target.node) until the command timeout; not sent"))
            self.answered(slot: target.slot, redirected: nil)
            return
        }
        let limit = self.cluster.maximumPendingCommandsPerNode
        let node = target.node
        let admitted = self.state.withLockedValue { state -> Bool in
            guard state.pending[node, default: 0] < limit else { return false }
            state.pending[node, default: 0] += 1
            return true
        }
        guard admitted else {
            promise.fail(RedisClientError(.queueFull, detail: "\(node) has \(limit) commands in flight"))
            self.answered(slot: target.slot, redirected: nil)
            return
        }
        connection.sendRaw(command).whenComplete { result in
            let redirected = Self.isRedirect(result)
            let round = self.state.withLockedValue { state in
                state.pending[node, default: 1] -= 1
                let entry = redirected ? DetourEntry(sequence: target.sequence, item: DetouredSend(command, deadline: target.deadline, promise: promise)) : nil
                return state.order.answered(slot: target.slot, redirected: entry)
            }
            if !redirected { promise.completeWith(result.flatMap { token in Result { try Command.Response(fromRESP: token) } }) }
            if let round { self.runDetour(slot: target.slot, round) }
        }
    }

    /// A direct command of `slot` was answered (or never written).
    private func answered(slot: Int, redirected: DetourEntry?) {
        if let round = self.state.withLockedValue({ $0.order.answered(slot: slot, redirected: redirected) }) {
            self.runDetour(slot: slot, round)
        }
    }

    /// Runs `slot`'s detour, round after round, until it closes (one runner per slot at a time:
    /// a round starts only when the previous one finished).
    private func runDetour(slot: Int, _ first: [DetourEntry]) {
        let runner = Task {
            var round = first
            while true {
                let again = await self.run(round)
                let next = self.state.withLockedValue { state in
                    let next = state.order.roundFinished(slot: slot, again: again)
                    if next == nil { state.detourRunners[slot] = nil }
                    return next
                }
                guard let next else { return }
                round = next
            }
        }
        // A runner that finished before this line stays recorded until the slot's next detour
        // replaces it; awaiting it costs nothing.
        self.state.withLockedValue { $0.detourRunners[slot] = runner }
    }

    /// One round: its first command follows the redirects alone (those that fail for good are
    /// done, the next one goes first), then the rest is pipelined where it ran. When it ran
    /// after an ASK (the slot is migrating key by key) the rest goes to the source instead, and
    /// those whose key is gone (ASK again) then to the node the ASK names, each behind `ASKING`.
    /// Returns the commands redirected again, in order. A command still waiting at its deadline
    /// fails, not sent, as ``execute(_:)``'s retries do.
    private func run(_ round: [DetourEntry]) async -> [DetourEntry] {
        var rest = round[...]
        while let first = rest.popFirst() {
            guard !self.state.withLockedValue({ $0.isShutdown }) else {
                first.item.complete(.failure(RedisClientError.shutdown))
                continue
            }
            guard first.item.deadline > .now() else {
                first.item.complete(.failure(Self.expired))
                continue
            }
            let ran: (node: RedisServerAddress, asking: Bool)
            do {
                let result = try await self.executeRaw(first.item.command, deadline: first.item.deadline)
                first.item.complete(.success(result.reply))
                ran = (result.node, result.asking)
            } catch {
                first.item.complete(.failure(error))
                continue
            }
            guard ran.asking else { return await self.pipeline(rest, on: ran.node).again }
            return await self.afterAsk(rest, slotOf: first.item.command)
        }
        return []
    }

    /// The rest of a round whose first command ran after an ASK. An ASK is about one key: the
    /// rest may name keys still on the source, which sent to the importing node behind ASKING
    /// would run there, on keys it does not hold yet (a write creating a second copy, which
    /// stops the migration with BUSYKEY). So the rest goes to the source, without ASKING; the
    /// source answers ASK only for a key it no longer holds, which does not come back: those
    /// go to the node the ASK names, behind ASKING, in their order. Each key's commands keep
    /// their order.
    private func afterAsk(_ rest: ArraySlice<DetourEntry>, slotOf command: any RedisCommand) async -> [DetourEntry] {
        guard !rest.isEmpty else { return [] }
        let source: RedisServerAddress
        do {
            source = try await self.node(for: try HashSlot(keys: command.keysAffected))
        } catch {
            return Array(rest)
        }
        let atSource = await self.pipeline(rest, on: source, collectingAsks: true)
        // Something else was redirected (MOVED, TRYAGAIN…): all wait for the next round, in order.
        guard atSource.again.isEmpty else {
            return (atSource.asked.map(\.entry) + atSource.again).sorted { $0.sequence < $1.sequence }
        }
        var byTarget: [(target: RedisServerAddress, entries: [DetourEntry])] = []
        for (entry, target) in atSource.asked {
            if let index = byTarget.firstIndex(where: { $0.target == target }) {
                byTarget[index].entries.append(entry)
            } else {
                byTarget.append((target, [entry]))
            }
        }
        var again: [DetourEntry] = []
        for (target, entries) in byTarget { again += await self.pipeline(entries[...], on: target, asking: true).again }
        return again.sorted { $0.sequence < $1.sequence }
    }

    /// Writes `entries` in order on `node`'s connection (each behind `ASKING` with `asking`), in
    /// chunks of at most ``detourChunk`` in flight; returns those redirected again and the
    /// chunks not sent after them, or all when the node cannot be reached. With
    /// `collectingAsks`, those answered ASK are returned apart, with the node named, and do
    /// not stop the later chunks. Within a chunk a later command (another key of the slot) may
    /// have run before an earlier one redirected again: the order holds per key, not across
    /// keys, while a slot moves.
    private func pipeline(
        _ entries: ArraySlice<DetourEntry>, on node: RedisServerAddress, asking: Bool = false, collectingAsks: Bool = false
    ) async -> (again: [DetourEntry], asked: [(entry: DetourEntry, target: RedisServerAddress)]) {
        guard !entries.isEmpty else { return ([], []) }
        let connection: RedisConnection
        do {
            connection = try await self.commandConnection(to: node)
        } catch {
            return (Array(entries), [])
        }
        var rest = entries
        var again: [DetourEntry] = []
        var asked: [(entry: DetourEntry, target: RedisServerAddress)] = []
        while !rest.isEmpty, again.isEmpty {
            let chunk = rest.prefix(Self.detourChunk)
            rest = rest.dropFirst(chunk.count)
            do {
                try self.admit(chunk.count, to: node)
            } catch {
                for entry in chunk { entry.item.complete(.failure(error)) }
                continue
            }
            let now = NIODeadline.now()
            let replies = chunk.map { entry -> EventLoopFuture<RESPToken> in
                guard entry.item.deadline > now else { return connection.channel.eventLoop.makeFailedFuture(Self.expired) }
                return asking ? connection.sendRawAsking(entry.item.command).reply : connection.sendRaw(entry.item.command)
            }
            for (entry, reply) in zip(chunk, replies) {
                let result: Result<RESPToken, any Error>
                do { result = .success(try await reply.get()) } catch { result = .failure(error) }
                if collectingAsks, case .failure(let error as RedisServerError) = result, let redirect = ClusterRedirect(error, sender: node),
                    redirect.kind == .ask
                {
                    asked.append((entry, redirect.address))
                } else if Self.isRedirect(result) || Self.wasNotSent(result) {
                    // Not sent (the connection closed under a later chunk: a node dropped from
                    // the map): tried again in the next round, like a redirect.
                    again.append(entry)
                } else {
                    entry.item.complete(result)
                }
            }
            self.release(chunk.count, from: node)
        }
        return (again + rest, asked)
    }

    /// Commands of a detour round in flight at once.
    static var detourChunk: Int { 1_000 }

    private static var expired: RedisClientError {
        RedisClientError(.clusterUnavailable, detail: "waited behind an earlier command of its slot until the command timeout; not sent")
    }

    private static func wasNotSent(_ result: Result<RESPToken, any Error>) -> Bool {
        guard case .failure(let error as RedisClientError) = result else { return false }
        return error == .notConnected
    }

    private static func isRedirect(_ result: Result<RESPToken, any Error>) -> Bool {
        guard case .failure(let error as RedisServerError) = result else { return false }
        return error.isClusterRefusal
    }

    /// Opens the command connection to `node`, then writes the queued commands on its event
    /// loop, in order, until the queue stays empty (later sends then write directly).
    private func openAndDrain(_ node: RedisServerAddress) {
        let started = self.background.run {
            do {
                let connection = try await self.commandConnection(to: node)
                try await connection.channel.eventLoop.submit { self.drain(node, on: connection) }.get()
            } catch {
                self.fallBackQueued(node)
            }
        }
        if !started { self.fallBackQueued(node) }
    }

    private func fallBackQueued(_ node: RedisServerAddress) {
        let queued = self.state.withLockedValue { $0.queuedSends.removeValue(forKey: node) } ?? []
        for item in queued { item.fallBack() }
    }

    private func drain(_ node: RedisServerAddress, on connection: RedisConnection) {
        while true {
            let batch = self.state.withLockedValue { state -> [QueuedSend] in
                let batch = state.queuedSends[node] ?? []
                state.queuedSends[node] = batch.isEmpty ? nil : []
                return batch
            }
            if batch.isEmpty { return }
            for item in batch { item.write(connection) }
        }
    }
}

extension DetouredSend {
    /// `command`, completing `promise` with its decoded reply.
    init<Command: RedisCommand>(_ command: Command, deadline: NIODeadline, promise: EventLoopPromise<Command.Response>) {
        self.command = command
        self.deadline = deadline
        self.complete = { result in promise.completeWith(result.flatMap { token in Result { try Command.Response(fromRESP: token) } }) }
    }
}
