import Foundation
import NIOCore
import Redis

/// `redis-cli` exited with a failure.
package struct RedisCLIError: Error, CustomStringConvertible {
    package var message: String
    package var description: String { self.message }
}

/// A throw-away Redis Cluster on free ports: `primaries` primaries with `replicasPerPrimary` replicas
/// each (`redis-server --cluster-enabled yes`, joined with `redis-cli --cluster create
/// --cluster-replicas`), with a short `cluster-node-timeout` so that a failover takes a few seconds.
/// Ready (every node reports `cluster_state:ok` and knows every node) once ``start(primaries:replicasPerPrimary:nodeTimeoutMilliseconds:)``
/// returns. The servers are killed on ``stop()`` or deinit.
package final class RedisClusterProcess: @unchecked Sendable {
    package let servers: [RedisServerProcess]
    /// `requirepass`/`masterauth` of every node, if any.
    package let password: String?

    private init(servers: [RedisServerProcess], password: String?) {
        self.servers = servers
        self.password = password
    }

    package static var isAvailable: Bool { RedisServerProcess.isAvailable && redisCLI != nil }

    static let redisCLI: String? = RedisServerProcess.executable.map { URL(fileURLWithPath: $0).deletingLastPathComponent().appendingPathComponent("redis-cli").path }
        .flatMap { FileManager.default.isExecutableFile(atPath: $0) ? $0 : nil }

    /// - Parameter password: `requirepass` and `masterauth` on every node.
    package static func start(
        primaries: Int = 3, replicasPerPrimary: Int = 1, nodeTimeoutMilliseconds: Int = 1000, password: String? = nil
    ) async throws -> RedisClusterProcess {
        let auth = password.map { ["--requirepass", $0, "--masterauth", $0] } ?? []
        var servers: [RedisServerProcess] = []
        for _ in 0..<(primaries * (1 + replicasPerPrimary)) {
            servers.append(
                try await RedisServerProcess.start(
                    [
                        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "\(nodeTimeoutMilliseconds)", "--cluster-replica-validity-factor", "0",
                    ] + auth))
        }
        let cluster = RedisClusterProcess(servers: servers, password: password)
        try await cluster.redisCLI(
            (password.map { ["--no-auth-warning", "-a", $0] } ?? []) + ["--cluster", "create"] + servers.map { "127.0.0.1:\($0.port)" } + [
                "--cluster-replicas", "\(replicasPerPrimary)", "--cluster-yes",
            ])
        guard try await cluster.waitUntilHealthy(nodes: servers.count) else {
            throw RedisClientError.connectTimeout
        }
        return cluster
    }

    /// Runs `redis-cli args` and returns its output; throws when it exits with a failure. It
    /// waits on a thread of its own: blocking one of the task pool's threads (two on a 2-core
    /// machine) for the seconds a `--cluster create` or a reshard takes stalled every other test.
    @discardableResult
    package func redisCLI(_ arguments: [String]) async throws -> String {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(with: Result { try self.redisCLIBlocking(arguments) })
            }
        }
    }

    private func redisCLIBlocking(_ arguments: [String]) throws -> String {
        let (process, output) = try ChildProcess.spawn(Self.redisCLI!, arguments, captureOutput: true)
        let text = String(decoding: output!.readDataToEndOfFile(), as: UTF8.self)
        guard process.waitUntilExit() == 0 else {
            throw RedisCLIError(message: "redis-cli \(arguments.joined(separator: " ")) failed: \(text)")
        }
        return text
    }

    /// Waits until every running node reports `cluster_state:ok` and knows `nodes` nodes, and every
    /// slot's owner agrees on all of them.
    package func waitUntilHealthy(nodes: Int, timeout: Duration = .seconds(30)) async throws -> Bool {
        try await eventually(timeout: timeout) {
            var maps: Set<String> = []
            for server in self.running {
                guard let info = try? await self.command(server, RawCommand("CLUSTER", "INFO")),
                    info.contains("cluster_state:ok"), info.contains("cluster_known_nodes:\(nodes)")
                else { return false }
                guard let shards = try? await self.command(server, RawCommand("CLUSTER", "SLOTS")) else { return false }
                // Every node ID appears: each primary has its replicas attached.
                let ids = shards.split(separator: "\"").map { String($0) }.filter { $0.count == 40 }
                guard Set(ids).count == nodes else { return false }
                maps.insert(ids.joined(separator: ","))
            }
            return maps.count == 1
        }
    }

    /// The servers still running.
    package var running: [RedisServerProcess] { self.servers.filter(\.isRunning) }

    /// Sends `command` to `server` on a fresh connection; the reply as text.
    package func command(_ server: RedisServerProcess, _ command: RawCommand) async throws -> String {
        let connection = try await server.connect { $0.password = self.password }
        defer { Task { await connection.close() } }
        let reply = try await connection.execute(command)
        if case .bulkString(let buffer) = reply.value { return String(buffer: buffer) }
        if case .verbatimString(let buffer) = reply.value { return String(buffer: buffer) }
        return "\(reply)"
    }

    /// The node ID of `server`.
    package func nodeID(_ server: RedisServerProcess) async throws -> String {
        try await self.command(server, RawCommand("CLUSTER", "MYID")).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
    }

    /// The running primary that serves `slot`.
    package func owner(of slot: HashSlot) async throws -> RedisServerProcess? {
        for server in self.running {
            let role = try await self.command(server, RawCommand("ROLE"))
            guard role.contains("master") else { continue }
            let myself = try await self.command(server, RawCommand("CLUSTER", "NODES"))
            guard let line = myself.split(separator: "\n").first(where: { $0.contains("myself") }) else { continue }
            for field in line.split(separator: " ").dropFirst(8) {
                let bounds = field.split(separator: "-").compactMap { Int($0) }
                if bounds.count == 2, (bounds[0]...bounds[1]).contains(slot.rawValue) { return server }
                if bounds.count == 1, bounds[0] == slot.rawValue { return server }
            }
        }
        return nil
    }

    /// The running primaries.
    package func primaries() async throws -> [RedisServerProcess] {
        var result: [RedisServerProcess] = []
        for server in self.running where try await self.command(server, RawCommand("ROLE")).contains("master") { result.append(server) }
        return result
    }

    /// Starts moving `slot` from `source` to `destination` (`CLUSTER SETSLOT … IMPORTING/MIGRATING`);
    /// with `moveKeys`, its keys are `MIGRATE`d; with `finish`, the slot is assigned to
    /// `destination` on every primary (`SETSLOT … NODE`).
    package func migrateSlot(
        _ slot: HashSlot, from source: RedisServerProcess, to destination: RedisServerProcess, moveKeys: Bool = true, finish: Bool = true
    ) async throws {
        let sourceID = try await self.nodeID(source)
        let destinationID = try await self.nodeID(destination)
        _ = try await self.command(destination, RawCommand("CLUSTER", "SETSLOT", .integer(slot.rawValue), "IMPORTING", .string(sourceID)))
        _ = try await self.command(source, RawCommand("CLUSTER", "SETSLOT", .integer(slot.rawValue), "MIGRATING", .string(destinationID)))
        if moveKeys {
            let connection = try await source.connect { $0.password = self.password }
            defer { Task { await connection.close() } }
            let keys = try await connection.execute(RawCommand("CLUSTER", "GETKEYSINSLOT", .integer(slot.rawValue), "1000"))
            let names = try [String](fromRESP: keys)
            if !names.isEmpty {
                _ = try await connection.execute(
                    RawCommand(
                        arguments: ["MIGRATE", "127.0.0.1", .integer(destination.port), "", "0", "5000"]
                            + (self.password.map { ["AUTH", .string($0)] } ?? []) + ["KEYS"] + names.map { .string($0) }))
            }
        }
        if finish {
            _ = try await self.command(destination, RawCommand("CLUSTER", "SETSLOT", .integer(slot.rawValue), "NODE", .string(destinationID)))
            _ = try await self.command(source, RawCommand("CLUSTER", "SETSLOT", .integer(slot.rawValue), "NODE", .string(destinationID)))
            for server in try await self.primaries() where server !== source && server !== destination {
                _ = try? await self.command(server, RawCommand("CLUSTER", "SETSLOT", .integer(slot.rawValue), "NODE", .string(destinationID)))
            }
        }
    }

    /// Seed addresses for a client.
    package var seeds: [RedisServerAddress] { self.servers.map { RedisServerAddress(host: "127.0.0.1", port: $0.port) } }

    package func stop() {
        for server in self.servers { server.stop() }
    }

    deinit { self.stop() }
}
