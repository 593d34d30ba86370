import NIOCore

/// The commands every command connection runs once connected.
extension RedisClient {
    /// Adds a command that every command connection runs once connected, before anything else
    /// is sent on it (e.g. `FUNCTION LOAD REPLACE`, so that a Redis that restarted empty has the
    /// functions again before the first `FCALL`). An error reply is logged, not fatal.
    /// A command equal to one added before is not added again (one per publisher or consumer
    /// sharing the client would otherwise run at every reconnect).
    public func addConnectionSetup(_ arguments: [RedisArgument]) {
        self.state.withLockedValue { state in
            if !state.setup.contains(arguments) { state.setup.append(arguments) }
        }
    }

    /// Runs the setup commands on a new command connection.
    /// First waits while the server is still loading its data set (a restart): it answers
    /// `-LOADING` to nearly every command, so the connection is not used, and commands keep
    /// waiting for it (``RedisConfiguration/reconnectWait``), until it answers `PING`.
    func runSetup(on connection: RedisConnection) async throws {
        try await self.runSetupCommands(on: connection)
        // A setup write answered READONLY closed the connection (a replica at this address):
        // a failed attempt, backed off as one (taken as connected, it reconnected every 10 ms,
        // waking every other loop).
        if connection.closedAsDemoted {
            throw RedisClientError(.notConnected, detail: "the server is a replica (READONLY to the connection's setup)")
        }
    }

    func runSetupCommands(on connection: RedisConnection) async throws {
        var logged = false
        while true {
            do {
                _ = try await connection.execute(PING())
                break
            } catch let error as RedisServerError where error.code == "LOADING" {
                if !logged { self.logger.info("redis is loading its data set; the connection is used once it is done") }
                logged = true
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        for arguments in self.state.withLockedValue({ $0.setup }) {
            do {
                _ = try await connection.execute(RawCommand(arguments: arguments))
            } catch let error as RedisServerError {
                self.logger.warning("redis connection setup command failed", metadata: ["error": "\(error)"])
            }
        }
    }
}
