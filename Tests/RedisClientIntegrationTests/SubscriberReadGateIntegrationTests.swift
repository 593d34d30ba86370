import NIOConcurrencyHelpers
import NIOCore
import Redis
import RedisServerTesting
import Testing

/// A subscriber connection whose reading the application paused (``SubscriberReadGate``, the
/// gateway's fan-out backlog): pushes wait in Redis, but the connection still reads the replies
/// its own commands are owed, so a `SUBSCRIBE` on it completes instead of timing out (and the
/// timeout closing the connection).
@Suite struct SubscriberReadGateIntegrationTests {
    @Test func aPausedSubscriberConnectionHoldsMessagesButReadsItsOwnReplies() async throws {
        let server = try await RedisServerProcess.start()
        var configuration = server.configuration
        // Without the fix the SUBSCRIBE waits out this timeout; with it, a loaded machine may
        // still take seconds to read 12.8 MB of pushes ahead of its reply.
        configuration.commandTimeout = .seconds(30)
        let client = RedisClient(configuration: configuration)
        client.start()
        defer { Task { await client.shutdown() } }
        try await client.waitUntilConnected(timeout: .seconds(30))
        let received = NIOLockedValueBox<[Int]>([])
        let held = try await client.subscribe(to: ["held"]) { message in
            received.withLockedValue { $0.append(Int(String(buffer: message.payload).prefix { $0 != " " })!) }
        }
        let paused = NIOLockedValueBox(true)
        client.subscriberReading.pause { paused.withLockedValue { $0 } }
        client.refreshSubscriberReading()
        #expect(try await eventually { client.subscriberReading.pauses == 1 })
        // 12.8 MB: more than the sockets hold, so Redis keeps the rest in the client's buffer.
        let padding = String(repeating: "x", count: 64 * 1024)
        for i in 0..<200 { _ = try await client.execute(PUBLISH(channel: "held", message: .string("\(i) \(padding)"))) }
        #expect(try await eventually { try await Self.pubsubOutputBytes(client) > 0 })
        #expect(received.withLockedValue { $0.count } < 200)
        // Its own command's reply is read (the pushes ahead of it with it): the SUBSCRIBE completes.
        let other = try await client.subscribe(to: ["other"]) { _ in }
        #expect(try await client.execute(PUBLISH(channel: "other", message: "o")) == 1)
        paused.withLockedValue { $0 = false }
        client.refreshSubscriberReading()
        #expect(try await eventually { received.withLockedValue { $0.count } == 200 })
        #expect(received.withLockedValue { $0 } == Array(0..<200))
        await other.unsubscribe()
        await held.unsubscribe()
    }

    /// Bytes Redis holds for the pub/sub client (`CLIENT LIST`'s `omem` of the connection with
    /// a subscription).
    static func pubsubOutputBytes(_ client: RedisClient) async throws -> Int {
        let list = try String(fromRESP: try await client.execute(RawCommand("CLIENT", "LIST")))
        for line in list.split(separator: "\n") where line.contains(" sub=1") || line.contains(" sub=2") {
            for field in line.split(separator: " ") where field.hasPrefix("omem=") { return Int(field.dropFirst(5)) ?? 0 }
        }
        return 0
    }
}
