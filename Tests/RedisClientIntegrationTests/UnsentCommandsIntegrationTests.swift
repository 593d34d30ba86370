import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import RedisServerTesting
import Testing

@testable import Redis

/// Commands written onto a connection Redis had already closed (`CLIENT KILL`): the write
/// fails (`EPIPE`), or the connection closes with them still queued, so Redis never got them.
/// They wait for the next connection like commands sent while disconnected, instead of failing
/// as not sent.
@Suite("Unsent commands", .enabled(if: RedisServerProcess.isAvailable, "redis-server not installed"))
struct UnsentCommandsIntegrationTests {
    /// A `CLIENT KILL` every 10 ms while pipelined `INCR`s stream (on the shared connection,
    /// and with a connection per loop from the loop): no command fails as not sent, none
    /// overtakes an earlier one; the only failures are commands Redis may have run (outcome
    /// unknown), and the counter agrees.
    @Test(arguments: [false, true])
    func aKillStormRefusesNothing(perLoop: Bool) async throws {
        let server = try await RedisServerProcess.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let loop = group.next()
        let client = try await startedClient(server, group, perLoop: perLoop, backoff: .milliseconds(2), .milliseconds(10))
        let admin = try await server.connect()
        let stop = ManagedAtomicFlag()
        let storm = Task {
            var kills = 0
            while !stop.isSet {
                if let killed = try? Int(fromRESP: try await admin.execute(RawCommand("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))) {
                    kills += killed
                }
                try? await Task.sleep(for: .milliseconds(10))
            }
            return kills
        }
        var values: [Int] = []
        var unknown = 0
        var refused: [String] = []
        for _ in 0..<300 {
            let replies = try await loop.submit { (0..<30).map { _ in client.send(RawCommand("INCR", "counter")) } }.get()
            for reply in replies {
                do {
                    values.append(try Int(fromRESP: try await reply.get()))
                } catch let error as RedisClientError where error == .connectionClosed || error == .commandTimeout {
                    unknown += 1
                } catch {
                    refused.append("\(error)")
                }
            }
        }
        stop.set()
        let kills = await storm.value
        #expect(kills > 10, "the storm killed \(kills) connections")
        #expect(refused.isEmpty, "\(refused.count) refused, e.g. \(refused.prefix(3))")
        // In the order sent: a command sent again is not overtaken by one sent after it.
        let overtaken = values.indices.dropFirst().first { values[$0] <= values[$0 - 1] }
        #expect(overtaken == nil, "out of order: \(overtaken.map { values[max(0, $0 - 5)..<min(values.count, $0 + 5)] } ?? [])")
        let counter = try Int(fromRESP: try await admin.execute(RawCommand("GET", "counter")))
        #expect(counter >= values.count && counter <= values.count + unknown, "counter \(counter), \(values.count) answered, \(unknown) unknown")
        await admin.close()
        await client.shutdown()
        try await group.shutdownGracefully()
    }
}

extension UnsentCommandsIntegrationTests {
    /// With a connection per loop, commands held from one loop are not overtaken by commands a
    /// second loop sends after them, even when that loop's own connection is back first (a
    /// client whose session ended on one loop reconnects on another).
    @Test func anotherLoopsLaterCommandsDoNotOvertakeHeldOnes() async throws {
        let server = try await RedisServerProcess.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let (a, b) = (group.next(), group.next())
        let client = try await startedClient(server, group, perLoop: true, backoff: .milliseconds(100), .milliseconds(400))
        let admin = try await server.connect()
        var expected: [String] = []
        for round in 0..<4 {
            #expect(try await eventually { client.hasOwnConnection(on: a) && client.hasOwnConnection(on: b) })
            _ = try await admin.execute(RawCommand("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))
            #expect(try await eventually { client.connectionState(.commands) != .connected && !client.hasOwnConnection(on: a) })
            let first = try await a.submit { (0..<20).map { client.send(RawCommand("RPUSH", "order", .string("r\(round)-a\($0)"))) } }.get()
            expected += (0..<20).map { "r\(round)-a\($0)" }
            var later: [EventLoopFuture<RESPToken>] = []
            var next = 0
            while next < 2_000 {
                later += try await b.submit { [next] in (next..<next + 5).map { client.send(RawCommand("RPUSH", "order", .string("r\(round)-b\($0)"))) } }.get()
                expected += (next..<next + 5).map { "r\(round)-b\($0)" }
                next += 5
                if client.connectionState(.commands) == .connected, client.hasOwnConnection(on: b), client.waitingCommands == 0 { break }
                try await Task.sleep(for: .milliseconds(2))
            }
            for reply in first + later { _ = try await reply.get() }
        }
        let order = try [String](fromRESP: try await admin.execute(RawCommand("LRANGE", "order", "0", "-1")))
        #expect(order == expected)
        await admin.close()
        await client.shutdown()
        try await group.shutdownGracefully()
    }
}

/// A started client that holds commands for 30 s while it reconnects.
private func startedClient(
    _ server: RedisServerProcess, _ group: any EventLoopGroup, perLoop: Bool, backoff minimum: TimeAmount, _ maximum: TimeAmount
) async throws -> RedisClient {
    var configuration = server.configuration
    configuration.commandConnectionPerEventLoop = perLoop
    configuration.reconnectBackoffMinimum = minimum
    configuration.reconnectBackoffMaximum = maximum
    configuration.reconnectWait = .seconds(30)
    let client = RedisClient(configuration: configuration, eventLoopGroup: group, enableSubscriptions: false)
    client.start()
    try await client.waitUntilConnected(timeout: .seconds(30))
    return client
}

/// A flag one task sets and another reads.
private final class ManagedAtomicFlag: Sendable {
    private let value = NIOLockedValueBox(false)
    var isSet: Bool { self.value.withLockedValue { $0 } }
    func set() { self.value.withLockedValue { $0 = true } }
}
