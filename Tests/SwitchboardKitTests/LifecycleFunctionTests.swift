import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Redis
import RedisServerTesting
import SwitchboardWire
import Testing

/// The lifecycle functions against a real redis-server: events and presence in one step,
/// idempotent facts, `user-online`/`user-offline` across instances, the lease, and reaping a
/// dead instance exactly once.
@Suite("Lifecycle functions", .enabled(if: RedisServerProcess.isAvailable, "needs redis-server and glibc 2.34+"))
struct LifecycleFunctionTests {
    static let settings = LifecycleStreamSettings()

    /// A fixture: a server, a client, and a batch counter per (instance, loop).
    final class Fixture: @unchecked Sendable {
        let server: RedisServerProcess
        let client: RedisClient
        var batches: [String: UInt64] = [:]
        init() async throws {
            server = try await RedisServerProcess.start()
            client = try await server.client()
        }
        func stop() async {
            await client.shutdown()
            server.stop()
        }

        @discardableResult
        func send(_ instance: String, _ facts: [LifecycleFact.Kind], session: String, settings: LifecycleStreamSettings = settings) async throws -> Int {
            let n = (batches[instance] ?? 0) + 1
            batches[instance] = n
            let command = LifecycleEventsBatch(
                settings: settings, instance: instance, loop: 0, batch: n,
                facts: facts.map { LifecycleFact(session: session, kind: $0, time: 1_700_000_000_000) })
            return try await LifecycleFunctions.call(command, on: client).get()
        }

        /// The events of the stream but its `presence-reset` (``aPresenceResetPrecedesTheFirstEventAfterRedisLostItsData()``).
        func events() async throws -> [LifecycleEvent] {
            try await allEvents().filter { $0.type != .presenceReset }
        }

        func allEvents() async throws -> [LifecycleEvent] {
            let token = try await client.execute(RawCommand("XRANGE", "switchboard:events", "-", "+"))
            return try [RedisStreamEntry](fromRESP: token).compactMap(LifecycleEvent.init)
        }

        func user(_ user: String) async throws -> UserPresence {
            try await LifecycleFunctions.call(UserPresenceQuery(prefix: "switchboard:", user: user), on: client).get()
        }

        func destination(_ destination: String, limit: Int = 100) async throws -> DestinationPresence {
            try await LifecycleFunctions.call(DestinationPresenceQuery(prefix: "switchboard:", destination: destination, limit: limit), on: client).get()
        }
    }

    static func summary(_ events: [LifecycleEvent]) -> [String] {
        events.map { e in
            [e.type.rawValue, e.session, e.user, e.destination, e.reason?.rawValue].compactMap { $0 }.joined(separator: " ")
        }
    }

