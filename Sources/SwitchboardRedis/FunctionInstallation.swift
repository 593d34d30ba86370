import Logging
import Redis
import SwitchboardWire

extension GatewayRedis {
    /// Makes `Library` available to `FCALL`: every command connection loads it when it opens
    /// (a Redis that restarted empty has it again before the first call; on a cluster every
    /// primary, a promoted replica or a node added later included), and on one server it is
    /// loaded now if a connection is already open. Not being connected yet is expected at
    /// start-up; any other failure is logged, and a call that finds the library missing loads it
    /// itself.
    func installFunctions<Library: RedisFunctionLibrary>(_: Library.Type, named name: String, logger: Logger) async {
        addConnectionSetup(LoadFunctions<Library>.arguments)
        guard !isCluster else { return }
        do {
            _ = try await execute(LoadFunctions<Library>())
        } catch let error as RedisClientError where error == .notConnected {
            logger.debug("the \(name) functions are loaded when the Redis connection opens (or on first use)")
        } catch {
            // Redis < 7 has no functions; a Redis that is down gets them on first use.
            logger.warning("loading the \(name) functions failed; retried on first use", metadata: ["error": "\(error)"])
        }
    }
}
