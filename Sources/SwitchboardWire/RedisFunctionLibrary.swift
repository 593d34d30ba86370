import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Redis

/// A Redis Function library of the gateway (``HistoryFunctions``, ``LifecycleFunctions``): its
/// Lua source, loaded at start and by every command connection when it connects, so a Redis
/// that restarted without persistence has it again before the first `FCALL`; a call that still
/// finds it missing loads it and runs again.
public protocol RedisFunctionLibrary: SendableMetatype {
    /// The library's source, for `FUNCTION LOAD REPLACE`.
    static var library: String { get }
}

/// Whether `error` says a function library is not loaded (a restarted Redis without persistence).
func isFunctionLibraryMissing(_ error: any Error) -> Bool {
    guard let error = error as? RedisServerError else { return false }
    return error.message.contains("Function not found")
}

extension RedisFunctionLibrary {
    /// Runs `command`; when Redis lacks the library, loads it and runs `command` once more.
    ///
    /// The order of calls made on one event loop (one command connection: a session's, or an
    /// API connection's) is kept across the reload: the calls that found the library missing
    /// run again, in order, before any call made since (held meanwhile); see
    /// ``FunctionReloadGates``. A call that finds it missing on its third attempt fails (the
    /// library flushed again and again meanwhile).
    public static func call<Command: RedisCommand>(_ command: Command, on client: RedisClient) -> EventLoopFuture<Command.Response> {
        let loop = MultiThreadedEventLoopGroup.currentEventLoop
        let key = FunctionReloadGates.Key(client: ObjectIdentifier(client), loop: loop.map(ObjectIdentifier.init), library: ObjectIdentifier(Self.self))
        let promise = (loop ?? client.eventLoopGroup.any()).makePromise(of: Command.Response.self)
        attempt(command, on: client, key: key, promise: promise, attempts: 1, ticket: nil)
        return promise.futureResult
    }

    /// A call's first attempt (`ticket` nil) goes through the key's gate: sent, or held while a
    /// reload runs; a held call and a call that found the library missing come back with their
    /// ticket (their place in the key's call order) and are sent as they are.
    private static func attempt<Command: RedisCommand>(
        _ command: Command, on client: RedisClient, key: FunctionReloadGates.Key, promise: EventLoopPromise<Command.Response>,
        attempts: Int, ticket: UInt64?
    ) {
        let load: @Sendable () -> EventLoopFuture<Void> = { client.send(LoadFunctions<Self>()).map { _ in } }
        @Sendable func again(_ ticket: UInt64, _ result: Result<Command.Response, any Error>) -> (@Sendable () -> Void)? {
            guard attempts < FunctionReloadGates.maximumAttempts, case .failure(let error) = result, isFunctionLibraryMissing(error) else {
                return nil
            }
            return { attempt(command, on: client, key: key, promise: promise, attempts: attempts + 1, ticket: ticket) }
        }
        guard let ticket else {
            let (sent, ticket) = FunctionReloadGates.send(
                key, unlessHeld: { ticket in attempt(command, on: client, key: key, promise: promise, attempts: attempts, ticket: ticket) }
            ) { client.send(command) }
            sent?.whenComplete { result in
                let retry = again(ticket, result)
                FunctionReloadGates.answered(key, ticket: ticket, retry: retry, load: load)
                if retry == nil { promise.completeWith(result) }
            }
            return
        }
        client.send(command).whenComplete { result in
            guard let retry = again(ticket, result) else {
                promise.completeWith(result)
                return
            }
            FunctionReloadGates.missing(key, ticket: ticket, retry: retry, load: load)
        }
    }