    @Test func sessionFactsBecomeEventsAndPresence() async throws {
        let f = try await Fixture()
        let written = try await f.send(
            "gw1", [.connected(user: "alice"), .subscribed(id: "0", destination: "/topic/a"), .subscribed(id: "1", destination: "/topic/a")],
            session: "s1")
        #expect(written == 5)
        try await f.send("gw1", [.connected(user: nil), .subscribed(id: "0", destination: "/topic/a")], session: "anon")
        #expect(try await f.destination("/topic/a").subscribers == 2)
        #expect(try await f.destination("/topic/a").users == ["alice"])
        let alice = try await f.user("alice")
        #expect(alice.online && alice.sessions == ["s1": "gw1"])
        try await f.send("gw1", [.unsubscribed(id: "0"), .unsubscribed(id: "0"), .disconnected(.heartbeatTimeout)], session: "s1")
        try await f.send("gw1", [.disconnected(.client)], session: "anon")
        #expect(try await f.user("alice").online == false)
        #expect(try await f.destination("/topic/a").subscribers == 0)
        let events = try await f.events()
        #expect(
            Self.summary(events) == [
                "connected s1 alice", "user-online s1 alice", "subscribed s1 alice /topic/a", "destination-occupied s1 alice /topic/a",
                "subscribed s1 alice /topic/a", "connected anon", "subscribed anon /topic/a", "unsubscribed s1 alice /topic/a",
                "disconnected s1 alice heartbeat-timeout", "user-offline s1 alice heartbeat-timeout", "disconnected anon client",
                "destination-vacated anon /topic/a",
            ])
        // One generation per event of alice, increasing, from Redis's time in µs.
        let generations = events.filter { $0.user == "alice" }.compactMap(\.generation)
        #expect(Self.isCounterStartedNow(generations) && generations.count == 8)
        #expect(events.allSatisfy { $0.instance == "gw1" && $0.time == 1_700_000_000_000 })
        await f.stop()
    }

    @Test func aLateDisconnectOfAnOldSessionNeverMarksAReconnectedUserOffline() async throws {
        let f = try await Fixture()
        try await f.send("gw1", [.connected(user: "bob")], session: "old")
        try await f.send("gw2", [.connected(user: "bob")], session: "new")
        try await f.send("gw1", [.disconnected(.client)], session: "old")
        // Facts of sessions this instance does not hold (a retry, a reaped session) change nothing.
        try await f.send("gw1", [.disconnected(.client), .subscribed(id: "0", destination: "/topic/x")], session: "old")
        try await f.send("gw2", [.disconnected(.client)], session: "old")
        #expect(try await f.user("bob").sessions == ["new": "gw2"])
        let types = try await f.events().map(\.type)
        #expect(types == [.connected, .userOnline, .connected, .disconnected])
        await f.stop()
    }

    @Test func aRetriedBatchIsAppliedOnce() async throws {
        let f = try await Fixture()
        let batch = LifecycleEventsBatch(
            settings: Self.settings, instance: "gw1", loop: 3, batch: 1,
            facts: [LifecycleFact(session: "s", kind: .connected(user: "u"), time: 1), LifecycleFact(session: "s", kind: .disconnected(.client), time: 2)])
        #expect(try await LifecycleFunctions.call(batch, on: f.client).get() == 4)
        #expect(try await LifecycleFunctions.call(batch, on: f.client).get() == -1)
        #expect(try await f.events().count == 4)
        await f.stop()
    }

    @Test func onlyTheConfiguredTypesAreWrittenButPresenceIsKept() async throws {
        let f = try await Fixture()
        let only = LifecycleStreamSettings(types: [.userOnline, .userOffline])
        try await f.send("gw1", [.connected(user: "u"), .subscribed(id: "0", destination: "/topic/t")], session: "s", settings: only)
        #expect(try await f.destination("/topic/t").subscribers == 1)
        try await f.send("gw1", [.disconnected(.client)], session: "s", settings: only)
        let events = try await f.events()
        #expect(events.map(\.type) == [.userOnline, .userOffline])
        #expect(Self.isCounterStartedNow(events.compactMap(\.generation)) && events.compactMap(\.generation).count == 2)
        await f.stop()
    }

    @Test func generationsKeepIncreasingWhenRedisForgetsTheCounter() async throws {
        let f = try await Fixture()
        try await f.send("gw1", [.connected(user: "alice"), .disconnected(.client)], session: "s1")
        let before = try await f.events().compactMap(\.generation)
        // The counter expired after a day without events, or Redis lost its data: a consumer
        // applying only newer generations must still take the user's next events.
        _ = try await f.client.execute(RawCommand("DEL", "switchboard:presence:gen:alice"))
        try await f.send("gw1", [.connected(user: "alice")], session: "s2")
        let after = try await f.events().compactMap(\.generation).dropFirst(before.count)
        #expect(before.count == 4 && after.count == 2)
        #expect(Self.isCounterStartedNow(before) && Self.isCounterStartedNow(Array(after)))
        #expect(after.first! > before.last!)
        await f.stop()
    }

    /// Redis went back to an older copy of its data (a failover to a replica behind, a restart
    /// from an older file): the counter +1 from the restored value repeated generations a
    /// consumer had applied, which dropped the user's next events (a `user-offline`) as old.
    @Test func generationsKeepIncreasingWhenRedisGoesBackToAnOlderCounter() async throws {
        let f = try await Fixture()
        try await f.send("gw1", [.connected(user: "alice"), .disconnected(.client)], session: "s1")
        let before = try await f.events().compactMap(\.generation)
        _ = try await f.client.execute(RawCommand("SET", "switchboard:presence:gen:alice", .string(String(before[0] - 1))))
        try await f.send("gw1", [.connected(user: "alice")], session: "s2")
        let after = try await f.events().compactMap(\.generation).dropFirst(before.count)
        #expect(before.count == 4 && after.count == 2)
        #expect(after.first! > before.last!, "\(before) then \(after)")
        await f.stop()
    }

    /// Increasing generations, from the time in µs (within a minute).
    static func isCounterStartedNow(_ generations: [UInt64]) -> Bool {
        guard let first = generations.first else { return false }
        let now = UInt64(Date().timeIntervalSince1970 * 1_000_000)
        let increasing = zip(generations, generations.dropFirst()).allSatisfy { $1 > $0 }
        return increasing && first + 60_000_000 > now && first < now + 60_000_000
    }

    @Test func anExpiredInstanceIsReapedOnceUnderTheLock() async throws {
        let f = try await Fixture()
        let p = "switchboard:"
        for instance in ["dead", "gw2", "gw3"] {
            #expect(
                try await LifecycleFunctions.call(LeaseRenew(prefix: p, instance: instance, ttlMilliseconds: instance == "dead" ? 50 : 60_000, held: false), on: f.client).get()
                    == 1)
        }
        try await f.send("dead", [.connected(user: "carol"), .subscribed(id: "0", destination: "/topic/room")], session: "d1")
        try await f.send("dead", [.connected(user: "dave")], session: "d2")
        try await f.send("gw2", [.connected(user: "dave"), .subscribed(id: "0", destination: "/topic/other")], session: "g1")
        // Within the grace period: nobody claims it.
        #expect(try await LifecycleFunctions.call(LeaseClaim(prefix: p, me: "gw2", ttlMilliseconds: 50, graceMilliseconds: 60_000), on: f.client).get() == "")
        // The lease expires (50 ms after its renewal).
        let client = f.client
        let expired = try await eventually { try await Int(fromRESP: client.execute(RawCommand("EXISTS", "switchboard:presence:lease:dead"))) == 0 }
        #expect(expired)
        // Two instances notice together: one gets the lock.
        async let a = LifecycleFunctions.call(LeaseClaim(prefix: p, me: "gw2", ttlMilliseconds: 50, graceMilliseconds: 0), on: f.client).get()
        async let b = LifecycleFunctions.call(LeaseClaim(prefix: p, me: "gw3", ttlMilliseconds: 50, graceMilliseconds: 0), on: f.client).get()
        let claims = try await [a, b]
        #expect(claims.filter { $0 == "dead" }.count == 1)
        let winner = claims[0] == "dead" ? "gw2" : "gw3"
        let loser = winner == "gw2" ? "gw3" : "gw2"
        let settings = Self.settings
        #expect(try await LifecycleFunctions.call(LeaseReap(settings: settings, dead: "dead", me: loser, count: 10), on: f.client).get() == -1)
        #expect(try await LifecycleFunctions.call(LeaseReap(settings: settings, dead: "dead", me: winner, count: 1), on: f.client).get() == 1)
        #expect(try await LifecycleFunctions.call(LeaseReap(settings: settings, dead: "dead", me: winner, count: 10), on: f.client).get() == 0)
        // Done: the instance is gone, nothing left to claim.
        #expect(try await LifecycleFunctions.call(LeaseClaim(prefix: p, me: "gw2", ttlMilliseconds: 50, graceMilliseconds: 0), on: f.client).get() == "")
        let lost = try await f.events().filter { $0.reason == .nodeLost || $0.type == .destinationVacated }
        #expect(
            Set(Self.summary(lost)) == [
                "disconnected d1 carol node-lost", "user-offline d1 carol node-lost", "destination-vacated d1 carol /topic/room", "disconnected d2 dave node-lost",
            ])
        #expect(lost.count == 4)
        #expect(try await f.user("dave").sessions == ["g1": "gw2"])
        #expect(try await f.user("carol").online == false)
        // The dead instance comes back: its lease was lost (said once, by the renewal), and its
        // old sessions' facts are ignored.
        #expect(try await LifecycleFunctions.call(LeaseRenew(prefix: p, instance: "dead", ttlMilliseconds: 5_000, held: true), on: f.client).get() == 0)
        #expect(try await f.send("dead", [.disconnected(.client)], session: "d1") == 0)
        await f.stop()
    }

    @Test func joinsAndLeavesArePublishedOnThePresenceChannelWhileSomeoneListens() async throws {
        let f = try await Fixture()
        let notices = NIOLockedValueBox<[PresenceNotice]>([])
        // Nobody listens yet: nothing is published (the function checks PUBSUB NUMSUB).
        try await f.send("gw1", [.connected(user: "early"), .subscribed(id: "0", destination: "/topic/room")], session: "e1")
        let sub = try await f.client.subscribe(to: ["switchboard:presence:/topic/room"], kind: .channel) { message in
            if let notice = PresenceNotice(json: message.payload) { notices.withLockedValue { $0.append(notice) } }
        }
        try await f.send("gw1", [.connected(user: "alice"), .subscribed(id: "0", destination: "/topic/room")], session: "s1")
        // A second subscription of the same session, and one to another destination: no join.
        try await f.send("gw1", [.subscribed(id: "1", destination: "/topic/room"), .subscribed(id: "2", destination: "/topic/other")], session: "s1")
        try await f.send("gw2", [.connected(user: nil), .subscribed(id: "0", destination: "/topic/room")], session: "anon")
        // Its first subscription gone, the session is still there: its leave comes with the last.
        try await f.send("gw1", [.unsubscribed(id: "0")], session: "s1")
        try await f.send("gw1", [.unsubscribed(id: "1")], session: "s1")
        try await f.send("gw2", [.disconnected(.heartbeatTimeout)], session: "anon")
        let all = try await eventually { notices.withLockedValue { $0.count } >= 4 }
        #expect(all)
        #expect(
            notices.withLockedValue { $0 } == [
                PresenceNotice(event: .join, destination: "/topic/room", session: "s1", user: "alice", instance: "gw1", time: 1_700_000_000_000),
                PresenceNotice(event: .join, destination: "/topic/room", session: "anon", instance: "gw2", time: 1_700_000_000_000),
                PresenceNotice(
                    event: .leave, destination: "/topic/room", session: "s1", user: "alice", instance: "gw1", reason: "unsubscribe",
                    time: 1_700_000_000_000),
                PresenceNotice(
                    event: .leave, destination: "/topic/room", session: "anon", instance: "gw2", reason: "heartbeat-timeout",
                    time: 1_700_000_000_000),
            ])
        await sub.unsubscribe()
        await f.stop()
    }

    @Test func aLeavingInstanceDrainsWhatIsStillRegistered() async throws {
        let f = try await Fixture()
        let p = "switchboard:"
        _ = try await LifecycleFunctions.call(LeaseRenew(prefix: p, instance: "gw1", ttlMilliseconds: 5_000, held: false), on: f.client).get()
        try await f.send("gw1", [.connected(user: "erin")], session: "s")
        #expect(try await LifecycleFunctions.call(LeaseClaim(prefix: p, me: "gw1", ttlMilliseconds: 0, graceMilliseconds: 0, target: "gw1"), on: f.client).get() == "gw1")
        #expect(try await LifecycleFunctions.call(LeaseReap(settings: Self.settings, dead: "gw1", me: "gw1", count: 10, reason: .drain), on: f.client).get() == 0)
        #expect(Self.summary(try await f.events()).suffix(2) == ["disconnected s erin drain", "user-offline s erin drain"])
        // The stopping process's flush timed out with that batch applied, its answer lost: sent
        // again after the leave, it is not applied twice (the instance and session registered
        // again, later reaped as node-lost).
        let events = try await f.events().count
        let retry = LifecycleEventsBatch(
            settings: Self.settings, instance: "gw1", loop: 0, batch: 1, facts: [LifecycleFact(session: "s", kind: .connected(user: "erin"), time: 1_700_000_000_000)])
        _ = try await LifecycleFunctions.call(retry, on: f.client).get()
        #expect(try await f.events().count == events)
        #expect(try await f.user("erin").online == false)
        // Nothing else is left; what was applied goes within a minute.
        let left = try await f.client.execute(RawCommand("KEYS", "switchboard:presence:*"))
        // (The marker of events written since Redis last lost its data stays: see
        // aPresenceResetPrecedesTheFirstEventAfterRedisLostItsData.)
        #expect(
            try Set([String](fromRESP: left).filter { !$0.contains(":gen:") })
                == ["switchboard:presence:applied:gw1", "switchboard:presence:events-epoch:switchboard:events"])
        let ttl = try await f.client.execute(RawCommand("PTTL", "switchboard:presence:applied:gw1"))
        #expect(try (1...60_000).contains(Int(fromRESP: ttl)))
        await f.stop()
    }

    @Test func anInstanceRestartedWithTheSameIDGetsANewRegistryAndTheOldOneIsReaped() async throws {
        let f = try await Fixture()
        let p = "switchboard:"
        _ = try await LifecycleFunctions.call(LeaseRenew(prefix: p, instance: "gw1~old", ttlMilliseconds: 50, held: false), on: f.client).get()
        try await f.send("gw1~old", [.connected(user: "gus")], session: "gw1-s-old-1")
        // Restarted at once (kill -9, then systemd): a new registry, gus reconnects to it.
        _ = try await LifecycleFunctions.call(LeaseRenew(prefix: p, instance: "gw1~new", ttlMilliseconds: 60_000, held: false), on: f.client).get()
        try await f.send("gw1~new", [.connected(user: "gus")], session: "gw1-s-new-1")
        #expect(try await f.user("gus").sessions == ["gw1-s-old-1": "gw1", "gw1-s-new-1": "gw1"])
        let client = f.client
        #expect(try await eventually { try await Int(fromRESP: client.execute(RawCommand("EXISTS", "switchboard:presence:lease:gw1~old"))) == 0 })
        let claim = LeaseClaim(prefix: p, me: "gw1~new", ttlMilliseconds: 50, graceMilliseconds: 0)
        #expect(try await LifecycleFunctions.call(claim, on: f.client).get() == "gw1~old")
        #expect(try await LifecycleFunctions.call(LeaseReap(settings: Self.settings, dead: "gw1~old", me: "gw1~new", count: 10), on: f.client).get() == 0)
        #expect(try await f.user("gus").sessions == ["gw1-s-new-1": "gw1"])
        let events = try await f.events()
        #expect(Self.summary(events) == ["connected gw1-s-old-1 gus", "user-online gw1-s-old-1 gus", "connected gw1-s-new-1 gus", "disconnected gw1-s-old-1 gus node-lost"])
        #expect(events.allSatisfy { $0.instance == "gw1" })
        await f.stop()
    }

    @Test func aBatchAfterRedisLostItsDataSaysTheRegistryWasLost() async throws {
        let f = try await Fixture()
        try await f.send("gw1", [.connected(user: "hal")], session: "s1")
        _ = try await f.client.execute(RawCommand("FLUSHALL"))
        // Batch 2 of a loop Redis knows nothing of: applied, and -2.
        #expect(try await f.send("gw1", [.connected(user: "hal")], session: "s2") == -2)
        #expect(try await f.send("gw1", [.disconnected(.client)], session: "s1") == 0)
        #expect(try await f.user("hal").sessions == ["s2": "gw1"])
        await f.stop()
    }

    /// After Redis lost its data, the sessions of that moment ended without events (their
    /// registries went with it): a consumer kept them, and their users online, for good. The
    /// first event written while Redis holds no trace of earlier ones is preceded by a
    /// `presence-reset`, with a generation above those of the events before it; an events
    /// stream deleted alone (presence kept) gets none. Written whatever `types` says.
    @Test func aPresenceResetPrecedesTheFirstEventAfterRedisLostItsData() async throws {
        let f = try await Fixture()
        func types() async throws -> [LifecycleEventType] { try await f.allEvents().map(\.type) }
        try await f.send("gw1", [.connected(user: "hal")], session: "s1")
        #expect(try await types() == [.presenceReset, .connected, .userOnline])
        let first = try await f.allEvents()
        #expect(first[0].generation! <= first[1].generation! && first[0].time != nil && first[0].instance == nil)
        try await f.send("gw1", [.subscribed(id: "0", destination: "/topic/a")], session: "s1")
        #expect(try await types().filter { $0 == .presenceReset }.count == 1)
        // The stream deleted alone: presence still holds hal, nothing to forget.
        _ = try await f.client.execute(RawCommand("DEL", "switchboard:events"))
        try await f.send("gw1", [.disconnected(.client)], session: "s1")
        #expect(try await types() == [.disconnected, .destinationVacated, .userOffline])
        _ = try await f.client.execute(RawCommand("FLUSHALL"))
        // Only user-online and user-offline asked for: the reset all the same.
        let onlineOnly = LifecycleStreamSettings(types: [.userOnline, .userOffline])
        try await f.send("gw1", [.connected(user: "ida")], session: "s2", settings: onlineOnly)
        let after = try await f.allEvents()
        #expect(after.map(\.type) == [.presenceReset, .userOnline])
        #expect(after[0].generation! > first.compactMap(\.generation).max()!)
        // A stream entries were added to but no marker (written by a version before markers):
        // not a loss, no reset, also when consumers deleted every entry they handled.
        _ = try await f.client.execute(RawCommand("DEL", "switchboard:presence:events-epoch:switchboard:events"))
        for event in after { _ = try await f.client.execute(RawCommand("XDEL", "switchboard:events", .string(event.id))) }
        try await f.send("gw1", [.connected(user: "joy")], session: "s3", settings: onlineOnly)
        #expect(try await types() == [.userOnline])
        await f.stop()
    }

    /// One batch of `instance`'s loop, numbered by the caller, with the instance's state.
    static func batch(
        _ instance: String, loop: Int, _ number: UInt64, _ facts: [LifecycleFact.Kind], session: String, known: Bool, seen: Int
    ) -> LifecycleEventsBatch {
        LifecycleEventsBatch(
            settings: settings, instance: instance, loop: loop, batch: number,
            facts: facts.map { LifecycleFact(session: session, kind: $0, time: 1_700_000_000_000) }, known: known, lossesSeen: seen)
    }

    /// The number of a loss in an answer (Redis's time in ms when it was found), or nil.
    static func lossNumber(_ answer: Int, renewal: Bool = false) -> Int? {
        switch renewal ? RegistryLoss(renewAnswer: answer) : RegistryLoss(eventsAnswer: answer) {
        case .numbered(let number): number
        default: nil
        }
    }

    /// A loop's first batch after Redis lost its data used to register the instance again
    /// silently (only later batches checked), and then no other loop found the loss: the
    /// instance's sessions stayed open but out of presence. A loss is numbered, told again to a
    /// retried batch (whose first answer was lost) until the instance has seen it, and told once
    /// to the loops whose earlier batches Redis forgot with the rest. A call built before the
    /// instance acted on a loss (a stale `seen`) still numbers the next loss above it.
    @Test func aLossIsFoundByAnyLoopAndToldUntilSeen() async throws {
        let f = try await Fixture()
        let c = f.client
        #expect(try await LifecycleFunctions.call(Self.batch("gw1", loop: 0, 1, [.connected(user: "ida")], session: "s1", known: false, seen: 0), on: c).get() == 2)
        _ = try await c.execute(RawCommand("FLUSHALL"))
        // Loop 1's first batch, from an instance Redis applied batches of before: a loss.
        let first = Self.batch("gw1", loop: 1, 1, [.connected(user: "ida")], session: "s2", known: true, seen: 0)
        let answer = try await LifecycleFunctions.call(first, on: c).get()
        let loss = try #require(Self.lossNumber(answer), "\(answer)")
        #expect(loss > 1_600_000_000_000)
        // Its answer lost, the batch is retried: told again, not "applied before" (-1).
        #expect(try await LifecycleFunctions.call(first, on: c).get() == answer)
        // Loop 0, whose batch 1 Redis forgot: the same loss while not seen, none once seen.
        let unseen = Self.batch("gw1", loop: 0, 2, [.subscribed(id: "0", destination: "/topic/a")], session: "s2", known: true, seen: 0)
        #expect(try await LifecycleFunctions.call(unseen, on: c).get() == answer)
        let seen = Self.batch("gw1", loop: 0, 3, [.disconnected(.client)], session: "s1", known: true, seen: loss)
        #expect(try await LifecycleFunctions.call(seen, on: c).get() == 0)
        let renew = LeaseRenew(prefix: "switchboard:", instance: "gw1", ttlMilliseconds: 5_000, held: true, lossesSeen: loss)
        #expect(try await LifecycleFunctions.call(renew, on: c).get() == 1)
        #expect(try await f.user("ida").sessions == ["s2": "gw1"])
        // A second loss (Redis flushed again), found by a call built before the first was
        // acted on (seen 0): numbered above the first all the same.
        _ = try await c.execute(RawCommand("FLUSHALL"))
        let stale = Self.batch("gw1", loop: 0, 4, [], session: "s2", known: true, seen: 0)
        let second = try #require(Self.lossNumber(try await LifecycleFunctions.call(stale, on: c).get()))
        #expect(second > loss)
        await f.stop()
    }

    /// A renewal that finds the registry lost, whose answer does not reach the instance: the
    /// next renewal found the lease held, and the loss went unnoticed.
    @Test func aLossFoundByARenewalIsToldUntilSeen() async throws {
        let f = try await Fixture()
        let c = f.client
        let p = "switchboard:"
        func renew(seen: Int, held: Bool = true) async throws -> Int {
            try await LifecycleFunctions.call(LeaseRenew(prefix: p, instance: "gw1", ttlMilliseconds: 5_000, held: held, lossesSeen: seen), on: c).get()
        }
        #expect(try await renew(seen: 0, held: false) == 1)
        _ = try await c.execute(RawCommand("FLUSHALL"))
        let answer = try await renew(seen: 0)
        let loss = try #require(Self.lossNumber(answer, renewal: true), "\(answer)")
        #expect(try await renew(seen: 0) == answer)
        #expect(try await renew(seen: loss) == 1)
        // A batch of a loop whose earlier batches Redis forgot: the loss was told already.
        #expect(try await LifecycleFunctions.call(Self.batch("gw1", loop: 0, 7, [], session: "s", known: true, seen: loss), on: c).get() == 0)
        #expect(RegistryLoss(renewAnswer: 0) == .unnumbered && RegistryLoss(renewAnswer: 1) == nil)
        await f.stop()
    }

    /// A reaper whose call failed held its own lock, which its next claim (`SET NX`) could not
    /// take: reaping stalled for the lock's 30 s. And a reaper that died halfway left the rest
    /// of the registry in presence for good once the dead instance came back and renewed (it
    /// was no longer a candidate): that instance now finishes its own old sessions, without
    /// touching its live registry even if its lease lapses meanwhile (nor taking its own lock
    /// for a loss).
    @Test func aReapStoppedHalfwayIsFinished() async throws {
        let f = try await Fixture()
        let c = f.client
        let p = "switchboard:"
        _ = try await LifecycleFunctions.call(LeaseRenew(prefix: p, instance: "dead", ttlMilliseconds: 50, held: false), on: c).get()
        for (session, user) in [("d1", "jo"), ("d2", "kim"), ("d3", "lee")] { try await f.send("dead", [.connected(user: user)], session: session) }
        #expect(try await eventually { try await Int(fromRESP: c.execute(RawCommand("EXISTS", "switchboard:presence:lease:dead"))) == 0 })
        let claim = LeaseClaim(prefix: p, me: "gw2", ttlMilliseconds: 50, graceMilliseconds: 0)
        #expect(try await LifecycleFunctions.call(claim, on: c).get() == "dead")
        // The reap call failed before it ran: the next claim goes on with it at once.
        #expect(try await LifecycleFunctions.call(claim, on: c).get() == "dead")
        #expect(try await LifecycleFunctions.call(LeaseReap(settings: Self.settings, dead: "dead", me: "gw2", count: 1), on: c).get() == 2)
        // The reaper dies (its lock expires); the dead instance comes back and renews.
        _ = try await c.execute(RawCommand("DEL", "switchboard:presence:reaping:dead"))
        let back = LeaseRenew(prefix: p, instance: "dead", ttlMilliseconds: 60_000, held: true, lossesSeen: 0)
        let loss = try #require(Self.lossNumber(try await LifecycleFunctions.call(back, on: c).get(), renewal: true))
        #expect(try await LifecycleFunctions.call(claim, on: c).get() == "")
        // A session connects again to the instance meanwhile.
        let again = Self.batch("dead", loop: 0, 4, [.connected(user: "kim")], session: "d4", known: true, seen: loss)
        #expect(try await LifecycleFunctions.call(again, on: c).get() >= 0)
        let own = LeaseClaim(prefix: p, me: "dead", ttlMilliseconds: 50, graceMilliseconds: 0)
        #expect(try await LifecycleFunctions.call(own, on: c).get() == "dead")
        // Its lease lapses while it reaps (a long reap): neither a loss nor the live registry's end.
        _ = try await c.execute(RawCommand("DEL", "switchboard:presence:lease:dead"))
        let lapsed = LeaseRenew(prefix: p, instance: "dead", ttlMilliseconds: 60_000, held: true, lossesSeen: loss)
        #expect(try await LifecycleFunctions.call(lapsed, on: c).get() == 1)
        _ = try await c.execute(RawCommand("DEL", "switchboard:presence:lease:dead"))
        #expect(try await LifecycleFunctions.call(LeaseReap(settings: Self.settings, dead: "dead", me: "dead", count: 10), on: c).get() == 0)
        #expect(try await LifecycleFunctions.call(own, on: c).get() == "")
        for user in ["jo", "lee"] { #expect(try await f.user(user).online == false, "\(user)") }
        #expect(try await f.user("kim").sessions == ["d4": "dead"])
        #expect(try await f.events().filter { $0.reason == .nodeLost && $0.type == .disconnected }.count == 3)
        let score = try await c.execute(RawCommand("ZSCORE", "switchboard:presence:instances", "dead"))
        #expect(score.value != .null, "still among the instances")
        await f.stop()
    }

    /// Redis went back to older data (a restart from an older snapshot, a failover to a
    /// replica behind): the instance's registry still held a session that had disconnected
    /// since, and nothing said so (the loop's last batch was there, only older), so the user
    /// stayed online for good. A batch past the one after the last applied says the loss, and
    /// the stale registry is reaped as node-lost by the instance itself.
    @Test func aRollbackOfRedisIsFoundAndTheStaleRegistryReaped() async throws {
        let f = try await Fixture()
        let c = f.client
        let p = "switchboard:"
        _ = try await LifecycleFunctions.call(LeaseRenew(prefix: p, instance: "gw1", ttlMilliseconds: 60_000, held: false, lossesSeen: 0), on: c).get()
        #expect(try await LifecycleFunctions.call(Self.batch("gw1", loop: 0, 1, [.connected(user: "uma")], session: "s1", known: false, seen: 0), on: c).get() == 2)
        #expect(try await LifecycleFunctions.call(Self.batch("gw1", loop: 1, 1, [.connected(user: nil)], session: "t1", known: true, seen: 0), on: c).get() == 1)
        // The snapshot Redis will go back to.
        let dumps = try await Self.snapshot(c)
        #expect(try await LifecycleFunctions.call(Self.batch("gw1", loop: 0, 2, [.disconnected(.client)], session: "s1", known: true, seen: 0), on: c).get() == 2)
        #expect(try await LifecycleFunctions.call(Self.batch("gw1", loop: 1, 2, [], session: "t1", known: true, seen: 0), on: c).get() == 0)
        #expect(try await f.user("uma").online == false)
        try await Self.goBack(c, to: dumps)
        #expect(try await f.user("uma").online, "the rollback brought the session back")
        // Redis went back past the lease too.
        _ = try await c.execute(RawCommand("DEL", "switchboard:presence:lease:gw1"))
        // The loop's next batch (3; Redis's last is 1): the loss is told.
        let answer = try await LifecycleFunctions.call(Self.batch("gw1", loop: 0, 3, [.connected(user: "vic")], session: "s2", known: true, seen: 0), on: c).get()
        let loss = try #require(Self.lossNumber(answer), "\(answer)")
        // The sessions that connected after the snapshot are closed without events: a reset of
        // the instance, before the batch's own events.
        let afterLoss = try await f.allEvents().suffix(3)
        #expect(afterLoss.map(\.type) == [.presenceReset, .connected, .userOnline] && afterLoss.first?.instance == "gw1")
        // Found once: neither the renewal (the lease gone with the rollback) nor the other
        // loop's next batch (its last applied as old) tells another.
        let renew = LeaseRenew(prefix: p, instance: "gw1", ttlMilliseconds: 60_000, held: true, lossesSeen: loss)
        #expect(try await LifecycleFunctions.call(renew, on: c).get() == 1)
        let otherLoop = Self.batch("gw1", loop: 1, 3, [.disconnected(.client)], session: "t1", known: true, seen: loss)
        #expect(try await LifecycleFunctions.call(otherLoop, on: c).get() == 0)
        // The instance reaps what Redis held of it (and closes its sessions, which come back).
        let own = LeaseClaim(prefix: p, me: "gw1", ttlMilliseconds: 60_000, graceMilliseconds: 0)
        #expect(try await LifecycleFunctions.call(own, on: c).get() == "gw1")
        #expect(try await LifecycleFunctions.call(LeaseReap(settings: Self.settings, dead: "gw1", me: "gw1", count: 10), on: c).get() == 0)
        #expect(try await f.user("uma").online == false, "the stale session is reaped")
        let reaped = try await f.events().filter { $0.reason == .nodeLost }
        #expect(Set(Self.summary(reaped)) == ["disconnected s1 uma node-lost", "user-offline s1 uma node-lost", "disconnected t1 node-lost"])
        #expect(reaped.count == 3, "each once")
        // The session of the batch that found the loss is in the live registry.
        #expect(try await f.user("vic").sessions == ["s2": "gw1"])
        // The batches after it are applied as usual.
        let next = Self.batch("gw1", loop: 0, 4, [.disconnected(.client)], session: "s2", known: true, seen: loss)
        #expect(try await LifecycleFunctions.call(next, on: c).get() == 2)
        #expect(try await f.user("vic").online == false)
        #expect(try await f.allEvents().filter { $0.type == .presenceReset }.map(\.instance) == [nil, "gw1"], "one reset of the instance")
        await f.stop()
    }

    /// Keys and dumps of every key of the test's Redis: a snapshot to go back to.
    static func snapshot(_ c: RedisClient) async throws -> [(String, ByteBuffer)] {
        var dumps: [(String, ByteBuffer)] = []
        for key in try [String](fromRESP: try await c.execute(RawCommand("KEYS", "switchboard:*"))) {
            dumps.append((key, try ByteBuffer(fromRESP: try await c.execute(RawCommand("DUMP", .string(key))))))
        }
        return dumps
    }

    static func goBack(_ c: RedisClient, to dumps: [(String, ByteBuffer)]) async throws {
        _ = try await c.execute(RawCommand("FLUSHALL"))
        for (key, dump) in dumps { _ = try await c.execute(RawCommand("RESTORE", .string(key), 0, .bytes(dump))) }
    }

    /// A loss found by a loop whose last batch Redis forgot (the snapshot predates it) left
    /// the other loops' last batches as old: the next one's batch found the same rollback
    /// and numbered it again (the sessions closed twice).
    @Test func aRollbackFoundByALoopRedisForgotIsToldOnce() async throws {
        let f = try await Fixture()
        let c = f.client
        _ = try await LifecycleFunctions.call(LeaseRenew(prefix: "switchboard:", instance: "gw1", ttlMilliseconds: 60_000, held: false, lossesSeen: 0), on: c).get()
        _ = try await LifecycleFunctions.call(Self.batch("gw1", loop: 0, 1, [.connected(user: "abe")], session: "s1", known: false, seen: 0), on: c).get()
        let dumps = try await Self.snapshot(c)
        for n: UInt64 in 1...2 { _ = try await LifecycleFunctions.call(Self.batch("gw1", loop: 1, n, [], session: "t", known: true, seen: 0), on: c).get() }
        _ = try await LifecycleFunctions.call(Self.batch("gw1", loop: 0, 2, [], session: "s1", known: true, seen: 0), on: c).get()
        try await Self.goBack(c, to: dumps)
        let answer = try await LifecycleFunctions.call(Self.batch("gw1", loop: 1, 3, [], session: "t", known: true, seen: 0), on: c).get()
        let loss = try #require(Self.lossNumber(answer), "\(answer)")
        let other = try await LifecycleFunctions.call(Self.batch("gw1", loop: 0, 3, [], session: "s1", known: true, seen: loss), on: c).get()
        #expect(other == 0, "\(other): a second loss")
        await f.stop()
    }

    /// The loop finding a rollback deleted what every loop had applied: a batch applied after
    /// the rollback whose answer was lost, sent again, was applied twice.
    @Test func aBatchAppliedAfterARollbackAndSentAgainIsAppliedOnce() async throws {
        let f = try await Fixture()
        let c = f.client
        _ = try await LifecycleFunctions.call(LeaseRenew(prefix: "switchboard:", instance: "gw1", ttlMilliseconds: 60_000, held: false, lossesSeen: 0), on: c).get()
        for loop in 0...1 { _ = try await LifecycleFunctions.call(Self.batch("gw1", loop: loop, 1, [], session: "x", known: loop == 1, seen: 0), on: c).get() }
        let dumps = try await Self.snapshot(c)
        _ = try await LifecycleFunctions.call(Self.batch("gw1", loop: 0, 2, [], session: "x", known: true, seen: 0), on: c).get()
        try await Self.goBack(c, to: dumps)
        // Loop 1's next batch is applied as usual (its last is there), its answer lost.
        let late = Self.batch("gw1", loop: 1, 2, [.connected(user: "bea")], session: "s9", known: true, seen: 0)
        #expect(try await LifecycleFunctions.call(late, on: c).get() == 2)
        let loss = try #require(Self.lossNumber(try await LifecycleFunctions.call(Self.batch("gw1", loop: 0, 3, [], session: "x", known: true, seen: 0), on: c).get()))
        // Marked, loop 1's batch is a number still (an older library loaded meanwhile reads it).
        let mark = try String(fromRESP: try await c.execute(RawCommand("HGET", "switchboard:presence:applied:gw1", "1")))
        #expect(mark == "2.5")
        let again = try await LifecycleFunctions.call(late, on: c).get()
        #expect(again == -1 || Self.lossNumber(again) == loss, "\(again)")
        #expect(try await f.events().filter { $0.type == .connected && $0.session == "s9" }.count == 1)
        await f.stop()
    }

    /// A batch whose answer the instance never got (it was away), sent again after the
    /// instance was reaped and came back: the reap had deleted what was applied, so the batch
    /// was applied twice (a second `connected`, `user-online`, and later a second
    /// `disconnected`).
    @Test func aBatchSentAgainAfterItsInstanceWasReapedIsNotAppliedTwice() async throws {
        let f = try await Fixture()
        let c = f.client
        let p = "switchboard:"
        _ = try await LifecycleFunctions.call(LeaseRenew(prefix: p, instance: "gw1", ttlMilliseconds: 50, held: false, lossesSeen: 0), on: c).get()
        let first = Self.batch("gw1", loop: 0, 1, [.connected(user: "wes")], session: "s1", known: false, seen: 0)
        #expect(try await LifecycleFunctions.call(first, on: c).get() == 2)
        #expect(try await eventually { try await Int(fromRESP: c.execute(RawCommand("EXISTS", "switchboard:presence:lease:gw1"))) == 0 })
        let claim = LeaseClaim(prefix: p, me: "gw2", ttlMilliseconds: 50, graceMilliseconds: 0)
        #expect(try await LifecycleFunctions.call(claim, on: c).get() == "gw1")
        #expect(try await LifecycleFunctions.call(LeaseReap(settings: Self.settings, dead: "gw1", me: "gw2", count: 10), on: c).get() == 0)
        // Back: the renewal tells the loss; the batch is sent again.
        let back = LeaseRenew(prefix: p, instance: "gw1", ttlMilliseconds: 60_000, held: true, lossesSeen: 0)
        let loss = try #require(Self.lossNumber(try await LifecycleFunctions.call(back, on: c).get(), renewal: true))
        let again = try await LifecycleFunctions.call(first, on: c).get()
        #expect(again == -1 || Self.lossNumber(again) == loss, "\(again)")
        #expect(try await f.events().filter { $0.type == .connected }.count == 1)
        #expect(try await f.user("wes").online == false)
        await f.stop()
    }
}
