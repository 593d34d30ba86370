import NIOCore

/// A ``RedisClusterClient/send(_:)`` waiting for its node's command connection.
struct QueuedSend: Sendable {
    /// Writes the command on the connection (and completes the caller's promise from its reply).
    let write: @Sendable (RedisConnection) -> Void
    /// The connection could not be opened: the command goes the slow way (``RedisClusterClient/execute(_:)``).
    let fallBack: @Sendable () -> Void
}

/// How ``RedisClusterClient/send(_:)`` goes on.
private enum SendRoute {
    case direct(RedisServerAddress, RedisConnection)
    case open(RedisServerAddress)
    case queued
    case slow
}

extension RedisClusterClient {
    /// Sends `command` (see ``execute(_:)``) and returns a future on one of the client's event loops,
    /// like ``RedisClient/send(_:)``, so callers written against futures run on either client.
    ///
    /// Commands for one node are written in the order they were sent, also while the node's
    /// command connection is still opening (they wait in a queue written on its event loop), so
    /// commands sent one after the other to one slot run in that order, as on one server. A
    /// redirect (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`), or a connection that cannot be
    /// opened, is then handled like ``execute(_:)`` does, which may reorder the command after
    /// later ones.
    public func send<Command: RedisCommand>(_ command: Command) -> EventLoopFuture<Command.Response> {
        let slot: HashSlot?
        do { slot = try HashSlot(keys: command.keysAffected) } catch { return self.eventLoopGroup.any().makeFailedFuture(error) }
        let promise = self.eventLoopGroup.any().makePromise(of: Command.Response.self)
        let slowly: @Sendable () -> Void = { promise.completeWithTask { try await self.execute(command) } }
        let write: @Sendable (RedisServerAddress, RedisConnection) -> Void = { node, connection in
            self.write(command, on: connection, node: node, promise: promise)
        }
        let route = self.state.withLockedValue { state -> SendRoute in
            guard let topology = state.topology, !state.isShutdown else { return .slow }
            guard let node = slot.map({ topology.primary(for: $0) }) ?? topology.primaries.first else { return .slow }
            if state.queuedSends[node] != nil {
                state.queuedSends[node]!.append(QueuedSend(write: { write(node, $0) }, fallBack: slowly))
                return .queued
            }
            if let connection = state.readyConnections[node], connection.isActive { return .direct(node, connection) }
            state.queuedSends[node] = [QueuedSend(write: { write(node, $0) }, fallBack: slowly)]
            return .open(node)
        }
        switch route {
        case .direct(let node, let connection): write(node, connection)
        case .open(let node): self.openAndDrain(node)
        case .queued: break
        case .slow: slowly()
        }
        return promise.futureResult
    }

    /// Writes `command` on `connection` (counted against the node's limit) and completes
    /// `promise`; a redirect is followed the slow way.
    private func write<Command: RedisCommand>(
        _ command: Command, on connection: RedisConnection, node: RedisServerAddress, promise: EventLoopPromise<Command.Response>
    ) {
        let limit = self.cluster.maximumPendingCommandsPerNode
        let admitted = self.state.withLockedValue { state -> Bool in
            guard state.pending[node, default: 0] < limit else { return false }
            state.pending[node, default: 0] += 1
            return true
        }
        guard admitted else {
            promise.fail(RedisClientError(.queueFull, detail: "\(node) has \(limit) commands in flight"))
            return
        }
        connection.sendRaw(command).whenComplete { result in
            self.state.withLockedValue { $0.pending[node, default: 1] -= 1 }
            switch result {
            case .success(let token):
                promise.completeWith(Result { try Command.Response(fromRESP: token) })
            case .failure(let error as RedisServerError) where ["MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"].contains(error.code):
                promise.completeWithTask { try await self.execute(command) }
            case .failure(let error):
                promise.fail(error)
            }
        }
    }

    /// Opens the command connection to `node`, then writes the queued commands on its event
    /// loop, in order, until the queue stays empty (later sends then write directly).
    private func openAndDrain(_ node: RedisServerAddress) {
        Task {
            do {
                let connection = try await self.commandConnection(to: node)
                connection.channel.eventLoop.execute { self.drain(node, on: connection) }
            } catch {
                let queued = self.state.withLockedValue { $0.queuedSends.removeValue(forKey: node) } ?? []
                for item in queued { item.fallBack() }
            }
        }
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
