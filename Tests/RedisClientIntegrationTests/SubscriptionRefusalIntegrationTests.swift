import NIOConcurrencyHelpers
import NIOCore
import Redis
import RedisServerTesting
import Testing

/// A re-subscribe after a reconnect that Redis refuses for one name (an ACL that no longer
/// allows the channel: Redis refuses the whole `SUBSCRIBE`): every reconnect failed on it, and
/// the client's Pub/Sub stopped for good. Now the other names are subscribed again, and the
/// refused one is kept and tried again: once the ACL allows it, its stream goes on.
@Suite struct SubscriptionRefusalIntegrationTests {
    @Test func aNameNoLongerAllowedIsKeptAndTheOthersAreSubscribedAgain() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let admin = try await server.client()
        _ = try await admin.execute(RawCommand("ACL", "SETUSER", "app", "on", ">app-secret", "~*", "&*", "+@all"))
        var configuration = server.configuration
        configuration.username = "app"
        configuration.password = "app-secret"
        configuration.reconnectBackoffMinimum = .milliseconds(20)
        configuration.reconnectBackoffMaximum = .milliseconds(200)
        let client = RedisClient(configuration: configuration)
        client.start()
        try await client.waitUntilConnected(timeout: .seconds(30))
        let kept = try await client.subscribe(to: ["kept"])
        let denied = try await client.subscribe(to: ["denied"])
        // What each stream got, and whether it ended.
        let streams = NIOLockedValueBox<[String: (messages: [String], ended: Bool)]>([:])
        let readers = [kept, denied].map { subscription in
            Task {
                let name = subscription.names[0]
                for await message in subscription { streams.withLockedValue { $0[name, default: ([], false)].messages.append(String(buffer: message.payload)) } }
                streams.withLockedValue { $0[name, default: ([], false)].ended = true }
            }
        }
        let callbacks = NIOLockedValueBox<[String]>([])
        let keptToo = try await client.subscribe(to: ["kept-too"]) { message in
            callbacks.withLockedValue { $0.append(String(buffer: message.payload)) }
        }
        #expect(try await admin.execute(PUBLISH(channel: "denied", message: "before")) == 1)

        // The channel is no longer allowed; the connections are closed (Redis closes the
        // subscriber's itself).
        _ = try await admin.execute(RawCommand("ACL", "SETUSER", "app", "resetchannels", "&kept*"))
        _ = try await admin.execute(RawCommand("CLIENT", "KILL", "USER", "app"))
        try #require(try await eventually { try await admin.execute(PUBLISH(channel: "kept", message: "after")) == 1 }, "kept is subscribed again")
        #expect(try await admin.execute(PUBLISH(channel: "kept-too", message: "after")) == 1)
        #expect(try await eventually { callbacks.withLockedValue { $0.contains("after") } })
        #expect(try await eventually { streams.withLockedValue { $0["kept"]?.messages.last == "after" } })
        // A new subscriber of the refused name is refused.
        // (Once the refusal is recorded: until then a subscriber joins the re-subscribe.)
        #expect(
            try await eventually {
                do {
                    let extra = try await client.subscribe(to: ["denied"]) { _ in }
                    await extra.unsubscribe()
                    return false
                } catch let error as RedisServerError {
                    return error.isPermissionDenied
                }
            })
        // Allowed again: the kept subscription gets messages again.
        _ = try await admin.execute(RawCommand("ACL", "SETUSER", "app", "allchannels"))
        #expect(try await eventually { try await admin.execute(PUBLISH(channel: "denied", message: "again")) == 1 }, "denied is subscribed again")
        #expect(try await eventually { streams.withLockedValue { $0["denied"]?.messages.last == "again" } })
        #expect(streams.withLockedValue { $0["denied"]?.messages.first } == "before")
        #expect(streams.withLockedValue { $0.values.allSatisfy { !$0.ended } })
        await denied.unsubscribe()
        await kept.unsubscribe()
        for reader in readers { reader.cancel() }
        await keptToo.unsubscribe()
        await client.shutdown()
        await admin.shutdown()
    }
}
