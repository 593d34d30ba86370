import SwitchboardCore
import SwitchboardWire
import Testing

/// Presence on the embedded broker: the events that follow each fact, with the semantics of
/// the Redis function (`LifecycleFunctionTests` checks those against a real Redis).
extension LocalPresenceState {
    /// The events that follow `fact`, but the process's first `presence-reset`
    /// (``LocalPresenceStateTests/theFirstEventOfAProcessIsPrecededByAPresenceReset()``).
    mutating func applied(_ fact: LifecycleFact) -> [LifecycleEvent] {
        apply(fact).filter { $0.type != .presenceReset }
    }
}

@Suite("Local presence state")
struct LocalPresenceStateTests {
    static func fact(_ session: String, _ kind: LifecycleFact.Kind, at time: Int64 = 1_000) -> LifecycleFact {
        LifecycleFact(session: session, kind: kind, time: time)
    }

    /// Events as `type session user destination subscription reason` strings (empty parts dropped).
    static func summary(_ events: [LifecycleEvent]) -> [String] {
        events.map { e in
            [e.type.rawValue, e.session, e.user, e.destination, e.subscription, e.reason?.rawValue].compactMap { $0 }.joined(separator: " ")
        }
    }

    /// The webhook's receiver kept the sessions of a process that died (a crash, `kill -9`) and
    /// their users online: the next process's first event is a `presence-reset`, numbered 0
    /// (the others keep theirs), whatever the types asked for.
    @Test func theFirstEventOfAProcessIsPrecededByAPresenceReset() {
        var p = LocalPresenceState(instance: "gw0", idPrefix: "e-", types: [.userOnline])
        #expect(p.apply(Self.fact("s0", .connected(user: nil))).isEmpty)  // nothing written: no reset yet
        let first = p.apply(Self.fact("s1", .connected(user: "alice"), at: 2_000))
        #expect(first.map(\.type) == [.presenceReset, .userOnline] && first.map(\.id) == ["e-0", "e-1"])
        #expect(first[0].generation == 2_000_000 && first[0].time == 2_000 && first[0].session == nil && first[0].user == nil)
        #expect(first[0].instance == "gw0")
        #expect(first[0].generation! <= first[1].generation!)
        #expect(p.apply(Self.fact("s2", .connected(user: "bob"), at: 2_001)).map(\.type) == [.userOnline])
        #expect(p.eventsEmitted == 2)
    }

