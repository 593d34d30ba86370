import NIOCore
import NIOPosix

extension RedisClient {
    /// Sends `command` on the multiplexed connection without awaiting (hot path).
    ///
    /// With ``RedisConfiguration/commandConnectionPerEventLoop`` a command sent on an event loop
    /// goes on that loop's own connection; while it is down, on the shared one. The commands of
    /// one loop keep their order across the switch: its own connection is used again only once
    /// what it sent on the shared one meanwhile was answered.
    ///
    /// While no connection is up, the command waits (``RedisConfiguration/reconnectWait``) and is
    /// written, in order, on the shared connection once it is back.
    public func send<Command: RedisCommand>(_ command: Command) -> EventLoopFuture<Command.Response> {
        guard self.configuration.commandConnectionPerEventLoop, let loop = MultiThreadedEventLoopGroup.currentEventLoop else {
            // Not checked for being active: one that is closing refuses the write, and hands
            // the command back (``holdUnsent(_:from:)``) behind those it could not write, in
            // order on its loop (checking here could queue it ahead of them). Counted in
            // transit from here: what is held is not written elsewhere before it is refused.
            let route = self.state.withLockedValue { state -> (RedisConnection, UInt64)? in
                guard state.waiting == nil, state.drainedOnOwn == nil, !Self.transitPending(&state), let connection = state.commandConnection
                else { return nil }
                connection.beginTransit()
                state.tickets &+= 1
                return (connection, state.tickets)
            }
            guard let (connection, ticket) = route else { return self.wait(command, from: nil) }
            return connection.send(command, origin: nil, place: CommandPlace(ticket: ticket), counted: true)
        }
        let key = ObjectIdentifier(loop)
        let (route, held) = self.state.withLockedValue { state -> ((RedisConnection, FallbackCount?, UInt64)?, [WaitingCommand]) in
            guard let (connection, fallback, held) = Self.route(from: key, &state) else { return (nil, []) }
            state.tickets &+= 1
            return ((connection, fallback, state.tickets), held)
        }
        guard let (connection, fallback, ticket) = route else { return self.wait(command, from: loop) }
        self.writeDrained(held, on: connection)
        guard let fallback else { return connection.send(command, origin: nil, place: CommandPlace(ticket: ticket)) }
        let future = connection.send(command, origin: fallback, place: CommandPlace(ticket: ticket), counted: true)
        future.whenComplete { _ in self.answered(fallback) }
        return future
    }

    /// The connection a command of `key`'s loop goes on now, with its count on the shared one
    /// (counted in transit there) and the loop's held commands to write on it first; `nil`:
    /// it waits.
    private static func route(from key: ObjectIdentifier, _ state: inout State) -> (RedisConnection, FallbackCount?, [WaitingCommand])? {
        let own = state.loopConnections[key].flatMap { $0.isActive ? $0 : nil }
        // The shared one until the client saw it close, even if it is closing: the commands
        // it could not write are handed back (``holdUnsent(_:from:)``), in order, so this
        // loop's earlier ones wait (``State/waitingFromLoop``) and later ones queue behind.
        // Gone, it may still have writes on their way to its loop (refused there, and held
        // then): until they are, it counts as there.
        let transitPending = Self.transitPending(&state)
        let sharedGone = state.commandConnection == nil && !transitPending
        // Not while commands taken from the queue are in flight on another connection (the
        // shared one, or another loop's own): they waited, and may be a client's whose session
        // ended on another loop and that reconnected on this one.
        let drainedElsewhere = Self.drainedElsewhere(than: key, state)
        // Its own connection, unless commands wait (of any loop: a client whose session ended
        // on another loop may have reconnected on this one, and what its old session sent
        // must not be overtaken), or this loop's went on the shared one and are not answered
        // (a shared connection that closed ran nothing more of what it still held: what it
        // did not write is waiting by now).
        if let own, state.waiting == nil, !drainedElsewhere, state.fallbacksInFlight[key, default: 0] == 0 || sharedGone {
            return (own, nil, [])
        }
        // Its own is back before the shared one, and only this loop's commands wait: they go
        // first, on its own.
        if let own, sharedGone, !drainedElsewhere, Self.onlyLoopWaits(key, state) { return (own, nil, Self.takeWaiting(of: key, &state)) }
        // On the shared one, unless the loop's own connection (closing, or up with commands
        // queued ahead) still owes replies, or commands taken from the queue are in flight on a
        // loop's own: this one could run before those.
        guard state.waiting == nil, state.drainedOnOwn == nil, !transitPending, let shared = state.commandConnection,
            state.loopConnections[key]?.owesReplies != true
        else { return nil }
        state.fallbacksInFlight[key, default: 0] += 1
        shared.beginTransit()
        return (shared, FallbackCount(loop: key), [])
    }

    /// Whether commands sent on `loop` go on its own connection now (tests).
    package func usesOwnConnection(on loop: any EventLoop) -> Bool {
        let key = ObjectIdentifier(loop)
        return self.state.withLockedValue { state in
            state.loopConnections[key]?.isActive == true && state.fallbacksInFlight[key, default: 0] == 0
        }
    }

    /// Whether `loop`'s own connection is connected (tests).
    package func hasOwnConnection(on loop: any EventLoop) -> Bool {
        self.state.withLockedValue { $0.loopConnections[ObjectIdentifier(loop)]?.isActive == true }
    }
}
