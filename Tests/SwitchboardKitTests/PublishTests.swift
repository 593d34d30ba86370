import NIOCore
import Redis
import RedisServerTesting
import STOMPCodec
import SwitchboardKit
import SwitchboardRedis
import SwitchboardWire
import Testing

@Suite("Publishing to the gateway's channels", .enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct PublishTests {
    @Test func publishReachesTheDestinationChannelAsAnEnvelope() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let consumer = StreamConsumer(client: client, configuration: testConfiguration(name: "svc-1"), logger: quietLogger)
        let subscription = try await client.subscribe(to: ["switchboard:dest:/topic/x"])

        let receivers = try await consumer.publish(destination: "/topic/x", body: "Hello, x!", headers: ["x-request-id": "1-0", "x-msg-id": "m:1\nz"])
        #expect(receivers == 1)
        let message = try #require(try await nextMessage(subscription))
        let decoded = try #require(RedisEnvelope.decode(message.payload))
        #expect(decoded.destination == "/topic/x")
        #expect(String(buffer: decoded.body) == "Hello, x!")
        #expect(decoded.headers["content-type"] == "text/plain")
        #expect(decoded.headers["x-request-id"] == "1-0")
        #expect(decoded.headers["x-msg-id"] == "m:1\nz")
        #expect(decoded.origin == "svc-1")
        #expect(decoded.session == nil)
        #expect(decoded.messageID?.hasPrefix("svc-1-") == true)

        // Binary bodies survive, with an explicit content type.
        let bytes = ByteBuffer(bytes: [0, 1, 0xFF, 0x0A])
        try await consumer.publish(destination: "/topic/x", body: bytes, contentType: "application/octet-stream")
        let binaryMessage = try #require(try await nextMessage(subscription))
        let binary = try #require(RedisEnvelope.decode(binaryMessage.payload))
        #expect(binary.body == bytes)
        #expect(binary.headers["content-type"] == "application/octet-stream")
        await subscription.unsubscribe()
        await client.shutdown()
    }

    /// Publishers sharing an origin (two replicas with one name, or one restarted) numbered
    /// their message ids from 1 alike, and clients that drop repeated ids dropped new messages.
    @Test func publishersSharingAnOriginGiveOutDistinctMessageIDs() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let subscription = try await client.subscribe(to: ["switchboard:dest:/topic/x"])
        for _ in 0..<3 {
            var publisher = SwitchboardPublisher(client: client, origin: "billing")
            publisher.recordsHistory = false
            try await publisher.publish(destination: "/topic/x", body: "m")
        }
        var ids: [String] = []
        for _ in 0..<3 {
            let message = try #require(try await nextMessage(subscription))
            ids.append(try #require(RedisEnvelope.decode(message.payload)?.messageID))
        }
        #expect(Set(ids).count == 3, "\(ids)")
        #expect(ids.allSatisfy { $0.hasPrefix("billing-") })
        await subscription.unsubscribe()
        await client.shutdown()
    }

    @Test func batchIsPublishedInOrderWithOneResultEach() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let publisher = SwitchboardPublisher(client: client, origin: "svc-batch")
        let a = try await client.subscribe(to: ["switchboard:dest:/topic/a"])
        let batch = (0..<500).map { i in
            SwitchboardPublisher.Notification(destination: i % 2 == 0 ? "/topic/a" : "/topic/b", body: "m\(i)", headers: ["seq": "\(i)"])
        }
        let results = await publisher.publish(batch)
        #expect(results.count == 500)
        // /topic/a has one subscriber (this test), /topic/b none.
        #expect(results.enumerated().allSatisfy { i, result in (try? result.get()) == (i % 2 == 0 ? 1 : 0) })
        var bodies: [String] = []
        for _ in 0..<250 {
            let message = try #require(try await nextMessage(a))
            bodies.append(String(buffer: try #require(RedisEnvelope.decode(message.payload)).body))
        }
        #expect(bodies == stride(from: 0, to: 500, by: 2).map { "m\($0)" })
        await a.unsubscribe()
        await client.shutdown()
        // Disconnected: every item fails, none is dropped silently.
        let failed = await publisher.publish(Array(batch.prefix(3)))
        #expect(failed.count == 3 && failed.allSatisfy { if case .failure = $0 { true } else { false } })
    }

    @Test func publishToUserGoesToThatUsersRoutingChannel() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let publisher = SwitchboardPublisher(client: client, origin: "svc-3")
        // alice's /user/queue/notes routes as /~user/alice/queue/notes (see UserDestinations).
        let alice = try await client.subscribe(to: ["switchboard:dest:/~user/alice/queue/notes"])
        let bob = try await client.subscribe(to: ["switchboard:dest:/~user/bob/queue/notes"])
        #expect(try await publisher.publish(toUser: "alice", destination: "/queue/notes", body: "for alice") == 1)
        let message = try #require(try await nextMessage(alice))
        let decoded = try #require(RedisEnvelope.decode(message.payload))
        #expect(decoded.destination == "/~user/alice/queue/notes")
        #expect(String(buffer: decoded.body) == "for alice")
        #expect(try await nextMessage(bob, timeout: .milliseconds(200)) == nil)
        // `x/queue/notes` would route to user "alicex": refused, nothing published.
        let alicex = try await client.subscribe(to: ["switchboard:dest:/~user/alicex/queue/notes"])
        await #expect(throws: SwitchboardPublisherError.invalidUserDestination("x/queue/notes")) {
            try await publisher.publish(toUser: "alice", destination: "x/queue/notes", body: "misrouted")
        }
        #expect(try await nextMessage(alicex, timeout: .milliseconds(200)) == nil)
        await alicex.unsubscribe()
        await alice.unsubscribe()
        await bob.unsubscribe()
        await client.shutdown()
    }

    @Test func replyGoesOnlyToTheSendersInstanceWithTheSession() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let consumer = StreamConsumer(client: client, configuration: testConfiguration(name: "svc-2"), logger: quietLogger)
        let instance = try await client.subscribe(to: ["switchboard:instance:gw-7"])
        let broadcast = try await client.subscribe(to: ["switchboard:dest:/user/queue/answers"])

        let request = IncomingMessage(
            id: "5-0", stream: "OUT", destination: "/app/greet", body: ByteBuffer(string: "Bob"), session: "sess-42", instance: "gw-7"
        )
        #expect(try await consumer.reply(to: request, destination: "/user/queue/answers", body: "Hello, Bob!", headers: ["x-request-id": "5-0"]) == 1)
        let message = try #require(try await nextMessage(instance))
        let decoded = try #require(RedisEnvelope.decode(message.payload))
        #expect(decoded.session == "sess-42")
        #expect(decoded.destination == "/user/queue/answers")
        #expect(String(buffer: decoded.body) == "Hello, Bob!")
        #expect(decoded.headers["x-request-id"] == "5-0")
        #expect(try await nextMessage(broadcast, timeout: .milliseconds(200)) == nil)

        let anonymous = IncomingMessage(id: "6-0", stream: "OUT", destination: "/app/greet", body: ByteBuffer())
        await #expect(throws: SwitchboardKitError.missingSender(entryID: "6-0")) {
            try await consumer.reply(to: anonymous, destination: "/topic/y", body: "x")
        }
        await instance.unsubscribe()
        await broadcast.unsubscribe()
        await client.shutdown()
    }

    /// Publishers sharing a client add the same `FUNCTION LOAD` setup command: it runs once per
    /// new connection, not once per publisher (before, each publisher or consumer created on a
    /// client added another copy, and every reconnect loaded the library that many times).
    @Test func publishersSharingAClientLoadTheFunctionsOncePerConnection() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client { $0.clientName = "sharer" }
        // More publishers than the client has connections: one load each would outnumber them.
        let publishers = (0..<8).map { SwitchboardPublisher(client: client, origin: "p\($0)") }
        for publisher in publishers { try await publisher.publish(destination: "/topic/x", body: "warm-up") }
        let observer = try await server.client()
        _ = try await observer.execute(RawCommand("CONFIG", "RESETSTAT"))
        _ = try await observer.execute(RawCommand("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))
        // Published once the connections are back (a publish written as they closed may fail).
        #expect(
            try await eventually {
                for publisher in publishers { guard (try? await publisher.publish(destination: "/topic/x", body: "after")) != nil else { return false } }
                return true
            })
        let stats = try String(fromRESP: try await observer.execute(RawCommand("INFO", "commandstats")))
        let line = stats.split(whereSeparator: \.isNewline).first { $0.hasPrefix("cmdstat_function|load:") }
        let loads = line.flatMap { $0.split(separator: ",").first?.split(separator: "=").last }.flatMap { Int($0) } ?? 0
        let list = try String(fromRESP: try await observer.execute(RawCommand("CLIENT", "LIST")))
        let connections = list.split(whereSeparator: \.isNewline).count { $0.contains(" name=sharer ") }
        #expect(loads >= 1 && loads <= connections, "loaded \(loads) times on \(connections) connections")
        await observer.shutdown()
        await client.shutdown()
    }
}

