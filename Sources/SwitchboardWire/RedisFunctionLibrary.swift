import NIOCore
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
    public static func call<Command: RedisCommand>(_ command: Command, on client: RedisClient) -> EventLoopFuture<Command.Response> {
        let first = client.send(command)
        let load = LoadFunctions<Self>()
        return first.flatMapError { error in
            guard isFunctionLibraryMissing(error) else { return first.eventLoop.makeFailedFuture(error) }
            return client.send(load).flatMap { _ in client.send(command) }
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
