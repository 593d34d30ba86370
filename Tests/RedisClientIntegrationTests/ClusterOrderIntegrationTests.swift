import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import RedisServerTesting
import Testing

@testable import Redis

/// ``RedisClusterClient/send(_:)`` keeps the order of one slot's commands through redirects,
/// against real processes (3 primaries, 3 replicas, free ports).
@Suite("Real Redis Cluster: order per slot", .serialized, .enabled(if: RedisClusterProcess.isAvailable, "redis-server/redis-cli not installed"))
struct ClusterOrderIntegrationTests {
    func client(_ cluster: RedisClusterProcess) throws -> RedisClusterClient {
        var configuration = RedisConfiguration()
        configuration.password = cluster.password
        configuration.connectTimeout = .seconds(1)
        configuration.commandTimeout = .seconds(5)
        configuration.reconnectBackoffMaximum = .milliseconds(500)
        configuration.cluster = RedisClusterConfiguration(nodes: cluster.seeds, retryDelay: .milliseconds(20))
        var logger = Logger(label: "cluster-order-test")
        logger.logLevel = .critical
        let client = try RedisClusterClient(configuration: configuration, logger: logger)
        client.start()
        return client
    }

    /// A cluster, a client that has read its map, and the primary owning `key`.
    func start(owning key: String) async throws -> (RedisClusterProcess, RedisClusterClient, RedisServerProcess) {
        let cluster = try await RedisClusterProcess.start()
        let client = try self.client(cluster)
        _ = try await client.refreshTopology()
        return (cluster, client, try #require(try await cluster.owner(of: HashSlot(key: key))))
    }

    /// One writer pipelines `RPUSH`es to one key (a few per millisecond, never waiting for a reply)
    /// while the key's slot moves to another primary and back: its keys `MIGRATE`d (`ASK` for the
    /// commands that find the key gone), then the slot reassigned (`MOVED`). Every command succeeds
    /// and the list holds them in the order they were sent: a redirected command is not overtaken
    /// by a later one.
    @Test func sendKeepsTheOrderOfOneSlotThroughMovesAndAsks() async throws {
        let key = "{order}:list"
        let (cluster, client, source) = try await self.start(owning: key)
        defer { Task { await client.shutdown() } }
        let slot = HashSlot(key: key)
        let destination = try #require(try await cluster.primaries().first { $0 !== source })

        let total = 6_000
        let sent = NIOLockedValueBox<[EventLoopFuture<RESPToken>]>([])
        let writer = Task {
            for index in 0..<total {
                let future = client.send(RawCommand(arguments: ["RPUSH", .string(key), .string("\(index)")], keys: [key]))
                sent.withLockedValue { $0.append(future) }
                if index % 10 == 9 { try await Task.sleep(for: .microseconds(500)) }
            }
        }
        for (from, to) in [(source, destination), (destination, source)] {
            let started = sent.withLockedValue { $0.count }
            let progressed = try await eventually { sent.withLockedValue { $0.count } >= started + 1_000 }
            #expect(progressed)
            try await cluster.migrateSlot(slot, from: from, to: to)
        }
        try await writer.value

        var failures: [String] = []
        for future in sent.withLockedValue({ $0 }) {
            do { _ = try await future.get() } catch { failures.append("\(error)") }
        }
        #expect(failures.isEmpty, "every command succeeds through the redirects: \(failures.prefix(3))")
        let stored = try [String](fromRESP: try await client.execute(RawCommand(arguments: ["LRANGE", .string(key), "0", "-1"], keys: [key])))
        let values = stored.compactMap(Int.init)
        #expect(values.count == total, "each command ran once")
        let outOfOrder = zip(values, values.dropFirst()).filter { $0 >= $1 }
        #expect(outOfOrder.isEmpty, "\(outOfOrder.count) commands ran before an earlier one, e.g. \(outOfOrder.prefix(5))")
        #expect(client.detouredSendCount > 0, "commands were redirected")
    }

    /// `kill -9` of the key's primary while one writer pipelines `RPUSH`es: the commands sent while
    /// the replica takes over wait and then run in order. Some fail (in flight on the killed node:
    /// the outcome is unknown; or past the command timeout), explicitly; what the list holds is
    /// in the order of sending.
    @Test func sendKeepsTheOrderOfOneSlotThroughAFailover() async throws {
        let key = "{failover}:list"
        let (cluster, client, victim) = try await self.start(owning: key)
        defer { Task { await client.shutdown() } }
        let slot = HashSlot(key: key)

        let sent = NIOLockedValueBox<[EventLoopFuture<RESPToken>]>([])
        let stop = NIOLockedValueBox(false)
        let writer = Task {
            var index = 0
            while !stop.withLockedValue({ $0 }) {
                let future = client.send(RawCommand(arguments: ["RPUSH", .string(key), .string("\(index)")], keys: [key]))
                sent.withLockedValue { $0.append(future) }
                index += 1
                if index % 10 == 0 { try await Task.sleep(for: .milliseconds(1)) }
            }
        }
        #expect(try await eventually { sent.withLockedValue { $0.count } >= 1_000 })
        victim.kill()
        let recovered = try await eventually(timeout: .seconds(30)) { try await cluster.owner(of: slot).map { $0 !== victim } ?? false }
        #expect(recovered, "a replica takes the slot over")
        let afterFailover = sent.withLockedValue { $0.count }
        #expect(try await eventually { sent.withLockedValue { $0.count } >= afterFailover + 1_000 })
        stop.withLockedValue { $0 = true }
        try await writer.value

        var succeeded = 0
        for future in sent.withLockedValue({ $0 }) where (try? await future.get()) != nil { succeeded += 1 }
        let stored = try [String](fromRESP: try await client.execute(RawCommand(arguments: ["LRANGE", .string(key), "0", "-1"], keys: [key])))
        let values = stored.compactMap(Int.init)
        #expect(succeeded > 1_000, "commands succeed after the failover")
        #expect(values.count >= succeeded - 1_000, "the list holds what succeeded (less what the replica had not received)")
        #expect(Set(values).count == values.count, "no command ran twice")
        let outOfOrder = zip(values, values.dropFirst()).filter { $0 >= $1 }
        #expect(outOfOrder.isEmpty, "\(outOfOrder.count) commands ran before an earlier one, e.g. \(outOfOrder.prefix(5))")
        #expect(client.detouredSendCount > 0, "commands waited for the failover")
    }
}