@Suite struct IncomingMessageTests {
    @Test func decodesTheGatewayFieldsAndKeepsUserHeaders() throws {
        let entry = RedisStreamEntry(
            id: "9-1",
            fields: [
                ("destination", ByteBuffer(string: "/app/greet")), ("message", ByteBuffer(bytes: [0xE2, 0x9C, 0x93])),
                ("content-type", ByteBuffer(string: "text/plain;charset=utf-8")), ("session", ByteBuffer(string: "s")),
                ("instance", ByteBuffer(string: "i")), ("timestamp", ByteBuffer(string: "42")), ("x-msg-id", ByteBuffer(string: "7")),
            ])
        let message = IncomingMessage(entry: entry, stream: "S", deliveryCount: 3)
        #expect(message.bodyString == "✓")
        #expect(message.user == nil && message.session == "s" && message.instance == "i" && message.timestamp == 42)
        #expect(message.headers == ["x-msg-id": "7"])
        #expect(message.deliveryCount == 3 && message.fields.count == 7)
    }

    @Test func defaultConsumerNamesAreUniquePerReplica() {
        let a = StreamConsumerConfiguration.defaultConsumerName()
        let b = StreamConsumerConfiguration.defaultConsumerName()
        #expect(a != b)
        #expect(a.split(separator: "-").count >= 3)
        #expect(StreamConsumerConfiguration(stream: "S", group: "g").deadLetterStream == "S:dead")
    }
}
