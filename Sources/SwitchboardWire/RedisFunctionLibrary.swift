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
        attempt(command, on: client, key: key, promise: promise, attempts: 1, gated: true)
        return promise.futureResult
    }

    /// Sends `command`, unless `gated` and a reload holds the key's calls; a call the reload
    /// lets go (held, or found the library missing) comes back with `gated` false.
    private static func attempt<Command: RedisCommand>(
        _ command: Command, on client: RedisClient, key: FunctionReloadGates.Key, promise: EventLoopPromise<Command.Response>,
        attempts: Int, gated: Bool
    ) {
        let sent: EventLoopFuture<Command.Response>?
        if gated {
            sent = FunctionReloadGates.send(key, unlessHeld: { attempt(command, on: client, key: key, promise: promise, attempts: attempts, gated: false) }) {
                client.send(command)
            }
        } else {
            sent = client.send(command)
        }
        sent?.whenComplete { result in
            guard attempts < FunctionReloadGates.maximumAttempts, case .failure(let error) = result, isFunctionLibraryMissing(error) else {
                promise.completeWith(result)
                return
            }
            let retry: @Sendable () -> Void = { attempt(command, on: client, key: key, promise: promise, attempts: attempts + 1, gated: false) }
            FunctionReloadGates.missing(key, retry: retry) { client.send(LoadFunctions<Self>()).map { _ in } }
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
/// `FUNCTION DELETE`), one at a time per client, event loop and library. While one runs, new
/// calls wait; when the library is loaded again, the calls that found it missing run again in
/// the order they were sent, then the calls that waited. Without it, calls made after the load
/// overtook the failed ones, and a publisher's messages took positions out of order.
///
/// Limit: a call that another instance's reload let through between the failure and the load
/// may still run before the failed ones it followed.
package enum FunctionReloadGates {
    /// Attempts of one call (each after a load) before its "Function not found" is the answer.
    static let maximumAttempts = 3

    struct Key: Hashable {
        var client: ObjectIdentifier
        /// The caller's event loop (its command connection); nil off the loops.
        var loop: ObjectIdentifier?
        var library: ObjectIdentifier
    }

    private struct Gate {
        /// A `FUNCTION LOAD` is on its way.
        var loading = false
        /// Calls that found the library missing, in the order their replies came (the order they
        /// were sent on the connection).
        var retries: [@Sendable () -> Void] = []
        /// Calls made since, not sent yet.
        var held: [@Sendable () -> Void] = []
    }

    /// A reload runs (loading, or sending what waited for it) for every key present. The keys
    /// are spread over stripes, each with its own lock, so calls from different event loops
    /// (every history call passes ``send(_:unlessHeld:_:)``) do not contend for one lock.
    private static let stripes = (0..<16).map { _ in NIOLockedValueBox<[Key: Gate]>([:]) }

    private static func gates(_ key: Key) -> NIOLockedValueBox<[Key: Gate]> {
        stripes[Int(truncatingIfNeeded: UInt(bitPattern: key.hashValue) % UInt(stripes.count))]
    }

    /// Sends (`send`) unless a reload runs for `key`; then holds `run` for later and returns nil.
    /// The check and the send are one step under the lock, so a call is either written before a
    /// reload's gate exists (before its load, which is queued after the gate is made) or held.
    static func send<T>(_ key: Key, unlessHeld run: @escaping @Sendable () -> Void, _ send: () -> EventLoopFuture<T>) -> EventLoopFuture<T>? {
        gates(key).withLockedValue { gates in
            guard gates[key] != nil else { return send() }
            gates[key]!.held.append(run)
            return nil
        }
    }

    /// A call found the library missing: `retry` runs once it is loaded again. A call that finds
    /// no load on its way starts one (`load`).
    static func missing(_ key: Key, retry: @escaping @Sendable () -> Void, load: @escaping @Sendable () -> EventLoopFuture<Void>) {
        let start = gates(key).withLockedValue { gates -> Bool in
            var gate = gates[key] ?? Gate()
            gate.retries.append(retry)
            let start = !gate.loading
            gate.loading = true
            gates[key] = gate
            return start
        }
        guard start else { return }
        // The load is queued behind the writes already queued on this loop (calls made on other
        // threads before the gate existed): they go out first and find the library missing
        // too, instead of running after the load, ahead of the retries. Its reply comes after
        // theirs: by then every call that will find the library missing has said so.
        let run: @Sendable () -> Void = { load().whenComplete { _ in loaded(key) } }
        if let loop = MultiThreadedEventLoopGroup.currentEventLoop { loop.execute(run) } else { run() }
    }

    /// Runs the retries, then the held calls, until none is left (then calls go straight
    /// again), or until one of them finds the library missing again (its load's completion
    /// goes on).
    private static func loaded(_ key: Key) {
        let gates = gates(key)
        gates.withLockedValue { $0[key]?.loading = false }
        while true {
            let batch = gates.withLockedValue { gates -> [@Sendable () -> Void] in
                guard var gate = gates[key], !gate.loading else { return [] }
                let batch = gate.retries + gate.held
                if batch.isEmpty {
                    gates[key] = nil
                } else {
                    gate.retries = []
                    gate.held = []
                    gates[key] = gate
                }
                return batch
            }
            if batch.isEmpty { return }
            for run in batch { run() }
        }
    }

    /// Whether a reload runs for `client` on any loop (tests).
    package static func isReloading(_ client: RedisClient) -> Bool {
        stripes.contains { $0.withLockedValue { $0.keys.contains { $0.client == ObjectIdentifier(client) } } }
    }
}
