import NIOCore
import RedisServerTesting
import Testing

@testable import Redis

@Suite("Replicated writes on a real primary and replica", .enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct ReplicatedWriteIntegrationTests {
    @Test func aWriteIsOnTheReplicaWhenItSucceedsAndFailsWhileTheReplicaIsStopped() async throws {
        let primary = try await RedisServerProcess.start()
        let replica = try await RedisServerProcess.startReplica(of: primary)
        let connection = try await primary.connect()
        let onReplica = try await replica.connect()

        // Acknowledged: the entry is on the replica the moment the write succeeds.
        for n in 0..<20 {
            let write = XADD(key: "s", fields: [("n", .string("\(n)"))])
            _ = try await connection.execute(ReplicatedWrite(write, replicas: 1, timeout: .seconds(2)))
            #expect(try Int(fromRESP: try await onReplica.execute(RawCommand("XLEN", "s"))) == n + 1)
        }
        // 200 writes made in one loop tick wait for the replica together: one WAIT covers them.
        let waitsBefore = try await Self.waitCalls(connection)
        let batch = try await connection.channel.eventLoop.submit {
            (0..<200).map { n in connection.send(ReplicatedWrite(XADD(key: "s", fields: [("b", .string("\(n)"))]), replicas: 1, timeout: .seconds(2))) }
        }.get()
        for write in batch { _ = try await write.get() }
        #expect(try Int(fromRESP: try await onReplica.execute(RawCommand("XLEN", "s"))) == 220)
        #expect(try await Self.waitCalls(connection) == waitsBefore + 1)
        // Not enough replicas (one asked for two): stored on the primary, reported as not replicated.
        await #expect(throws: RedisClientError.notReplicated) {
            try await connection.execute(ReplicatedWrite(XADD(key: "s", fields: [("n", "two")]), replicas: 2, timeout: .milliseconds(100)))
        }
        // The replica stops answering: the write fails after the wait, explicitly.
        replica.pause()
        defer { replica.resume() }
        let started = ContinuousClock.now
        await #expect(throws: RedisClientError.notReplicated) {
            try await connection.execute(ReplicatedWrite(XADD(key: "s", fields: [("n", "paused")]), replicas: 1, timeout: .milliseconds(300)))
        }
        #expect(ContinuousClock.now - started >= .milliseconds(290))
        // An error reply to the write keeps its own error; the connection stays in step.
        _ = try await connection.execute(SET("string", value: "x"))
        await #expect(throws: RedisServerError.self) {
            try await connection.execute(ReplicatedWrite(XADD(key: "string", fields: [("n", "x")]), replicas: 0, timeout: .milliseconds(10)))
        }
        #expect(try await connection.execute(PING()) == "PONG")
        await connection.close()
        await onReplica.close()
    }

    /// How many WAITs the server ran (`INFO commandstats`).
    static func waitCalls(_ connection: RedisConnection) async throws -> Int {
        let stats = String(buffer: try await connection.execute(RawCommand("INFO", "commandstats")).base)
        guard let line = stats.split(whereSeparator: \.isNewline).first(where: { $0.hasPrefix("cmdstat_wait:calls=") }) else { return 0 }
        return Int(line.dropFirst("cmdstat_wait:calls=".count).prefix { $0.isNumber }) ?? 0
    }
}