    /// Runs `command`; when Redis lacks the library, loads it (on a cluster: on the primary
    /// owning the command's keys, where it ran) and runs `command` once more.
    public static func call<Command: RedisCommand>(_ command: Command, on redis: GatewayRedis) -> EventLoopFuture<Command.Response> {
        if let client = redis.singleClient { return call(command, on: client) }
        let first = redis.send(command)
        let load = KeyRoutedCommand(LoadFunctions<Self>(), keys: command.keysAffected)
        return first.flatMapError { error in
            guard isFunctionLibraryMissing(error) else { return first.eventLoop.makeFailedFuture(error) }
            return redis.send(load).flatMap { _ in redis.send(command) }
        }
    }
}

/// `FUNCTION LOAD REPLACE <library>`.
public struct LoadFunctions<Library: RedisFunctionLibrary>: RedisCommand {
    public typealias Response = String
    public init() {}

    /// The command's arguments (for ``RedisClient/addConnectionSetup(_:)``).
    public static var arguments: [RedisArgument] { ["FUNCTION", "LOAD", "REPLACE", .string(Library.library)] }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeCommand("FUNCTION", "LOAD", "REPLACE", Library.library)
    }
}

/// Loads the history functions.
public typealias LoadHistoryFunctions = LoadFunctions<HistoryFunctions>
/// Loads the lifecycle functions.
public typealias LoadLifecycleFunctions = LoadFunctions<LifecycleFunctions>