    @Test func aUsersSessionsSubscriptionsAndTheirEnd() {
        var p = LocalPresenceState(instance: "gw0", idPrefix: "gw0-e-x-")
        var all: [LifecycleEvent] = []
        all += p.applied(Self.fact("s1", .connected(user: "alice")))
        all += p.applied(Self.fact("s1", .subscribed(id: "a", destination: "/topic/room")))
        all += p.applied(Self.fact("s1", .subscribed(id: "b", destination: "/topic/news")))
        #expect(
            Self.summary(all) == [
                "connected s1 alice", "user-online s1 alice", "subscribed s1 alice /topic/room a", "destination-occupied s1 alice /topic/room",
                "subscribed s1 alice /topic/news b", "destination-occupied s1 alice /topic/news",
            ])
        #expect(all.map(\.id) == (1...6).map { "gw0-e-x-\($0)" })
        #expect(all.map(\.generation) == (0..<6).map { 1_000_000 + UInt64($0) })  // from the time in µs
        #expect(all.allSatisfy { $0.instance == "gw0" && $0.time == 1_000 })
        let unsubscribed = p.applied(Self.fact("s1", .unsubscribed(id: "b")))
        #expect(Self.summary(unsubscribed) == ["unsubscribed s1 alice /topic/news b", "destination-vacated s1 alice /topic/news"])
        // Disconnecting ends its subscriptions without `unsubscribed`, then the user goes offline.
        let gone = p.applied(Self.fact("s1", .disconnected(.client)))
        #expect(Self.summary(gone) == ["disconnected s1 alice client", "destination-vacated s1 alice /topic/room", "user-offline s1 alice client"])
        #expect(gone.map(\.generation) == [1_000_008, 1_000_009, 1_000_010])
        #expect(p.sessionCount == 0 && p.onlineUserCount == 0 && p.occupiedDestinationCount == 0 && p.eventsEmitted == 11)
    }

    @Test func aUserStaysOnlineWhileAnySessionIsLive() {
        var p = LocalPresenceState(instance: "gw0", idPrefix: "e-")
        _ = p.applied(Self.fact("s1", .connected(user: "alice")))
        let second = p.applied(Self.fact("s2", .connected(user: "alice")))
        #expect(Self.summary(second) == ["connected s2 alice"])
        #expect(p.userPresence("alice") == UserPresence(online: true, sessions: ["s1": "gw0", "s2": "gw0"]))
        let first = p.applied(Self.fact("s1", .disconnected(.heartbeatTimeout)))
        #expect(Self.summary(first) == ["disconnected s1 alice heartbeat-timeout"])
        // A repeated or late disconnect of a gone session changes nothing.
        let again = p.applied(Self.fact("s1", .disconnected(.client)))
        #expect(again.isEmpty)
        let last = p.applied(Self.fact("s2", .disconnected(.drain)))
        #expect(Self.summary(last) == ["disconnected s2 alice drain", "user-offline s2 alice drain"])
        #expect(p.userPresence("alice") == UserPresence(online: false, sessions: [:]))
    }

    @Test func aDestinationIsOccupiedByItsFirstSessionAndVacatedByItsLast() {
        var p = LocalPresenceState(instance: "gw0", idPrefix: "e-")
        _ = p.applied(Self.fact("s1", .connected(user: "alice")))
        _ = p.applied(Self.fact("s2", .connected(user: nil)))
        let a = p.applied(Self.fact("s1", .subscribed(id: "1", destination: "/topic/t")))
        let twice = p.applied(Self.fact("s1", .subscribed(id: "2", destination: "/topic/t")))
        let anonymous = p.applied(Self.fact("s2", .subscribed(id: "1", destination: "/topic/t")))
        #expect(Self.summary(a) == ["subscribed s1 alice /topic/t 1", "destination-occupied s1 alice /topic/t"])
        #expect(Self.summary(twice) == ["subscribed s1 alice /topic/t 2"])  // the session counts once
        #expect(Self.summary(anonymous) == ["subscribed s2 /topic/t 1"] && anonymous[0].user == nil && anonymous[0].generation == nil)
        #expect(p.destinationPresence("/topic/t", limit: 10) == DestinationPresence(subscribers: 2, users: ["alice"]))
        let one = p.applied(Self.fact("s1", .unsubscribed(id: "1")))
        #expect(Self.summary(one) == ["unsubscribed s1 alice /topic/t 1"])  // its other subscription is there
        let s1Gone = p.applied(Self.fact("s1", .disconnected(.slowConsumer)))
        #expect(Self.summary(s1Gone) == ["disconnected s1 alice slow-consumer", "user-offline s1 alice slow-consumer"])
        #expect(p.destinationPresence("/topic/t", limit: 10) == DestinationPresence(subscribers: 1, users: []))
        let vacated = p.applied(Self.fact("s2", .unsubscribed(id: "1")))
        #expect(Self.summary(vacated) == ["unsubscribed s2 /topic/t 1", "destination-vacated s2 /topic/t"])
        #expect(p.destinationPresence("/topic/t", limit: 10) == DestinationPresence(subscribers: 0, users: []))
    }

    @Test func factsOfUnknownSessionsAndRepeatsAreIgnored() {
        var p = LocalPresenceState(instance: "gw0", idPrefix: "e-")
        let unknown =
            p.applied(Self.fact("x", .subscribed(id: "1", destination: "/topic/t"))) + p.applied(Self.fact("x", .unsubscribed(id: "1")))
            + p.applied(Self.fact("x", .disconnected(.client)))
        #expect(unknown.isEmpty)
        _ = p.applied(Self.fact("s1", .connected(user: "bob")))
        let reconnect = p.applied(Self.fact("s1", .connected(user: "bob")))
        _ = p.applied(Self.fact("s1", .subscribed(id: "1", destination: "/topic/t")))
        let sameID = p.applied(Self.fact("s1", .subscribed(id: "1", destination: "/topic/other")))
        let unknownID = p.applied(Self.fact("s1", .unsubscribed(id: "9")))
        #expect(reconnect.isEmpty && sameID.isEmpty && unknownID.isEmpty && p.eventsEmitted == 4)
    }

    @Test func theTypeFilterSkipsEventsWithoutUsingNumbersOrGenerations() {
        var p = LocalPresenceState(instance: "gw0", idPrefix: "e-", types: [.userOnline, .userOffline])
        var all: [LifecycleEvent] = []
        all += p.applied(Self.fact("s1", .connected(user: "alice")))
        all += p.applied(Self.fact("s1", .subscribed(id: "1", destination: "/topic/t")))
        all += p.applied(Self.fact("s1", .disconnected(.authExpired)))
        #expect(Self.summary(all) == ["user-online s1 alice", "user-offline s1 alice auth-expired"])
        #expect(all.map(\.id) == ["e-1", "e-2"] && all.map(\.generation) == [1_000_000, 1_000_001])
        // Presence is kept whatever the filter.
        _ = p.applied(Self.fact("s2", .connected(user: "bob")))
        _ = p.applied(Self.fact("s2", .subscribed(id: "1", destination: "/topic/t")))
        #expect(p.destinationPresence("/topic/t", limit: 5).subscribers == 1)
    }

    @Test func aGenerationCounterForgottenAfterADayStartsAboveTheOld() {
        var p = LocalPresenceState(instance: "gw0", idPrefix: "e-", types: [.connected, .disconnected])
        let day = LocalPresenceState.generationLifetimeMs
        let a = p.applied(Self.fact("s1", .connected(user: "alice"), at: 0))
        let b = p.applied(Self.fact("s1", .disconnected(.client), at: day - 1))
        let c = p.applied(Self.fact("s2", .connected(user: "alice"), at: 2 * day))
        #expect([a, b, c].map { $0.first?.generation } == [1, 2, 2 * UInt64(day) * 1_000])
        // Generations of users quiet for a day are forgotten once many are remembered.
        for n in 0..<1_100 { _ = p.applied(Self.fact("u\(n)", .connected(user: "user\(n)"), at: 3 * day)) }
        #expect(p.rememberedGenerations <= 1_101)
        _ = p.applied(Self.fact("later", .connected(user: "carol"), at: 5 * day))
        for n in 0..<1_100 { _ = p.applied(Self.fact("v\(n)", .connected(user: "dave\(n)"), at: 5 * day)) }
        #expect(p.rememberedGenerations < 2_000)
    }
}
