import Logging
import NIOConcurrencyHelpers
import NIOCore
import Redis
import RedisServerTesting
import SwitchboardWire
import Testing

@testable import SwitchboardRedis

/// An instance's lease and the reaping of others (``InstanceLease``) against a real Redis.
@Suite(.enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct InstanceLeaseTests {
    /// `instance`'s last renewal in `presence:instances` (nil: not registered, or reaped).
    static func leaseScore(_ client: RedisClient, _ stream: LifecycleStreamSettings, _ instance: String) async throws -> Double? {
        let reply = try await client.execute(RawCommand("ZSCORE", .string("\(stream.prefix)presence:instances"), .string(instance)))
        return reply.value == .null ? nil : try Double(fromRESP: reply)
    }

    /// An instance started while Redis was down (its client's first connection is no
    /// reconnect) got through first when Redis came back, and reaped at once every instance
    /// whose lease had expired during the outage, although they were alive and still in their
    /// reconnect backoff. After renewals that failed it waits the ttl and the settle time too.
    @Test func anInstanceStartedDuringAnOutageDoesNotReapTheOthersAtOnce() async throws {
        let server = try await RedisServerProcess.start(["--appendonly", "yes", "--appendfsync", "always"])
        defer { server.stop() }
        let stream = LifecycleStreamSettings()
        let other = try await server.client()
        // Another live instance, registered before the outage; its lease expires during it.
        _ = try await LifecycleFunctions.call(LeaseRenew(prefix: stream.prefix, instance: "B~1", ttlMilliseconds: 200, held: false), on: other).get()
        await other.shutdown()
        server.kill()

        let messages = NIOLockedValueBox<[String]>([])
        let logger = Logger(label: "lease") { _ in RecordingLogHandler(messages: messages) }
        let client = RedisClient(
            configuration: {
                var configuration = server.configuration
                configuration.reconnectBackoffMinimum = .milliseconds(20)
                configuration.reconnectBackoffMaximum = .milliseconds(100)
                configuration.reconnectWait = .milliseconds(50)
                return configuration
            }(), logger: Logger(label: "quiet") { _ in SwiftLogNoOpLogHandler() })
        client.start()
        let lease = InstanceLease(
            client: client, stream: stream, instance: "A~1",
            settings: InstanceLease.Settings(ttl: .milliseconds(200), renewInterval: .milliseconds(20), settle: .seconds(120)), logger: logger
        ) {}
        let running = Task { await lease.run() }
        #expect(try await eventually { messages.withLockedValue { $0.contains("lease renewal or reaping failed") } }, "a renewal failed")

        try await server.launch()
        let observer = try await server.client()
        // Renewing again, until A's renewal time is well past B's expiry (B's lease then is
        // claimable at every renewal of A), or B is gone.
        @Sendable func score(_ instance: String) async throws -> Double? { try await Self.leaseScore(observer, stream, instance) }
        #expect(
            try await eventually {
                guard let b = try await score("B~1") else { return true }
                return try await score("A~1").map { $0 - b > 1_000 } ?? false
            })
        #expect(try await score("B~1") != nil, "B was reaped right after the outage")
        running.cancel()
        await running.value
        await observer.shutdown()
        await client.shutdown()
    }

    /// A new process that got through first after an outage longer than the ttl (a deploy or
    /// a scale-out just then) reaped every other instance while they were still in their
    /// reconnect backoff: its first renewal was neither a reconnect nor after a failure. It now
    /// waits too when it finds other leases expired; in a healthy fleet it reaps at once.
    @Test(arguments: [true, false])
    func aNewProcessFindingExpiredLeasesWaitsBeforeReaping(_ expiredAtStart: Bool) async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let stream = LifecycleStreamSettings()
        let other = try await server.client()
        @Sendable func score(_ instance: String) async throws -> Double? { try await Self.leaseScore(other, stream, instance) }
        @Sendable func renewB(ttl: Int) async throws {
            _ = try await LifecycleFunctions.call(LeaseRenew(prefix: stream.prefix, instance: "B~1", ttlMilliseconds: ttl, held: true), on: other).get()
        }
        // B's lease expires at once (then waited for below), or B stays alive until A renewed
        // once, then stops renewing: a lease of 10 s renewed every 50 ms (a loaded machine may
        // take longer than a short lease to get A to its first renewal, or to run this task: a
        // full parallel run once kept this task away past a 2 s lease, and A, finding B expired
        // at its first renewal, waited its settle time and reaped nothing in time). B counts as
        // expired once its key is gone: 10 s after its last renewal.
        try await renewB(ttl: expiredAtStart ? 200 : 10_000)
        let keepB = Task {
            while !expiredAtStart, !Task.isCancelled {
                try? await renewB(ttl: 10_000)
                try? await Task.sleep(for: .milliseconds(50))
            }
        }
        let client = try await server.client()
        let lease = InstanceLease(
            client: client, stream: stream, instance: "A~1",
            // (A lease of 2 s: on a loaded machine a 200 ms one lapsed between renewals, and A,
            // taking itself for one back from an outage, waited the settle time before reaping.)
            settings: InstanceLease.Settings(ttl: .seconds(2), renewInterval: .milliseconds(20), settle: .seconds(120)),
            logger: Logger(label: "quiet") { _ in SwiftLogNoOpLogHandler() }
        ) {}
        // B's lease expired before A's first renewal (an outage ended, B is in its backoff).
        if expiredAtStart { #expect(try await eventually { try await lease.othersExpired() }) }
        let running = Task { await lease.run() }
        if expiredAtStart {
            #expect(
                try await eventually {
                    guard let b = try await score("B~1") else { return true }
                    return try await score("A~1").map { $0 - b > 1_000 } ?? false
                })
            #expect(try await score("B~1") != nil, "B was reaped right after the outage")
        } else {
            // B stops renewing after A's first renewal: A reaps it once its lease expired.
            #expect(try await eventually { try await score("A~1") != nil })
            keepB.cancel()
            _ = try? await keepB.value
            #expect(try await eventually { try await score("B~1") == nil }, "B was not reaped")
        }
        running.cancel()
        await running.value
        await client.shutdown()
        await other.shutdown()
    }

    /// A step forward of Redis's clock is what it moved beyond this process's clock, taking
    /// the latest moment its earlier reading can have been made and the earliest of the later
    /// one: a reply that waited makes no step.
    @Test func aForwardStepOfRedisClockIsMeasuredAgainstTheLocalClock() {
        let t0 = ContinuousClock.now
        func sample(_ redis: Int64, _ sent: Duration, _ received: Duration) -> InstanceLease.ClockSample {
            .init(redisMilliseconds: redis, sent: t0 + sent, received: t0 + received)
        }
        // In step: 1 s on both (a reply that took 300 ms the first time).
        let first = sample(10_000, .zero, .milliseconds(300))
        #expect(InstanceLease.forwardStep(from: first, to: sample(11_000, .seconds(1), .milliseconds(1_010))) <= .zero)
        // The earlier reply waited 1.5 s: no step either.
        #expect(InstanceLease.forwardStep(from: sample(10_000, .zero, .milliseconds(1_500)), to: sample(11_000, .seconds(1), .milliseconds(1_002))) <= .zero)
        // A step of 10 s.
        let step = InstanceLease.forwardStep(from: first, to: sample(21_000, .seconds(1), .milliseconds(1_010)))
        #expect(step > InstanceLease.clockStepTolerance && step <= .seconds(10))
        // Backwards: none.
        #expect(InstanceLease.forwardStep(from: first, to: sample(5_000, .seconds(1), .milliseconds(1_010))) < .zero)
    }

    /// Reconnects of the subscriber connection alone (Redis drops a subscriber that reads too
    /// slowly under a broadcast storm) held the reaping back each time: a dead instance stayed
    /// unreaped, its users online, for as long as they went on. Only the command connection's
    /// reconnects count now.
    @Test func subscriberReconnectsDoNotHoldTheReapingBack() async throws {
        let server = try await RedisServerProcess.start()
        defer { server.stop() }
        let stream = LifecycleStreamSettings()
        let other = try await server.client()
        @Sendable func score(_ instance: String) async throws -> Double? { try await Self.leaseScore(other, stream, instance) }
        let client = try await server.client {
            $0.reconnectBackoffMinimum = .milliseconds(10)
            $0.reconnectBackoffMaximum = .milliseconds(50)
        }
        let subscription = try await client.subscribe(to: ["storm"])
        // B is alive until A renewed once (A then finds no lease expired: it may reap at once);
        // 10 s: a loaded machine may take seconds to get A to its first renewal.
        _ = try await LifecycleFunctions.call(LeaseRenew(prefix: stream.prefix, instance: "B~1", ttlMilliseconds: 10_000, held: true), on: other).get()
        let lease = InstanceLease(
            client: client, stream: stream, instance: "A~1",
            settings: InstanceLease.Settings(ttl: .seconds(2), renewInterval: .milliseconds(20), settle: .seconds(120)),
            logger: Logger(label: "quiet") { _ in SwiftLogNoOpLogHandler() }
        ) {}
        let running = Task { await lease.run() }
        #expect(try await eventually { try await score("A~1") != nil })
        // Then B dies, and A's subscriber connection is cut again and again.
        let cuts = Task {
            while !Task.isCancelled {
                _ = try? await other.execute(RawCommand("CLIENT", "KILL", "TYPE", "pubsub"))
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
        #expect(try await eventually { try await score("B~1") == nil }, "B was not reaped")
        #expect(client.reconnectCount > 0, "the subscriber reconnected")
        cuts.cancel()
        _ = await cuts.value
        running.cancel()
        await running.value
        await subscription.unsubscribe()
        await client.shutdown()
        await other.shutdown()
    }
}