/// Reloads of a function library that went missing on a live server (`FUNCTION FLUSH`,
/// `FUNCTION DELETE`), one at a time per client, event loop and library (a key). While one runs,
/// new calls wait; when the library is loaded again, the calls that found it missing run again,
/// then the calls that waited, all in the order they were made. Without it, calls made after the
/// load overtook the failed ones, and a publisher's messages took positions out of order.
///
/// Every call takes a ticket (its place in the key's order) when it is made, and the calls in
/// flight are counted: after the load, the calls go out once every call sent before the reload
/// has answered. A caller off the connection's event loop may see its answer late (a future
/// answered before the caller's callback was added runs the callback in a later loop tick), so
/// a call that found the library missing could report it after the load's answer, and went
/// out after calls made after it.
///
/// Limit: a call that another instance's reload let through between the failure and the load
/// may still run before the failed ones it followed.
package enum FunctionReloadGates {
    /// Attempts of one call (each after a load) before its "Function not found" is the answer.
    static let maximumAttempts = 3

    package struct Key: Hashable, Sendable {
        var client: ObjectIdentifier
        /// The caller's event loop (its command connection); nil off the loops.
        var loop: ObjectIdentifier?
        var library: ObjectIdentifier

        package init(client: ObjectIdentifier, loop: ObjectIdentifier?, library: ObjectIdentifier) {
            self.client = client
            self.loop = loop
            self.library = library
        }
    }

    private struct Gate {
        enum Phase {
            /// Calls go straight out.
            case open
            /// A `FUNCTION LOAD` is on its way; calls are held.
            case loading
            /// The library is back: the calls that waited go out once ``outstanding`` is zero.
            case sending
        }
        var phase = Phase.open
        var nextTicket: UInt64 = 0
        /// First attempts sent and not answered yet.
        var outstanding = 0
        /// Calls to send again or for the first time, with their tickets.
        var waiting: [(ticket: UInt64, run: @Sendable () -> Void)] = []

        /// Whether the failure of a call sent `afterLoad` (a retry, or a call that waited) or
        /// not (a first attempt, sent before this reload's load) starts a reload.
        mutating func startsReload(afterLoad: Bool) -> Bool {
            guard phase == .open || (afterLoad && phase == .sending) else { return false }
            phase = .loading
            return true
        }

        var sendsNow: Bool { phase == .sending && outstanding == 0 }
    }

    /// The gate of every key that has made a call. The keys are spread over stripes, each with
    /// its own lock, so calls from different event loops do not contend for one lock.
    private static let stripes = (0..<16).map { _ in NIOLockedValueBox<[Key: Gate]>([:]) }

    /// Runs `body` on `key`'s gate (made on first use) under its stripe's lock.
    private static func withGate<R>(_ key: Key, _ body: (inout Gate) -> R) -> R {
        let stripe = stripes[Int(truncatingIfNeeded: UInt(bitPattern: key.hashValue) % UInt(stripes.count))]
        return stripe.withLockedValue { body(&$0[key, default: Gate()]) }
    }

    /// Sends (`send`) unless a reload runs for `key`; then holds `run` (given the call's ticket)
    /// and returns nil. The check and the send are one step under the lock, so a call is either
    /// written before a reload's gate closes (before its load, which is queued after that) or held.
    package static func send<T>(
        _ key: Key, unlessHeld run: @escaping @Sendable (UInt64) -> Void, _ send: () -> EventLoopFuture<T>
    ) -> (EventLoopFuture<T>?, ticket: UInt64) {
        withGate(key) { gate in
            let ticket = gate.nextTicket
            gate.nextTicket += 1
            guard gate.phase == .open else {
                gate.waiting.append((ticket, { run(ticket) }))
                return (nil, ticket)
            }
            gate.outstanding += 1
            return (send(), ticket)
        }
    }

    /// A first attempt answered; `retry` when it found the library missing (a reload starts
    /// unless one runs).
    package static func answered(
        _ key: Key, ticket: UInt64, retry: (@Sendable () -> Void)?, load: @escaping @Sendable () -> EventLoopFuture<Void>
    ) {
        let (start, send) = withGate(key) { gate -> (Bool, Bool) in
            gate.outstanding -= 1
            guard let retry else { return (false, gate.sendsNow) }
            gate.waiting.append((ticket, retry))
            return (gate.startsReload(afterLoad: false), gate.sendsNow)
        }
        if start { reload(key, load: load) }
        if send { sendWaiting(key) }
    }

    /// A call sent again (or after waiting) found the library missing: `retry` runs once it is
    /// loaded again.
    package static func missing(_ key: Key, ticket: UInt64, retry: @escaping @Sendable () -> Void, load: @escaping @Sendable () -> EventLoopFuture<Void>) {
        let start = withGate(key) { gate -> Bool in
            gate.waiting.append((ticket, retry))
            return gate.startsReload(afterLoad: true)
        }
        if start { reload(key, load: load) }
    }

    private static func reload(_ key: Key, load: @escaping @Sendable () -> EventLoopFuture<Void>) {
        // The load is queued behind the writes already queued on this loop (calls made on other
        // threads before the gate closed): they go out first and find the library missing too,
        // instead of running after the load, ahead of the retries.
        let run: @Sendable () -> Void = {
            load().whenComplete { _ in
                let send = withGate(key) { gate -> Bool in
                    gate.phase = .sending
                    return gate.sendsNow
                }
                if send { sendWaiting(key) }
            }
        }
        if let loop = MultiThreadedEventLoopGroup.currentEventLoop { loop.execute(run) } else { run() }
    }

    /// Sends the waiting calls in ticket order until none is left (then calls go straight
    /// again), or until one of them finds the library missing again (a new reload goes on).
    private static func sendWaiting(_ key: Key) {
        while true {
            let batch = withGate(key) { gate -> [@Sendable () -> Void] in
                guard gate.sendsNow else { return [] }
                guard !gate.waiting.isEmpty else {
                    gate.phase = .open
                    return []
                }
                let batch = gate.waiting.sorted { $0.ticket < $1.ticket }.map(\.run)
                gate.waiting = []
                return batch
            }
            if batch.isEmpty { return }
            for run in batch { run() }
        }
    }

    /// Whether a reload runs for `client` on any loop (tests).
    package static func isReloading(_ client: RedisClient) -> Bool {
        stripes.contains { stripe in
            stripe.withLockedValue { $0.contains { $0.key.client == ObjectIdentifier(client) && ($0.value.phase != .open || !$0.value.waiting.isEmpty) } }
        }
    }
}
