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
@Suite("Unsent commands", .enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
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
        let kills = NIOLockedValueBox(0)
        let storm = Task {
            while !stop.isSet {
                if let killed = try? Int(fromRESP: try await admin.execute(RawCommand("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))) {
                    kills.withLockedValue { $0 += killed }
                }
                try? await Task.sleep(for: .milliseconds(10))
            }
        }
        var values: [Int] = []
        var unknown = 0
        var refused: [String] = []
        // 300 batches, and more while the storm has not killed 20 connections yet (a loaded
        // machine may run the storm's task late).
        var batches = 0
        while batches < 300 || (kills.withLockedValue { $0 } < 20 && batches < 10_000) {
            batches += 1
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
        await storm.value
        #expect(kills.withLockedValue { $0 } >= 20, "the storm killed \(kills.withLockedValue { $0 }) connections")
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
        for round in 0..<4 {
            #expect(
                try await eventually {
                    client.connectionState(.commands) == .connected && client.hasOwnConnection(on: a) && client.hasOwnConnection(on: b)
                })
            // Down until the server is back (a window the test would have to catch by polling
            // could pass unseen on a loaded machine).
            server.kill()
            #expect(try await eventually { client.connectionState(.commands) != .connected && !client.hasOwnConnection(on: a) })
            let first = try await a.submit { (0..<20).map { client.send(RawCommand("RPUSH", "order", .string("a\($0)"))) } }.get()
            var expected = (0..<20).map { "a\($0)" }
            try await server.launch()
            var later: [EventLoopFuture<RESPToken>] = []
            var next = 0
            while next < 2_000 {
                later += try await b.submit { [next] in (next..<next + 5).map { client.send(RawCommand("RPUSH", "order", .string("b\($0)"))) } }.get()
                expected += (next..<next + 5).map { "b\($0)" }
                next += 5
                if client.connectionState(.commands) == .connected, client.hasOwnConnection(on: b), client.waitingCommands == 0 { break }
                try await Task.sleep(for: .milliseconds(2))
            }
            for reply in first + later { _ = try await reply.get() }
            let admin = try await server.connect()
            let order = try [String](fromRESP: try await admin.execute(RawCommand("LRANGE", "order", "0", "-1")))
            #expect(order == expected, "round \(round)")
            await admin.close()
        }
        await client.shutdown()
        try await group.shutdownGracefully()
    }
}

extension UnsentCommandsIntegrationTests {
    /// Two connections may hand back what they could not write at once: the shared one a batch
    /// of older commands it took from the queue, a loop's own newer ones it was sent directly.
    /// They are written, once a connection is back, in the order the client took them (and
    /// ahead of the commands that only waited).
    @Test func commandsHandedBackAtOnceByTwoConnectionsKeepTheirOrder() async throws {
        let order = try await listWithServerDown { server, client, loop in
            var replies: [EventLoopFuture<RESPToken>] = []
            // The loop's own connection hands back 5 and 6 first; then the shared one 3, 4, 7.
            for ticket in [5, 6, 3, 4, 7] as [UInt64] {
                let command = outbound(RawCommand("RPUSH", "order", .string("t\(ticket)")), on: loop, CommandPlace(ticket: ticket))
                #expect(client.holdUnsent(command, from: nil))
                replies.append(command.promise.futureResult)
            }
            let waited = client.send(RawCommand("RPUSH", "order", "waited"))
            try await server.launch()
            for reply in replies + [waited] { _ = try await reply.get() }
        }
        #expect(order == ["t3", "t4", "t5", "t6", "t7", "waited"])
    }

    /// A command handed back once more keeps the deadline it was first held with:
    /// `reconnectWait` (30 s here) bounds its whole wait, however many connections failed to
    /// write it. One whose deadline passed fails at once, as not sent, with those held behind it.
    @Test func aCommandHandedBackAgainKeepsItsDeadline() async throws {
        let order = try await listWithServerDown { server, client, loop in
            // Held together (on the loop, so that the first one's expiry cannot come between).
            let (late, behind) = try await loop.submit {
                let late = outbound(RawCommand("RPUSH", "order", "late"), on: loop, CommandPlace(ticket: 1, heldUntil: .now() - .milliseconds(1)))
                let behind = outbound(RawCommand("RPUSH", "order", "behind"), on: loop, CommandPlace(ticket: 2))
                #expect(client.holdUnsent(late, from: nil) && client.holdUnsent(behind, from: nil))
                return (late.promise.futureResult, behind.promise.futureResult)
            }.get()
            // Back long before the 30 s a new wait would give them: they failed already.
            try await server.launch()
            await #expect(throws: RedisClientError.notConnected) { try await late.get() }
            await #expect(throws: RedisClientError.notConnected) { try await behind.get() }
        }
        #expect(order == [])
    }

    /// A held command refused (its wait ran out): a command taken before that moment, and
    /// handed back only after it (it was on its way to a connection that was closing), fails
    /// too, as not sent; it may have been sent after the refused one, and would leave a gap.
    @Test func aCommandHandedBackAfterAnEarlierOneWasRefusedFailsToo() async throws {
        let order = try await listWithServerDown(
            before: { client in for _ in 0..<3 { _ = try await client.execute(PING()) } }  // tickets 1...3 taken
        ) { server, client, loop in
            let refused = outbound(RawCommand("RPUSH", "order", "refused"), on: loop, CommandPlace(ticket: 1, heldUntil: .now() - .milliseconds(1)))
            #expect(client.holdUnsent(refused, from: nil))
            await #expect(throws: RedisClientError.notConnected) { try await refused.promise.futureResult.get() }
            let after = outbound(RawCommand("RPUSH", "order", "after"), on: loop, CommandPlace(ticket: 2))
            #expect(client.holdUnsent(after, from: nil))
            // Commands taken from now on wait as before.
            let fresh = client.send(RawCommand("RPUSH", "order", "fresh"))
            try await server.launch()
            await #expect(throws: RedisClientError.notConnected) { try await after.promise.futureResult.get() }
            _ = try await fresh.get()
        }
        #expect(order == ["fresh"])
    }
}

extension UnsentCommandsIntegrationTests {
    /// With a connection per loop, a loop's command queued behind a held one (here one handed
    /// back) goes on the shared connection only once the loop's own connection answered what
    /// it had in flight (a `BLPOP` blocking until the test pushes what it waits for, once the
    /// held one was answered): it could run first. What is queued ahead of it goes at once.
    @Test func aLoopsQueuedCommandWaitsForWhatItsOwnConnectionOwes() async throws {
        let server = try await RedisServerProcess.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let loop = group.next()
        let client = try await startedClient(server, group, perLoop: true, backoff: .milliseconds(10), .milliseconds(50))
        #expect(try await eventually { client.hasOwnConnection(on: loop) })
        let completed = NIOLockedValueBox<[String]>([])
        let replies = try await loop.submit {
            let blocking = client.send(RawCommand("BLPOP", "nothing", "0"))
            let held = outbound(RawCommand("RPUSH", "order", "held"), on: loop, CommandPlace())
            #expect(client.holdUnsent(held, from: nil))
            let queued = client.send(RawCommand("RPUSH", "order", "queued"))
            blocking.whenComplete { _ in completed.withLockedValue { $0.append("blocking") } }
            held.promise.futureResult.whenComplete { _ in completed.withLockedValue { $0.append("held") } }
            queued.whenComplete { _ in completed.withLockedValue { $0.append("queued") } }
            return [blocking, held.promise.futureResult, queued]
        }.get()
        _ = try await replies[1].get()  // held
        let admin = try await server.connect()
        _ = try await admin.execute(RawCommand("RPUSH", "nothing", "x"))
        await admin.close()
        for reply in replies { _ = try await reply.get() }
        #expect(completed.withLockedValue { $0 } == ["held", "blocking", "queued"])
        await client.shutdown()
        try await group.shutdownGracefully()
    }
}

extension UnsentCommandsIntegrationTests {
    /// Commands taken from the queue and still in flight on the shared connection (here behind
    /// a `BLPOP` blocking until the test pushes) are not overtaken by commands another loop
    /// sends then (a client whose session ended on one loop, reconnected on another): they go
    /// on the shared connection behind them, not on their loop's own, and the loop goes back to
    /// its own once they were answered.
    @Test func anotherLoopsCommandDoesNotOvertakeDrainedOnes() async throws {
        let server = try await RedisServerProcess.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let (a, b) = (group.next(), group.next())
        let client = try await startedClient(server, group, perLoop: true, backoff: .milliseconds(10), .milliseconds(50))
        #expect(try await eventually { client.hasOwnConnection(on: a) && client.hasOwnConnection(on: b) })
        let held = try await a.submit {
            let blocking = outbound(RawCommand("BLPOP", "never", "0"), on: a, CommandPlace())
            let first = outbound(RawCommand("RPUSH", "order", "a"), on: a, CommandPlace())
            #expect(client.holdUnsent(blocking, from: ObjectIdentifier(a)))
            #expect(client.holdUnsent(first, from: ObjectIdentifier(a)))
            return [blocking.promise.futureResult, first.promise.futureResult]
        }.get()
        // Taken from the queue, written on the shared connection, and the queue closed.
        #expect(try await eventually { !client.queueOpen })
        let later = try await b.submit { (1...3).map { client.send(RawCommand("RPUSH", "order", .string("b\($0)"))) } }.get()
        #expect(!client.usesOwnConnection(on: b), "the later commands went on their loop's own connection")
        let admin = try await server.connect()
        _ = try await admin.execute(RawCommand("RPUSH", "never", "x"))
        for reply in held + later { _ = try await reply.get() }
        #expect(try [String](fromRESP: try await admin.execute(RawCommand("LRANGE", "order", "0", "-1"))) == ["a", "b1", "b2", "b3"])
        #expect(try await eventually { client.usesOwnConnection(on: b) }, "back on its own connection once they were answered")
        await admin.close()
        await client.shutdown()
        try await group.shutdownGracefully()
    }
}

/// Runs `body` with a started client (one loop, not a connection per loop) whose server was
/// killed (after `before`); `body` launches it again. Returns the list `order` then.
private func listWithServerDown(
    before: (RedisClient) async throws -> Void = { _ in },
    _ body: (RedisServerProcess, RedisClient, any EventLoop) async throws -> Void
) async throws -> [String] {
    let server = try await RedisServerProcess.start()
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let client = try await startedClient(server, group, perLoop: false, backoff: .milliseconds(10), .milliseconds(50))
    try await before(client)
    server.kill()
    #expect(try await eventually { client.connectionState(.commands) != .connected })
    try await body(server, client, group.next())
    let admin = try await server.connect()
    let order = try [String](fromRESP: try await admin.execute(RawCommand("LRANGE", "order", "0", "-1")))
    await admin.close()
    await client.shutdown()
    try await group.shutdownGracefully()
    return order
}

/// `command` as a connection hands it back unwritten, at `place` among the client's.
private func outbound(_ command: RawCommand, on loop: any EventLoop, _ place: CommandPlace) -> RedisOutboundCommand {
    var encoder = RESPCommandEncoder()
    command.encode(into: &encoder)
    return RedisOutboundCommand(bytes: encoder.buffer, promise: loop.makePromise(), place: place)
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
    configuration.commandTimeout = .seconds(30)  // a test's BLPOP blocks until the test pushes
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
