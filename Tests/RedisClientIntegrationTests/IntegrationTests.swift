import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import RedisServerTesting
import Testing

@testable import Redis

@Suite("Real redis-server", .enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct IntegrationTests {
    @Test func pingGetSetAndPipelining() async throws {
        let server = try await RedisServerProcess.start()
        let connection = try await server.connect()
        #expect(connection.protocolVersion == 3)
        #expect(try await connection.execute(PING()) == "PONG")
        #expect(try await connection.execute(PING(message: "hi")) == "hi")
        #expect(try await connection.execute(SET("k", value: .bytes(ByteBuffer(bytes: [0, 255])))) != nil)
        #expect(try await connection.execute(SET("k", value: "x", condition: .onlyIfNotExists)) == nil)
        #expect(try await connection.execute(GET("k")) == ByteBuffer(bytes: [0, 255]))
        #expect(try await connection.execute(DEL("k", "missing")) == 1)
        #expect(try await connection.execute(GET("k")) == nil)

        // 1000 pipelined INCRs: replies must come back in order.
        let futures = (0..<1000).map { _ in connection.send(RawCommand("INCR", "counter")) }
        var values: [Int] = []
        for future in futures { values.append(try Int(fromRESP: try await future.get())) }
        #expect(values == Array(1...1000))
        await connection.close()
        // After the close: not sent (not "outcome unknown").
        await #expect(throws: RedisClientError.notConnected) { try await connection.execute(PING()) }
    }

    /// The server is demoted (`REPLICAOF`) while the client's command connection stays open:
    /// every write answered `READONLY` for as long as the connection lived. The first one now
    /// closes it and the client reconnects (to the primary again here, once promoted back).
    @Test func aReadOnlyAnswerMakesTheClientReconnect() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let other = try await RedisServerProcess.start()
        defer { other.stop() }
        let client = try await server.client {
            $0.reconnectBackoffMinimum = .milliseconds(10)
            $0.reconnectBackoffMaximum = .milliseconds(100)
        }
        #expect(try await client.execute(SET("k", value: "before")) != nil)
        let admin = try await server.connect()
        _ = try await admin.execute(RawCommand("REPLICAOF", "127.0.0.1", .string("\(other.port)")))
        let refused = await #expect(throws: RedisServerError.self) { try await client.execute(SET("k", value: "demoted")) }
        #expect(refused?.isReadOnly == true, "\(String(describing: refused))")
        #expect(try await eventually(timeout: .seconds(10)) { client.commandReconnectCount > 0 }, "the client reconnected")
        _ = try await admin.execute(RawCommand("REPLICAOF", "NO", "ONE"))
        #expect(try await eventually(timeout: .seconds(10)) { (try? await client.execute(SET("k", value: "after"))) != nil })
        await admin.close()
        await client.shutdown()
    }

    /// A replica at the configured address with a write among the connection's setup commands
    /// (the gateway loads its functions so): each new connection is closed for its `READONLY`.
    /// The attempts back off as failed ones; they went on every 10 ms (the minimum backoff),
    /// each waking every other reconnect loop.
    @Test func aReplicaRefusingTheSetupIsRetriedWithBackoff() async throws {
        let primary = try await RedisServerProcess.start()
        defer { primary.stop() }
        let replica = try await RedisServerProcess.startReplica(of: primary)
        defer { replica.stop() }
        var configuration = replica.configuration
        configuration.reconnectBackoffMinimum = .milliseconds(10)
        configuration.reconnectBackoffMaximum = .milliseconds(500)
        let observer = try await replica.connect()
        @Sendable func connectionsReceived() async throws -> Int {
            let info = try await observer.execute(RawCommand("INFO", "stats"))
            let text: String
            switch info.value {
            case .bulkString(let buffer), .verbatimString(let buffer): text = String(buffer: buffer)
            default: text = ""
            }
            let line = text.split(whereSeparator: \.isNewline).first { $0.hasPrefix("total_connections_received:") }
            return line.flatMap { Int($0.split(separator: ":")[1]) } ?? 0
        }
        let before = try await connectionsReceived()
        let client = RedisClient(configuration: configuration, enableSubscriptions: false)
        client.addConnectionSetup(["SET", "setup", "1"])
        client.start()
        defer { Task { await client.shutdown() } }
        #expect(try await eventually(timeout: .seconds(10)) { try await connectionsReceived() - before >= 3 }, "attempts made")
        let start = try await connectionsReceived()
        let clock = ContinuousClock()
        let from = clock.now
        #expect(try await eventually(timeout: .seconds(10)) { clock.now - from >= .seconds(2) })
        // Backing off to 500 ms: a handful in 2 s; every 10 ms, about 200.
        let attempts = try await connectionsReceived() - start
        #expect(attempts < 30, "\(attempts) connections in 2 s")
        #expect(client.commandReconnectCount == 0, "never taken as connected")
        await observer.close()
    }

    @Test func commandConnectionPerEventLoop() async throws {
        let server = try await RedisServerProcess.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        var configuration = server.configuration
        configuration.commandConnectionPerEventLoop = true
        configuration.reconnectBackoffMinimum = .milliseconds(10)
        let client = RedisClient(configuration: configuration, eventLoopGroup: group, enableSubscriptions: false)
        client.start()
        try await client.waitUntilConnected(timeout: .seconds(30))
        let loops = Array(group.makeIterator())
        @Sendable func clientID(on loop: (any EventLoop)?) async throws -> Int {
            guard let loop else { return try Int(fromRESP: try await client.execute(RawCommand("CLIENT", "ID"))) }
            return try await loop.flatSubmit { client.send(RawCommand("CLIENT", "ID")) }.flatMapThrowing { try Int(fromRESP: $0) }.get()
        }
        let shared = try await clientID(on: nil)
        // Each loop gets its own connection once it is up (the shared one serves meanwhile).
        var own: [Int] = []
        let deadline = ContinuousClock.now + .seconds(30)
        repeat {
            own = [try await clientID(on: loops[0]), try await clientID(on: loops[1])]
            if Set(own + [shared]).count == 3 { break }
            try await Task.sleep(for: .milliseconds(20))
        } while ContinuousClock.now < deadline
        #expect(Set(own + [shared]).count == 3)
        // A loop's commands keep their order on its connection.
        let counts = try await loops[0].flatSubmit {
            EventLoopFuture.whenAllSucceed((0..<500).map { _ in client.send(RawCommand("INCR", "n")).flatMapThrowing { try Int(fromRESP: $0) } }, on: loops[0])
        }.get()
        #expect(counts == Array(1...500))
        // Killed: commands fall back to the shared connection, then the loop reconnects its own.
        _ = try await client.execute(RawCommand("CLIENT", "KILL", "ID", .integer(own[0])))
        // A command already on its way over the killed connection fails (explicitly); later
        // ones use the shared connection until the loop's own is back.
        var again: Int?
        let reconnectDeadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < reconnectDeadline {
            again = try? await clientID(on: loops[0])
            if let id = again, id != shared, id != own[0] { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(again != nil && again != shared && again != own[0])
        await client.shutdown()
        try await group.shutdownGracefully()
    }

    /// A loop's commands sent on the shared connection while its own was down are not overtaken
    /// by later ones on its own connection once it is back (a probe found a session's pipelined
    /// `XADD`s stored out of order after a `CLIENT KILL`).
    @Test func aLoopsCommandsKeepTheirOrderAcrossTheFallback() async throws {
        let server = try await RedisServerProcess.start()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var configuration = server.configuration
        configuration.commandConnectionPerEventLoop = true
        // The own connection stays down a second after the kill: a window the poll below sees
        // on a loaded machine too.
        configuration.reconnectBackoffMinimum = .seconds(1)
        configuration.reconnectBackoffMaximum = .seconds(1)
        configuration.commandTimeout = .seconds(30)
        let client = RedisClient(configuration: configuration, eventLoopGroup: group, enableSubscriptions: false)
        client.start()
        try await client.waitUntilConnected(timeout: .seconds(30))
        let loop = group.next()
        @Sendable func waitFor(_ what: String, _ condition: @escaping @Sendable () -> Bool) async throws {
            let deadline = ContinuousClock.now + .seconds(30)
            while !condition() {
                guard ContinuousClock.now < deadline else { throw RedisClientError.connectTimeout }
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        try await waitFor("the loop's own connection") { client.hasOwnConnection(on: loop) }
        let own = try await loop.flatSubmit { client.send(RawCommand("CLIENT", "ID")) }.flatMapThrowing { try Int(fromRESP: $0) }.get()
        _ = try await client.execute(RawCommand("CLIENT", "KILL", "ID", .integer(own)))
        try await waitFor("the fallback") { !client.hasOwnConnection(on: loop) }
        // On the shared connection: a blocking read holds it (until the test pushes what it
        // waits for), and "first" waits behind it...
        let held = try await loop.submit {
            (client.send(RawCommand("BLPOP", "never", "0")), client.send(RawCommand("RPUSH", "order", "first")))
        }.get()
        // ...while the loop's own connection comes back.
        try await waitFor("the reconnect") { client.hasOwnConnection(on: loop) }
        #expect(!client.usesOwnConnection(on: loop))
        let second = try await loop.submit { client.send(RawCommand("RPUSH", "order", "second")) }.get()
        let admin = try await server.connect()
        _ = try await admin.execute(RawCommand("RPUSH", "never", "x"))
        await admin.close()
        _ = try await held.0.get()
        _ = try await held.1.get()
        _ = try await second.get()
        let order = try [String](fromRESP: try await client.execute(RawCommand("LRANGE", "order", "0", "-1")))
        #expect(order == ["first", "second"])
        // Once the shared connection answered, the loop's commands use its own again.
        try await waitFor("back on its own connection") { client.usesOwnConnection(on: loop) }
        await client.shutdown()
        try await group.shutdownGracefully()
    }

    /// A wait for the connections that times out says which one is not up, and why.
    @Test func aConnectTimeoutSaysWhichConnectionIsDownAndWhy() async throws {
        // A port bound but not listening, held for the whole test: every connect is refused,
        // and no other process can take it meanwhile (a port found free could be).
        let held = try LoopbackSocket()
        defer { held.close() }
        let port = held.port
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        var configuration = RedisConfiguration(host: "127.0.0.1", port: port)
        configuration.reconnectBackoffMinimum = .milliseconds(10)
        let client = RedisClient(configuration: configuration, logger: logger)
        client.start()
        // A first attempt has failed (on a loaded machine it may take a while).
        #expect(try await eventually { client.lastConnectError(.commands) != nil && client.lastConnectError(.subscriptions) != nil })
        do {
            try await client.waitUntilConnected(timeout: .milliseconds(100))
            Issue.record("connected to a port nobody listens on")
        } catch let error as RedisClientError {
            #expect(error == .connectTimeout)
            let detail = error.detail ?? ""
            #expect(detail.contains("commands") && detail.contains("subscriptions"), "\(detail)")
            #expect(detail.contains("refused"), "the last connect error: \(detail)")
        }
        await client.shutdown()
    }

    @Test func publishSubscribeAndCallbacks() async throws {
        let server = try await RedisServerProcess.start()
        let client = RedisClient(configuration: server.configuration)
        client.start()
        defer { Task { await client.shutdown() } }
        try await client.waitUntilConnected(timeout: .seconds(30))

        let subscription = try await client.subscribe(to: ["news"])
        let received = NIOLockedValueBox<[String]>([])
        let callback = try await client.subscribe(to: ["news"]) { message in
            received.withLockedValue { $0.append(message.channel + ":" + String(buffer: message.payload)) }
        }
        #expect(try await client.execute(PUBLISH(channel: "news", message: "hello")) == 1)
        let message = try #require(try await nextMessage(subscription))
        #expect(message.channel == "news" && String(buffer: message.payload) == "hello" && message.pattern == nil)
        #expect(try await eventually { received.withLockedValue { $0 } == ["news:hello"] })

        let patterns = try await client.subscribe(to: ["ne*"], kind: .pattern)
        _ = try await client.execute(PUBLISH(channel: "nets", message: .bytes(ByteBuffer(bytes: [1, 2]))))
        let pmessage = try #require(try await nextMessage(patterns))
        #expect(pmessage.kind == .pattern && pmessage.pattern == "ne*" && pmessage.channel == "nets")
        #expect(pmessage.payload == ByteBuffer(bytes: [1, 2]))

        let shard = try await client.subscribe(to: ["orders"], kind: .shardChannel)
        #expect(try await client.execute(SPUBLISH(channel: "orders", message: "o1")) == 1)
        let smessage = try #require(try await nextMessage(shard))
        #expect(smessage.kind == .shardChannel && smessage.channel == "orders" && String(buffer: smessage.payload) == "o1")

        await callback.unsubscribe()
        await subscription.unsubscribe()
        await patterns.unsubscribe()
        await shard.unsubscribe()
    }

    @Test func boundedBufferDropsOldest() async throws {
        let server = try await RedisServerProcess.start()
        let client = RedisClient(configuration: server.configuration)
        client.start()
        defer { Task { await client.shutdown() } }
        try await client.waitUntilConnected(timeout: .seconds(30))
        let subscription = try await client.subscribe(to: ["burst"], bufferSize: 3)
        let marker = NIOLockedValueBox(0)
        let callback = try await client.subscribe(to: ["burst"]) { _ in marker.withLockedValue { $0 += 1 } }
        for i in 0..<10 { _ = try await client.execute(PUBLISH(channel: "burst", message: .integer(i))) }
        #expect(try await eventually { marker.withLockedValue { $0 } == 10 })
        #expect(subscription.droppedMessageCount == 7)
        var payloads: [String] = []
        for _ in 0..<3 { payloads.append(try await nextMessage(subscription).map { String(buffer: $0.payload) } ?? "timeout") }
        #expect(payloads == ["7", "8", "9"])
        await callback.unsubscribe()
        await subscription.unsubscribe()
        // A dedicated connection is independent of the shared one.
        let name = try await client.withDedicatedConnection { connection in
            try await connection.execute(RawCommand("CLIENT", "ID")).description
        }
        #expect(!name.isEmpty)
    }

    @Test func referenceCountedUnsubscribe() async throws {
        let server = try await RedisServerProcess.start()
        let client = RedisClient(configuration: server.configuration)
        client.start()
        defer { Task { await client.shutdown() } }
        try await client.waitUntilConnected(timeout: .seconds(30))

        @Sendable func serverSubscribers(_ channel: String) async throws -> Int {
            let reply = try await client.execute(RawCommand("PUBSUB", "NUMSUB", .string(channel)))
            let elements = try #require(reply.flattenedElements())
            return try Int(fromRESP: elements[1])
        }

        let first = try await client.subscribe(to: ["room"])
        try await client.withSubscription(to: ["room"]) { second in
            #expect(try await serverSubscribers("room") == 1)
            await first.unsubscribe()
            #expect(try await serverSubscribers("room") == 1)  // `second` still listens
            _ = try await client.execute(PUBLISH(channel: "room", message: "still here"))
            #expect(try await nextMessage(second).map { String(buffer: $0.payload) } == "still here")
        }
        #expect(try await serverSubscribers("room") == 0)
        // Iteration of the unsubscribed stream ends.
        var iterator = first.makeAsyncIterator()
        #expect(await iterator.next() == nil)
    }

    @Test func streamsAddReadTrim() async throws {
        let server = try await RedisServerProcess.start()
        let connection = try await server.connect()
        let binary = ByteBuffer(bytes: [0, 13, 10, 200])
        var ids: [String] = []
        for i in 0..<5 {
            ids.append(try await connection.execute(XADD(key: "events", maxLength: 1000, fields: [("n", .integer(i)), ("blob", .bytes(binary))])))
        }
        let result = try #require(try await connection.execute(XREAD(count: 10, streams: [("events", "0")])))
        #expect(result["events"].map(\.id) == ids)
        #expect(result["events"].first?[field: "blob"] == binary)
        #expect(result["events"].last?[field: "n"] == ByteBuffer(string: "4"))
        #expect(try await connection.execute(XTRIM(key: "events", strategy: .maxLength(2), approximate: false)) == 3)
        #expect(try await connection.execute(XLEN(key: "events")) == 2)

        // Blocking reads on a dedicated connection: timeout gives nil, a new entry wakes the reader.
        let reader = try await server.connect()
        #expect(try await reader.execute(XREAD(blockMilliseconds: 50, streams: [("events", "$")])) == nil)
        // After the last entry by id, not `$`: a read reaching Redis after the XADD below (a
        // loaded machine) would block past the new entry with `$`.
        async let woken = reader.execute(XREAD(blockMilliseconds: 5000, streams: [("events", ids.last!)]))
        try await Task.sleep(for: .milliseconds(100))
        #expect(try await connection.execute(PING()) == "PONG")  // the multiplexed connection is not stalled
        let newID = try await connection.execute(XADD(key: "events", fields: [("n", "late")]))
        #expect(try await woken?["events"].map(\.id) == [newID])

        // RESP2 connection decodes the array shape.
        let resp2 = try await server.connect { $0.protocolPreference = .resp2 }
        #expect(resp2.protocolVersion == 2)
        let viaRESP2 = try #require(try await resp2.execute(XREAD(streams: [("events", "0")])))
        #expect(viaRESP2["events"].last?.id == newID)
        for c in [connection, reader, resp2] { await c.close() }
    }

    @Test func consumerGroups() async throws {
        let server = try await RedisServerProcess.start()
        let connection = try await server.connect()
        _ = try await connection.execute(XGROUPCREATE(key: "jobs", group: "workers", id: "0", makeStream: true))
        await #expect {
            try await connection.execute(XGROUPCREATE(key: "jobs", group: "workers", id: "0", makeStream: true))
        } throws: { ($0 as? RedisServerError)?.isBusyGroup == true }

        let first = try await connection.execute(XADD(key: "jobs", fields: [("job", "a")]))
        let second = try await connection.execute(XADD(key: "jobs", fields: [("job", "b")]))
        let read = try #require(try await connection.execute(XREADGROUP(group: "workers", consumer: "c1", count: 10, streams: [("jobs", ">")])))
        #expect(read["jobs"].map(\.id) == [first, second])

        var summary = try await connection.execute(XPENDING(key: "jobs", group: "workers"))
        #expect(summary.count == 2 && summary.smallestID == first && summary.greatestID == second)
        #expect(summary.consumers.map(\.name) == ["c1"] && summary.consumers.map(\.pending) == [2])
        #expect(try await connection.execute(XACK(key: "jobs", group: "workers", ids: [first])) == 1)
        summary = try await connection.execute(XPENDING(key: "jobs", group: "workers"))
        #expect(summary.count == 1)

        // c2 takes over the entry c1 left idle.
        try await Task.sleep(for: .milliseconds(60))
        let claim = try await connection.execute(XAUTOCLAIM(key: "jobs", group: "workers", consumer: "c2", minIdleMilliseconds: 50))
        #expect(claim.entries.map(\.id) == [second])
        #expect(claim.entries.first?[field: "job"] == ByteBuffer(string: "b"))
        #expect(claim.nextStartID == "0-0")
        let pending = try await connection.execute(XPENDINGRANGE(key: "jobs", group: "workers", count: 10))
        #expect(pending.map(\.consumer) == ["c2"] && pending.first?.deliveryCount == 2)

        // NOACK + blocking read on a dedicated connection that times out.
        let blocking = try await server.connect()
        #expect(try await blocking.execute(XREADGROUP(group: "workers", consumer: "c3", blockMilliseconds: 30, noAck: true, streams: [("jobs", ">")])) == nil)
        await blocking.close()
        await connection.close()
    }

    @Test func scripting() async throws {
        let server = try await RedisServerProcess.start()
        let connection = try await server.connect()
        let reply = try await connection.execute(EVAL(script: "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}", keys: ["k"], arguments: ["a", 41]))
        guard case .array(let elements) = reply.value else { Issue.record("expected array, got \(reply)"); return }
        let items = Array(elements)
        #expect(try String(fromRESP: items[0]) == "k" && String(fromRESP: items[1]) == "a" && Int(fromRESP: items[2]) == 42)
        let sha = try await connection.execute(SCRIPTLOAD(script: "return redis.call('INCRBY', KEYS[1], ARGV[1])"))
        #expect(try Int(fromRESP: try await connection.execute(EVALSHA(sha1: sha, keys: ["n"], arguments: [5]))) == 5)
        await #expect { try await connection.execute(EVALSHA(sha1: String(repeating: "0", count: 40))) } throws: {
            ($0 as? RedisServerError)?.isNoScript == true
        }
        await connection.close()
    }

    @Test func authenticationAndDatabaseSelection() async throws {
        let server = try await RedisServerProcess.start(["--requirepass", "s3cret"])
        let viaURL = try await RedisConnection.connect(configuration: try RedisConfiguration(url: server.url(":s3cret@", database: 2)))
        #expect(viaURL.protocolVersion == 3)
        _ = try await viaURL.execute(SET("where", value: "db2"))
        let withUser = try await RedisConnection.connect(configuration: try RedisConfiguration(url: server.url("default:s3cret@")))
        #expect(try await withUser.execute(GET("where")) == nil)  // database 0
        await #expect { try await RedisConnection.connect(configuration: try RedisConfiguration(url: server.url(":wrong@"))) } throws: {
            ($0 as? RedisServerError)?.isAuthenticationError == true
        }
        await #expect { try await RedisConnection.connect(configuration: try RedisConfiguration(url: server.url())) } throws: {
            ($0 as? RedisServerError)?.isAuthenticationError == true
        }
        // Forced RESP2: AUTH and SELECT are sent separately.
        var resp2Configuration = try RedisConfiguration(url: server.url(":s3cret@", database: 2))
        resp2Configuration.protocolPreference = .resp2
        let resp2 = try await RedisConnection.connect(configuration: resp2Configuration)
        #expect(resp2.protocolVersion == 2)
        #expect(try await resp2.execute(GET("where")) == ByteBuffer(string: "db2"))
        for c in [viaURL, withUser, resp2] { await c.close() }
    }

    @Test func fallsBackToRESP2WhenHelloIsRejected() async throws {
        let server = try await RedisServerProcess.start(["--requirepass", "pw", "--rename-command", "HELLO", ""])
        var configuration = server.configuration
        configuration.password = "pw"
        configuration.database = 1
        configuration.clientName = "switchboard-test"
        let client = RedisClient(configuration: configuration)
        client.start()
        defer { Task { await client.shutdown() } }
        try await client.waitUntilConnected(timeout: .seconds(30))
        #expect(try await client.execute(PING()) == "PONG")
        #expect(try await client.execute(RawCommand("CLIENT", "GETNAME")).description.contains("switchboard-test"))
        // Pub/sub over RESP2 (array messages in subscribe mode).
        let subscription = try await client.subscribe(to: ["legacy"])
        _ = try await client.execute(PUBLISH(channel: "legacy", message: "v2"))
        #expect(try await nextMessage(subscription).map { String(buffer: $0.payload) } == "v2")
        let dedicated = try await client.makeDedicatedConnection()
        #expect(dedicated.protocolVersion == 2)
        await dedicated.close()
        await subscription.unsubscribe()
    }

    @Test func commandTimeoutClosesConnection() async throws {
        let server = try await RedisServerProcess.start()
        let admin = try await server.connect()
        let connection = try await server.connect { $0.commandTimeout = .milliseconds(200) }
        // Paused far longer than the timeout: the GET cannot be answered in time, however late it
        // is sent on a loaded machine.
        _ = try await admin.execute(RawCommand("CLIENT", "PAUSE", "10000", "ALL"))
        let start = ContinuousClock.now
        await #expect(throws: RedisClientError.commandTimeout) { try await connection.execute(GET("k")) }
        #expect(ContinuousClock.now - start < .seconds(5))
        try await connection.closeFuture.get()
        #expect(!connection.isActive)
        await admin.close()
    }

    @Test func reconnectsAndResubscribes() async throws {
        let server = try await RedisServerProcess.start()
        var configuration = server.configuration
        configuration.reconnectBackoffMinimum = .milliseconds(20)
        configuration.reconnectBackoffMaximum = .milliseconds(200)
        let events = NIOLockedValueBox<[String]>([])
        let client = RedisClient(configuration: configuration) { role, state in
            events.withLockedValue { $0.append("\(role):\(state)") }
        }
        client.start()
        defer { Task { await client.shutdown() } }
        try await client.waitUntilConnected(timeout: .seconds(30))
        let subscription = try await client.subscribe(to: ["alerts"])
        let patterns = try await client.subscribe(to: ["al*"], kind: .pattern)
        _ = try await client.execute(PUBLISH(channel: "alerts", message: "before"))
        #expect(try await nextMessage(subscription).map { String(buffer: $0.payload) } == "before")
        #expect(try await nextMessage(patterns).map { String(buffer: $0.payload) } == "before")

        server.kill()
        #expect(try await eventually { client.connectionState(.commands) != .connected && client.connectionState(.subscriptions) != .connected })
        await #expect(throws: RedisClientError.notConnected) { try await client.execute(PING()) }

        try await server.launch()
        try await client.waitUntilConnected(timeout: .seconds(30))
        #expect(client.reconnectCount >= 2)
        #expect(try await client.execute(PING()) == "PONG")
        // The subscriber connection re-subscribed on its own.
        #expect(try await eventually { (try? await client.execute(PUBLISH(channel: "alerts", message: "after"))) == 2 })
        #expect(try await nextMessage(subscription).map { String(buffer: $0.payload) } == "after")
        #expect(try await nextMessage(patterns).map { String(buffer: $0.payload) } == "after")
        let log = events.withLockedValue { $0 }
        #expect(log.contains("commands:disconnected") && log.filter { $0 == "commands:connected" }.count >= 2)
        await subscription.unsubscribe()
        await patterns.unsubscribe()
    }
}
