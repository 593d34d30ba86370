import NIOConcurrencyHelpers
import Redis
import RedisServerTesting
import SwitchboardKit
import SwitchboardWire
import Testing

/// ``LifecycleEventConsumer`` against a real redis-server: events written by the lifecycle
/// function come out typed, in order, each acknowledged; other entries are skipped.
@Suite("Lifecycle event consumer", .enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct LifecycleEventConsumerTests {
    @Test func eventsArriveTypedAndAcknowledged() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let client = try await server.client()
        let facts: [LifecycleFact] = [
            LifecycleFact(session: "s1", kind: .connected(user: "alice"), time: 10),
            LifecycleFact(session: "s1", kind: .subscribed(id: "sub-0", destination: "/topic/room"), time: 11),
            LifecycleFact(session: "s1", kind: .disconnected(.slowConsumer), time: 12),
        ]
        let batch = LifecycleEventsBatch(settings: LifecycleStreamSettings(), instance: "gw1", loop: 0, batch: 1, facts: facts)
        #expect(try await LifecycleFunctions.call(batch, on: client).get() == 7)
        _ = try await client.execute(XADD(key: "switchboard:events", fields: [(name: "not", value: "an event")]))

        let consumer = LifecycleEventConsumer(
            client: client, configuration: testConfiguration(stream: "switchboard:events", group: "presence"), logger: quietLogger)
        let received = NIOLockedValueBox<[LifecycleEvent]>([])
        let task = Task { try await consumer.run { event in received.withLockedValue { $0.append(event) } } }
        #expect(try await eventually { consumer.consumer.statistics.processed == 9 })
        consumer.stop()
        try await task.value
        let events = received.withLockedValue { $0 }
        // The stream's first event: Redis held no trace of earlier ones.
        #expect(
            events.map(\.type) == [
                .presenceReset, .connected, .userOnline, .subscribed, .destinationOccupied, .disconnected, .destinationVacated, .userOffline,
            ])
        let subscribed = try #require(events.first { $0.type == .subscribed })
        #expect(subscribed.session == "s1" && subscribed.user == "alice" && subscribed.instance == "gw1")
        #expect(subscribed.destination == "/topic/room" && subscribed.subscription == "sub-0" && subscribed.time == 11)
        #expect(events.first { $0.type == .disconnected }?.reason == .slowConsumer)
        let generations = events.dropFirst().compactMap(\.generation)
        #expect(generations.count == 7 && LifecycleFunctionTests.isCounterStartedNow(generations))
        // Each state derived from the events before the reset has a generation below it.
        let reset = try #require(events.first?.generation)
        #expect(events.first?.session == nil && events.first?.user == nil && reset <= generations[0])
        #expect(try await pendingCount(client, stream: "switchboard:events", group: "presence") == 0)
        await client.shutdown()
    }
}
