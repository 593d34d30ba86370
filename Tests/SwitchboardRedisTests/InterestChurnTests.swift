import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Redis
import RedisServerTesting
import SwitchboardCore
import SwitchboardRoutes
import SwitchboardWire
import Testing

@testable import SwitchboardRedis

/// Collects what the hub delivers to its subscriptions.
final class ChurnSink: SubscriptionSink, @unchecked Sendable {
    let received = NIOLockedValueBox<[PublishedMessage]>([])
    func deliver(_ message: PublishedMessage, to subscription: LocalSubscription, batch: inout DeliveryBatch) {
        received.withLockedValue { $0.append(message) }
    }
    func flushDeliveries() {}
    var bodies: [String] { received.withLockedValue { $0.map { String(buffer: $0.body) } } }
}

/// A destination's (or glob's) last subscriber leaves and a new one comes: the engine replaces
/// its Redis interest. For a moment both subscriptions of the channel can be registered with the
/// client, and the old one's copies must reach nobody (each message would arrive twice, or, for
/// a destination with history, a copy from before the new interest's position would cut a
/// resume's replay short).
@Suite(.enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct InterestChurnTests {
    struct Gateway {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let hub: FanoutHub
        let engine: RedisEngine
        let client: RedisClient
        let sink = ChurnSink()
        var loop: any EventLoop { group.any() }

        init(
            _ server: RedisServerProcess, maxBacklogBytes: Int = 64 * 1024 * 1024, _ configure: (inout RedisConfiguration) -> Void = { _ in }
        ) async throws {
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            hub = FanoutHub(eventLoops: [group.any()], maxBacklogBytes: maxBacklogBytes)
            client = try await server.client(configure)
            var history = DestinationHistory.Settings()
            history.disabledPrefixes = ["/topic/plain"]
            engine = RedisEngine(
                redis: .single(client), hub: hub, naming: RedisChannelNaming(), instanceID: "gw", messageIDs: MessageIDGenerator(instanceID: "gw"),
                eventLoop: group.any(), logger: logger, history: history)
            try await engine.start()
        }

        /// Replaces the only subscription of `pattern` by a new one (the interest goes and comes
        /// back), and returns the old interest and the new.
        func churn(_ pattern: String) async throws -> (old: RedisEngine.Interest, new: RedisEngine.Interest) {
            let parsed = try DestinationPattern(pattern)
            let first = LocalSubscription(id: "first", pattern: parsed, ackMode: .auto, sink: sink)
            let second = LocalSubscription(id: "second", pattern: parsed, ackMode: .auto, sink: sink)
            let hub = self.hub, loop = self.loop
            try await loop.submit { hub.shard(for: loop).add(first) }.get()
            try await engine.subscriptionReady(parsed, on: loop)?.get()
            let old = try #require(interest(parsed))
            try await loop.submit {
                hub.shard(for: loop).remove(first)
                hub.shard(for: loop).add(second)
            }.get()
            try await engine.subscriptionReady(parsed, on: loop)?.get()
            let new = try #require(interest(parsed))
            #expect(old !== new && old.cancelled.load(ordering: .relaxed) && !new.cancelled.load(ordering: .relaxed))
            return (old, new)
        }

        func interest(_ pattern: DestinationPattern) -> RedisEngine.Interest? {
            engine.state.withLockedValue { s in
                pattern.isWildcard ? s.globs[engine.naming.glob(for: pattern)]?.interest : s.exact[pattern.text]
            }
        }

        /// What `body` published elsewhere looks like on the channel (or glob) of `pattern`.
        func received(_ body: String, destination: String, glob: String? = nil) -> RedisPubSubMessage {
            let message = PublishedMessage(destination: destination, messageID: body, headers: [:], body: ByteBuffer(string: body))
            return RedisPubSubMessage(
                kind: glob == nil ? .channel : .pattern, channel: engine.channel(forDestination: destination), pattern: glob,
                payload: RedisEnvelope.encode(message, origin: "elsewhere"))
        }

        /// Waits until the hub has delivered `count` messages, then until its loop is idle, so
        /// that any extra one would be in too.
        func delivered(_ count: Int) async throws -> [String] {
            let sink = self.sink
            #expect(try await eventually { sink.received.withLockedValue { $0.count } >= count })
            try await loop.submit {}.get()
            return sink.bodies
        }

        func shutdown() async {
            await engine.shutdown()
            await client.shutdown()
            try? await group.shutdownGracefully()
        }
    }

    @Test func aDestinationsOldSubscriptionDeliversNothing() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let gateway = try await Gateway(server)
        let (old, new) = try await gateway.churn("/topic/plain.a")
        gateway.engine.onMessage(gateway.received("stale", destination: "/topic/plain.a"), for: old)
        gateway.engine.onMessage(gateway.received("live", destination: "/topic/plain.a"), for: new)
        #expect(try await gateway.delivered(1) == ["live"], "the copy of the cancelled interest reached the new subscriber")
        await gateway.shutdown()
    }

    @Test func aGlobsOldSubscriptionDeliversNothing() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let gateway = try await Gateway(server)
        let (old, new) = try await gateway.churn("/topic/plain.*")
        let glob = gateway.engine.naming.glob(for: try DestinationPattern("/topic/plain.*"))
        gateway.engine.onMessage(gateway.received("stale", destination: "/topic/plain.b", glob: glob), for: old)
        gateway.engine.onMessage(gateway.received("live", destination: "/topic/plain.b", glob: glob), for: new)
        #expect(try await gateway.delivered(1) == ["live"], "the copy of the cancelled interest reached the new subscriber")
        await gateway.shutdown()
    }

    /// A destination with history: what the old interest still orders (its establishing read or
    /// a repair finishing after it was cancelled, a copy it received) reaches nobody; the new
    /// interest delivers from its own position.
    @Test func aHistoryDestinationsOldInterestDeliversNothing() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let gateway = try await Gateway(server)
        let (old, new) = try await gateway.churn("/topic/kept")
        let position = try #require(new.sequenced?.withLockedValue { $0.sequencer.position })
        let next = StreamPosition(epoch: position.epoch, sequence: position.sequence + 1)
        let stale = PublishedMessage(destination: "/topic/kept", messageID: "stale", headers: [:], body: ByteBuffer(string: "stale"), position: next)
        old.sequenced?.withLockedValue { _ = $0.sequencer.established(at: position) }
        gateway.engine.sequence(stale, interest: old, destination: "/topic/kept")
        // Published for real: the new interest delivers it.
        try await gateway.engine.publish(
            PublishedMessage(destination: "/topic/kept", messageID: "live", headers: [:], body: ByteBuffer(string: "live")), on: gateway.loop
        ).get()
        #expect(try await gateway.delivered(1) == ["live"], "the cancelled interest's sequencer delivered to the new subscriber")
        await gateway.shutdown()
    }

    /// Anyone who may PUBLISH on a destination's channel can forge `x-position`: one of an
    /// unknown epoch at the largest sequence neither traps nor stops the destination (a guard:
    /// the counts that trapped are tested in ``DestinationSequencerTests`` and
    /// `aSaturatingAddNeverTraps`; this path counted no skip before the change either).
    @Test func aForgedPositionAtTheLargestSequenceDoesNotTrap() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let gateway = try await Gateway(server)
        let (_, interest) = try await gateway.churn("/topic/kept")
        for body in ["one", "two"] {
            try await gateway.engine.publish(
                PublishedMessage(destination: "/topic/kept", messageID: body, headers: [:], body: ByteBuffer(string: body)), on: gateway.loop
            ).get()
        }
        let sink = gateway.sink
        #expect(try await eventually { sink.bodies.contains("two") })
        let forged = PublishedMessage(
            destination: "/topic/kept", messageID: "forged", headers: [:], body: ByteBuffer(string: "forged"),
            position: StreamPosition(epoch: "forged", sequence: .max))
        gateway.engine.onMessage(
            RedisPubSubMessage(
                kind: .channel, channel: gateway.engine.channel(forDestination: "/topic/kept"), pattern: nil,
                payload: RedisEnvelope.encode(forged, origin: "elsewhere")),
            for: interest)
        try await gateway.engine.publish(
            PublishedMessage(destination: "/topic/kept", messageID: "live", headers: [:], body: ByteBuffer(string: "live")), on: gateway.loop
        ).get()
        // The forged message goes out once the repair that its unknown epoch asked for has given
        // it up (where the count of what it skipped trapped).
        #expect(try await eventually { sink.bodies.contains("live") && sink.bodies.contains("forged") }, "\(sink.bodies)")
        await gateway.shutdown()
    }

    /// A registration arriving after the subscription of its destination failed (Redis refused
    /// it) waited for a position that never came: with `redis.unreachable-wait-ms` 0 forever,
    /// else it failed as "unreachable". It fails at once with the refusal now, and so do those
    /// waiting when the interest ends.
    @Test func aRegistrationAfterTheSubscriptionFailedFailsAtOnce() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let gateway = try await Gateway(server)
        let interest = RedisEngine.Interest(ready: gateway.loop.makePromise(), sequenced: true)
        gateway.engine.state.withLockedValue { $0.exact["/topic/refused"] = interest }
        // As startSubscription does when Redis refuses the SUBSCRIBE.
        interest.ready.fail(RouteError(.subscribeFailed, "refused"))
        gateway.engine.failWaiters(interest, RouteError(.subscribeFailed, "redis subscribe to it failed: NOPERM"))
        let registration = gateway.engine.registerWithHistory("/topic/refused", from: nil, on: gateway.loop) {}
        guard case .pending(_, let replay) = registration else {
            Issue.record("expected a pending registration, got \(String(describing: registration))")
            await gateway.shutdown()
            return
        }
        let settled = NIOLockedValueBox<String?>(nil)
        replay.whenComplete { result in settled.withLockedValue { $0 = "\(result)" } }
        #expect(try await eventually(timeout: .seconds(5)) { settled.withLockedValue { $0 } != nil })
        #expect(settled.withLockedValue { $0 }?.contains("NOPERM") == true, "\(settled.withLockedValue { $0 } ?? "pending")")
        await gateway.shutdown()
    }

    /// The last subscriber of a destination with history leaves while a message of it is being
    /// handed to the hub: `sequence` holds the interest's sequencer lock and waits for the hub's.
    /// Ending the interest took the sequencer lock under the hub's lock (to fail the waiting
    /// registrations): the two loops deadlocked, and a soak's rolling restart hung. Here another
    /// thread holds the sequencer lock; the last subscriber's removal must still return.
    @Test func theLastSubscriberLeavingWhileAMessageIsHandedOverDoesNotWaitForIt() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let gateway = try await Gateway(server)
        let parsed = try DestinationPattern("/topic/handover")
        let only = LocalSubscription(id: "only", pattern: parsed, ackMode: .auto, sink: gateway.sink)
        let hub = gateway.hub, loop = gateway.loop
        try await loop.submit { hub.shard(for: loop).add(only) }.get()
        try await gateway.engine.subscriptionReady(parsed, on: loop)?.get()
        let sequenced = try #require(gateway.interest(parsed)?.sequenced)
        let taken = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let holder = Thread {
            sequenced.withLockedValue { _ in
                taken.signal()
                release.wait()
            }
        }
        holder.start()
        taken.wait()
        let removed = NIOLockedValueBox(false)
        loop.execute {
            hub.shard(for: loop).remove(only)
            removed.withLockedValue { $0 = true }
        }
        let returned = try await eventually(timeout: .seconds(5)) { removed.withLockedValue { $0 } }
        release.signal()
        #expect(returned, "removing the last subscriber waited for the sequencer lock, under the hub's lock")
        #expect(try await eventually { removed.withLockedValue { $0 } })
        await gateway.shutdown()
    }
}
