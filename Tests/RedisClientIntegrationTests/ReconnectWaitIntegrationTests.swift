import Dispatch
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import RedisServerTesting
import Testing

@testable import Redis

/// Commands sent while the command connection reconnects (``RedisConfiguration/reconnectWait``):
/// they wait and go out in order once it is back, instead of failing with `notConnected`.
@Suite("Reconnect wait", .enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct ReconnectWaitIntegrationTests {
    /// A client whose reconnect takes a while (the backoff), so commands are sent in the gap.
    private func client(
        _ server: RedisServerProcess, group: any EventLoopGroup, perLoop: Bool = false, _ configure: (inout RedisConfiguration) -> Void = { _ in }
    )
        async throws -> RedisClient
    {
        var configuration = server.configuration
        configuration.commandConnectionPerEventLoop = perLoop
        configuration.reconnectBackoffMinimum = .milliseconds(400)
        configuration.reconnectBackoffMaximum = .milliseconds(400)
        configuration.reconnectWait = .seconds(30)
        configure(&configuration)
        let client = RedisClient(configuration: configuration, eventLoopGroup: group, enableSubscriptions: false)
        client.start()
        try await client.waitUntilConnected(timeout: .seconds(30))
        return client
    }

    @Test func commandsSentWhileReconnectingWaitAndKeepTheirOrder() async throws {
        let server = try await RedisServerProcess.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let client = try await client(server, group: group)
        // Down until the server is back (a window the test would have to catch by polling
        // could pass unseen on a loaded machine).
        server.kill()
        #expect(try await eventually { client.connectionState(.commands) != .connected })
        let sent = (0..<200).map { client.send(RawCommand("RPUSH", "order", .string("\($0)"))) }
        #expect(client.waitingCommands > 0)
        try await server.launch()
        let admin = try await server.connect()
        for (index, reply) in sent.enumerated() { #expect(try Int(fromRESP: try await reply.get()) == index + 1) }
        let order = try [String](fromRESP: try await admin.execute(RawCommand("LRANGE", "order", "0", "-1")))
        #expect(order == (0..<200).map { "\($0)" })
        #expect(client.waitingCommands == 0)
        await admin.close()
        await client.shutdown()
        try await group.shutdownGracefully()
    }

    /// With a connection per loop: both the loop's own and the shared one killed; the loop's
    /// commands wait for the shared one, and those sent after its own is back do not overtake them.
    @Test func aLoopsWaitingCommandsAreNotOvertakenOnItsOwnConnection() async throws {
        let server = try await RedisServerProcess.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let client = try await client(server, group: group, perLoop: true)
        #expect(try await eventually { client.hasOwnConnection(on: loop) })
        server.kill()
        #expect(try await eventually { client.connectionState(.commands) != .connected && !client.hasOwnConnection(on: loop) })
        let first = try await loop.submit { (0..<100).map { client.send(RawCommand("RPUSH", "order", .string("\($0)"))) } }.get()
        #expect(client.waitingCommands > 0)
        try await server.launch()
        let admin = try await server.connect()
        // More, from the loop, as the connections come back, until both are.
        var later: [EventLoopFuture<RESPToken>] = []
        var next = 100
        while next < 5_000 {
            later += try await loop.submit { [next] in (next..<next + 10).map { client.send(RawCommand("RPUSH", "order", .string("\($0)"))) } }.get()
            next += 10
            if client.hasOwnConnection(on: loop), client.connectionState(.commands) == .connected, client.waitingCommands == 0 { break }
            try await Task.sleep(for: .milliseconds(5))
        }
        for reply in first + later { _ = try await reply.get() }
        let order = try [String](fromRESP: try await admin.execute(RawCommand("LRANGE", "order", "0", "-1")))
        #expect(order == (0..<next).map { "\($0)" })
        await admin.close()
        await client.shutdown()
        try await group.shutdownGracefully()
    }

    /// A loop's own connection back before the shared one: what the loop held goes out there,
    /// in order, rather than waiting for the shared one (here held down by blocking its loop).
    @Test func aLoopsOwnConnectionBackFirstWritesWhatTheLoopHeld() async throws {
        let server = try await RedisServerProcess.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let other = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let otherLoop = other.next()
        var configuration = server.configuration
        configuration.commandConnectionPerEventLoop = true
        configuration.reconnectBackoffMinimum = .seconds(1)
        configuration.reconnectBackoffMaximum = .seconds(1)
        configuration.reconnectWait = .seconds(60)
        let client = RedisClient(configuration: configuration, eventLoopGroup: group, additionalCommandLoops: [otherLoop], enableSubscriptions: false)
        client.start()
        try await client.waitUntilConnected(timeout: .seconds(30))
        // Down until the server is back (a window the test would have to catch by polling
        // could pass unseen on a loaded machine); the shared connection's loop is blocked, so
        // only the loop's own connection can come back.
        server.kill()
        #expect(try await eventually { !client.hasOwnConnection(on: otherLoop) && client.connectionState(.commands) != .connected })
        let gate = DispatchSemaphore(value: 0)
        group.next().execute { _ = gate.wait(timeout: .now() + 60) }
        let held = try await otherLoop.submit { (0..<50).map { client.send(RawCommand("RPUSH", "order", .string("\($0)"))) } }.get()
        #expect(client.waitingCommands == 50)
        try await server.launch()
        let answered = NIOLockedValueBox(0)
        for reply in held { reply.whenSuccess { _ in answered.withLockedValue { $0 += 1 } } }
        // Answered on the loop's own connection while the shared one cannot be back.
        #expect(try await eventually { answered.withLockedValue { $0 } == 50 })
        #expect(client.connectionState(.commands) != .connected)
        let admin = try await server.connect()
        let values = try [String](fromRESP: try await admin.execute(RawCommand("LRANGE", "order", "0", "-1")))
        #expect(values == (0..<50).map { "\($0)" })
        gate.signal()
        await admin.close()
        await client.shutdown()
        try await group.shutdownGracefully()
        try await other.shutdownGracefully()
    }

    /// What a loop's own connection took from the queue (back before the shared one) is not
    /// overtaken by a command another loop sends while it is in flight (here behind a `BLPOP`
    /// blocking until the test pushes): that one waits (queued: the shared connection is still
    /// down), and goes on its own loop's connection once they were answered.
    @Test func anotherLoopsCommandWaitsForWhatALoopsOwnConnectionTookFromTheQueue() async throws {
        let server = try await RedisServerProcess.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let other = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let (x, y) = (other.next(), other.next())
        var configuration = server.configuration
        configuration.commandConnectionPerEventLoop = true
        configuration.reconnectBackoffMinimum = .milliseconds(100)
        configuration.reconnectBackoffMaximum = .milliseconds(100)
        configuration.reconnectWait = .seconds(60)
        configuration.commandTimeout = .seconds(60)
        let client = RedisClient(configuration: configuration, eventLoopGroup: group, additionalCommandLoops: [x, y], enableSubscriptions: false)
        client.start()
        try await client.waitUntilConnected(timeout: .seconds(30))
        // The shared connection's loop is blocked, so only the loops' own connections come back.
        server.kill()
        #expect(try await eventually { !client.hasOwnConnection(on: x) && client.connectionState(.commands) != .connected })
        let gate = DispatchSemaphore(value: 0)
        group.next().execute { _ = gate.wait(timeout: .now() + 60) }
        let held = try await x.submit { [client.send(RawCommand("BLPOP", "never", "0")), client.send(RawCommand("RPUSH", "order", "x"))] }.get()
        try await server.launch()
        #expect(try await eventually { client.waitingCommands == 0 && client.hasOwnConnection(on: y) })  // on x's own connection
        let later = try await y.submit { client.send(RawCommand("RPUSH", "order", "y")) }.get()
        #expect(client.waitingCommands == 1, "the later command was not held behind what x's connection took")
        let admin = try await server.connect()
        _ = try await admin.execute(RawCommand("RPUSH", "never", "v"))
        for reply in held + [later] { _ = try await reply.get() }
        #expect(try [String](fromRESP: try await admin.execute(RawCommand("LRANGE", "order", "0", "-1"))) == ["x", "y"])
        #expect(client.connectionState(.commands) != .connected)
        gate.signal()
        await admin.close()
        await client.shutdown()
        try await group.shutdownGracefully()
        try await other.shutdownGracefully()
    }

    @Test func aCommandWaitsAtMostTheReconnectWait() async throws {
        let server = try await RedisServerProcess.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let client = try await client(server, group: group) { $0.reconnectWait = .milliseconds(300) }
        server.kill()
        #expect(try await eventually { client.connectionState(.commands) != .connected })
        let start = ContinuousClock.now
        await #expect(throws: RedisClientError.notConnected) { try await client.execute(PING()) }
        #expect(ContinuousClock.now - start >= .milliseconds(300))
        #expect(client.waitingCommands == 0)
        await client.shutdown()
        try await group.shutdownGracefully()
    }

    @Test func zeroFailsAtOnceAndALongerOneOutlastsARestart() async throws {
        let server = try await RedisServerProcess.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let failFast = try await client(server, group: group) { $0.reconnectWait = .zero }
        let patient = try await client(server, group: group)
        server.kill()
        #expect(try await eventually { failFast.connectionState(.commands) != .connected && patient.connectionState(.commands) != .connected })
        await #expect(throws: RedisClientError.notConnected) { try await failFast.execute(PING()) }
        let waiting = patient.send(RawCommand("SET", "k", "v"))
        #expect(patient.waitingCommands == 1)
        try await server.launch()
        _ = try await waiting.get()
        #expect(try await patient.execute(GET("k")) == ByteBuffer(string: "v"))
        await failFast.shutdown()
        await patient.shutdown()
        try await group.shutdownGracefully()
    }

    /// A restarted server answers `-LOADING` while it loads its data set: the connection is
    /// used only once it is done, so a command sent meanwhile waits instead of failing.
    ///
    /// The command is sent right after the restart, and a probe then checks that the server was
    /// still loading. On a loaded machine the load can be over first (the round proves nothing):
    /// the round is run again with four times the keys.
    @Test func aCommandWaitsWhileARestartedServerLoads() async throws {
        let server = try await RedisServerProcess.start([
            "--enable-debug-command", "local", "--key-load-delay", "50", "--loading-process-events-interval-bytes", "1024",
        ])
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let client = try await client(server, group: group) { $0.reconnectBackoffMinimum = .milliseconds(20) }
        var keys = 20_000  // × 50 µs: a second of loading
        var sentWhileLoading = false
        for round in 0..<3 where !sentWhileLoading {
            let admin = try await server.connect()
            _ = try await admin.execute(RawCommand("DEBUG", "POPULATE", .string("\(keys)")))
            _ = try await admin.execute(RawCommand("SAVE"))
            await admin.close()
            server.kill()
            #expect(try await eventually { client.connectionState(.commands) != .connected })
            try await server.launch()
            let pending = client.send(RawCommand("SET", "after", .string("restart \(round)")))
            let probe = try await server.connect()  // HELLO is allowed while loading, PING is not
            do {
                _ = try await probe.execute(PING())
            } catch let error as RedisServerError where error.code == "LOADING" {
                sentWhileLoading = true
            }
            await probe.close()
            _ = try await pending.get()  // a LOADING error would throw
            #expect(try await client.execute(GET("after")) == ByteBuffer(string: "restart \(round)"))
            keys *= 4
        }
        #expect(sentWhileLoading, "the server was done loading before the probe, in every round")
        await client.shutdown()
        try await group.shutdownGracefully()
    }

    /// When the oldest held command's wait runs out, the ones held behind it fail with it: none
    /// is sent after an earlier one was refused (here B, sent half-way through A's wait, would
    /// otherwise still be waiting when the server is back).
    ///
    /// A round in which A's wait ran out before B was sent (a sleep overshooting on a loaded
    /// machine) proves nothing: it is run again with a wait four times as long.
    @Test func theCommandsHeldBehindAnExpiredOneFailWithIt() async throws {
        let server = try await RedisServerProcess.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var waitSeconds: Int64 = 2
        var sentBehind = false
        for round in 0..<3 where !sentBehind {
            let client = try await client(server, group: group) {
                $0.reconnectWait = .seconds(waitSeconds)
                $0.reconnectBackoffMinimum = .milliseconds(20)
                $0.reconnectBackoffMaximum = .milliseconds(40)
            }
            let key = "order\(round)"
            server.kill()
            #expect(try await eventually { client.connectionState(.commands) != .connected })
            let a = client.send(RawCommand("RPUSH", .string(key), "a"))
            try await Task.sleep(for: .milliseconds(waitSeconds * 500))
            sentBehind = client.waitingCommands == 1  // A still held
            let b = client.send(RawCommand("RPUSH", .string(key), "b"))
            await #expect(throws: RedisClientError.notConnected) { try await a.get() }
            try await server.launch()  // back while B would still have half of its wait
            if sentBehind {
                await #expect(throws: RedisClientError.notConnected) { try await b.get() }
            } else {
                _ = try? await b.get()
            }
            try await client.waitUntilConnected(timeout: .seconds(30))
            if sentBehind {
                #expect(try await client.execute(RawCommand("EXISTS", .string(key))) == RESPToken(validated: ByteBuffer(string: ":0\r\n")))
            }
            await client.shutdown()
            waitSeconds *= 4
        }
        #expect(sentBehind, "A's wait ran out before B was sent, in every round")
        try await group.shutdownGracefully()
    }

    /// A reconnect backoff grown long during an outage is cut short while commands wait: the
    /// server back, a held command goes out within its wait (here 15 s, the backoff 20 s).
    @Test func waitingCommandsCutTheReconnectBackoffShort() async throws {
        let server = try await RedisServerProcess.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let client = try await client(server, group: group) {
            $0.reconnectBackoffMinimum = .seconds(20)
            $0.reconnectBackoffMaximum = .seconds(20)
            $0.reconnectWait = .seconds(15)
        }
        server.kill()
        #expect(try await eventually { client.connectionState(.commands) == .disconnected })
        try await server.launch()
        _ = try await client.execute(RawCommand("SET", "k", "v"))  // a notConnected would throw
        #expect(try await client.execute(GET("k")) == ByteBuffer(string: "v"))
        await client.shutdown()
        try await group.shutdownGracefully()
    }

    /// The command connection back after a restart, the subscriber connection tries again at
    /// once, not after a backoff grown during the outage (here 30–60 s): what is published before
    /// it is back must be read from history, within its window.
    @Test func theSubscriberConnectionFollowsTheCommandConnectionBack() async throws {
        let server = try await RedisServerProcess.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var configuration = server.configuration
        configuration.reconnectBackoffMinimum = .seconds(60)
        configuration.reconnectBackoffMaximum = .seconds(60)
        configuration.reconnectWait = .seconds(15)
        let client = RedisClient(configuration: configuration, eventLoopGroup: group)
        client.start()
        try await client.waitUntilConnected(timeout: .seconds(30))
        server.kill()
        #expect(
            try await eventually {
                client.connectionState(.commands) == .disconnected && client.connectionState(.subscriptions) == .disconnected
            })
        try await server.launch()
        _ = try await client.execute(PING())  // the command connection is back (its backoff cut short)
        #expect(try await eventually(timeout: .seconds(30)) { client.connectionState(.subscriptions) == .connected })
        await client.shutdown()
        try await group.shutdownGracefully()
    }

    /// At a graceful stop (``RedisClient/stopWaiting()``) held commands fail at once as not
    /// sent, and so do later ones while the connection is down; once it is back, commands go
    /// out as before.
    @Test func stopWaitingFailsWhatWaitsAndWhatWouldWait() async throws {
        let server = try await RedisServerProcess.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let client = try await client(server, group: group)
        server.kill()
        #expect(try await eventually { client.connectionState(.commands) != .connected })
        let held = client.send(RawCommand("RPUSH", "order", "held"))
        #expect(client.waitingCommands == 1)
        client.stopWaiting()
        await #expect(throws: RedisClientError.notConnected) { try await held.get() }
        await #expect(throws: RedisClientError.notConnected) { try await client.send(RawCommand("RPUSH", "order", "later")).get() }
        try await server.launch()
        #expect(try await eventually(timeout: .seconds(30)) { client.connectionState(.commands) == .connected })
        _ = try await client.execute(RawCommand("RPUSH", "order", "connected"))
        #expect(try [String](fromRESP: try await client.execute(RawCommand("LRANGE", "order", "0", "-1"))) == ["connected"])
        await client.shutdown()
        try await group.shutdownGracefully()
    }

    @Test func theWaitingQueueHasALimitAndShutdownFailsWhatWaits() async throws {
        let server = try await RedisServerProcess.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let client = try await client(server, group: group) { $0.maximumWaitingCommands = 3 }
        server.kill()
        #expect(try await eventually { client.connectionState(.commands) != .connected })
        let sent = (0..<5).map { _ in client.send(PING()) }
        for refused in sent[3...] { await #expect(throws: RedisClientError.queueFull) { try await refused.get() } }
        #expect(client.waitingCommands == 3)
        await client.shutdown()
        for held in sent[..<3] { await #expect(throws: RedisClientError.shutdown) { try await held.get() } }
        try await group.shutdownGracefully()
    }
}
