import SwitchboardWire

/// Presence on the embedded broker (one instance, no Redis), as a state machine without I/O:
/// the sessions' facts go in, the lifecycle events that follow come out, with the semantics of
/// the Redis function `switchboard_events` (``LifecycleFunctions``).
///
/// - `connected` registers a session once (a repeated one is ignored); the user's first live
///   session also gives `user-online`.
/// - `disconnected` of a registered session gives `disconnected`, a `destination-vacated` for
///   each destination it was the last subscribed session of (no `unsubscribed` for its
///   subscriptions), then `user-offline` (with the same reason) when it was the user's last
///   session. Presence counts sessions, so a late or repeated `disconnected` never takes a
///   user with another session offline.
/// - `subscribed` with a new subscription id gives `subscribed`, and `destination-occupied`
///   when the session is the destination's first subscribed one (a session subscribed twice
///   to a destination counts once); `unsubscribed` of a known id gives `unsubscribed`, and
///   `destination-vacated` when it was the last.
/// - Facts of an unknown session (never connected, or gone) are ignored.
/// - The process's first event is preceded by a `presence-reset` (whatever ``types`` says;
///   number 0, the time in µs as its generation): the sessions of the process before ended
///   without events.
/// - Each event whose type passes ``types`` gets the next number of this process
///   (``eventID(_:)``) and, with a user, the user's next generation (`gen`): +1, or a new
///   counter at the event's time in µs after a day without an event of the user. Events
///   filtered out use neither.
package struct LocalPresenceState: Sendable {
    /// The instance named in the events.
    package let instance: String
    /// Event ids are `<idPrefix><n>`, n from 1.
    package let idPrefix: String
    /// The event types emitted; empty: all. Presence is kept whatever the types.
    package let types: Set<LifecycleEventType>

    /// A live session: its user (`""` when anonymous) and its subscriptions in the order made.
    struct Session: Sendable {
        var user: String
        var subscriptions: [(id: String, destination: String)] = []
    }

    private var sessions: [String: Session] = [:]
    /// User → their live sessions.
    private var users: [String: Set<String>] = [:]
    /// Destination → subscribed session → its subscriptions to it.
    private var destinations: [String: [String: Int]] = [:]
    /// Destination → user → their subscribed sessions.
    private var destinationUsers: [String: [String: Int]] = [:]
    /// User → generation and the time of its last event.
    private var generations: [String: (value: UInt64, time: Int64)] = [:]
    /// Generations are pruned when there are this many.
    private var pruneAt = 1_024
    private var lastEventNumber: UInt64 = 0
    private var resetEmitted = false

    /// A generation counter is forgotten after this long without an event of its user (the
    /// next starts anew at the time in µs).
    package static let generationLifetimeMs: Int64 = 86_400_000

    package init(instance: String, idPrefix: String, types: Set<LifecycleEventType> = []) {
        self.instance = instance
        self.idPrefix = idPrefix
        self.types = types
    }

    /// Live sessions.
    package var sessionCount: Int { sessions.count }
    /// Users with a live session.
    package var onlineUserCount: Int { users.count }
    /// Destinations with a subscribed session.
    package var occupiedDestinationCount: Int { destinations.count }
    /// Users whose generation is remembered (online, or with an event in the last day).
    package var rememberedGenerations: Int { generations.count }
    /// The number of the last event emitted (0: none yet).
    package var eventsEmitted: UInt64 { lastEventNumber }

    /// The id of event number `n` of this process.
    package func eventID(_ n: UInt64) -> String { idPrefix + String(n) }

    /// Applies `fact` to presence; the events that follow, in order.
    package mutating func apply(_ fact: LifecycleFact) -> [LifecycleEvent] {
        var out: [LifecycleEvent] = []
        switch fact.kind {
        case .connected(let user): connect(fact.session, user: user ?? "", time: fact.time, into: &out)
        case .disconnected(let reason): disconnect(fact.session, reason: reason, time: fact.time, into: &out)
        case .subscribed(let id, let destination): subscribe(fact.session, id: id, destination: destination, time: fact.time, into: &out)
        case .unsubscribed(let id): unsubscribe(fact.session, id: id, time: fact.time, into: &out)
        }
        return out
    }

    /// Whether `user` has a live session, and each of them with this instance.
    package func userPresence(_ user: String) -> UserPresence {
        let live = users[user] ?? []
        return UserPresence(online: !live.isEmpty, sessions: Dictionary(uniqueKeysWithValues: live.map { ($0, instance) }))
    }

    /// How many sessions are subscribed to `destination`, and up to `limit` of their users.
    package func destinationPresence(_ destination: String, limit: Int) -> DestinationPresence {
        Self.sorted(destinationMembers(destination), limit: limit)
    }

    /// How many sessions are subscribed to `destination`, and all their users, unsorted: what to
    /// copy under a lock (sorting a destination of 100,000 users there held every loop's facts).
    package func destinationMembers(_ destination: String) -> (subscribers: Int, users: [String]) {
        (destinations[destination]?.count ?? 0, Array((destinationUsers[destination] ?? [:]).keys))
    }

    /// `members` as the presence API answers them: up to `limit` users, in order.
    package static func sorted(_ members: (subscribers: Int, users: [String]), limit: Int) -> DestinationPresence {
        DestinationPresence(subscribers: members.subscribers, users: Array(members.users.sorted().prefix(max(0, limit))))
    }

    private mutating func connect(_ session: String, user: String, time: Int64, into out: inout [LifecycleEvent]) {
        guard sessions[session] == nil else { return }
        sessions[session] = Session(user: user)
        emit(.connected, session: session, user: user, time: time, into: &out)
        guard !user.isEmpty else { return }
        let first = users[user] == nil
        users[user, default: []].insert(session)
        if first { emit(.userOnline, session: session, user: user, time: time, into: &out) }
    }

    private mutating func disconnect(_ session: String, reason: DisconnectReason, time: Int64, into out: inout [LifecycleEvent]) {
        guard let entry = sessions.removeValue(forKey: session) else { return }
        let user = entry.user
        emit(.disconnected, session: session, user: user, reason: reason, time: time, into: &out)
        for subscription in entry.subscriptions {
            removeSubscription(session, user: user, subscription, time: time, quiet: true, into: &out)
        }
        guard !user.isEmpty, var live = users[user] else { return }
        live.remove(session)
        if live.isEmpty {
            users[user] = nil
            emit(.userOffline, session: session, user: user, reason: reason, time: time, into: &out)
        } else {
            users[user] = live
        }
    }

    private mutating func subscribe(_ session: String, id: String, destination: String, time: Int64, into out: inout [LifecycleEvent]) {
        guard var entry = sessions[session], !entry.subscriptions.contains(where: { $0.id == id }) else { return }
        entry.subscriptions.append((id: id, destination: destination))
        sessions[session] = entry
        let user = entry.user
        emit(.subscribed, session: session, user: user, destination: destination, subscription: id, time: time, into: &out)
        var subscribed = destinations[destination] ?? [:]
        let count = subscribed[session, default: 0] + 1
        subscribed[session] = count
        destinations[destination] = subscribed
        guard count == 1 else { return }
        if !user.isEmpty { destinationUsers[destination, default: [:]][user, default: 0] += 1 }
        if subscribed.count == 1 { emit(.destinationOccupied, session: session, user: user, destination: destination, time: time, into: &out) }
    }

    private mutating func unsubscribe(_ session: String, id: String, time: Int64, into out: inout [LifecycleEvent]) {
        guard var entry = sessions[session], let index = entry.subscriptions.firstIndex(where: { $0.id == id }) else { return }
        let subscription = entry.subscriptions.remove(at: index)
        sessions[session] = entry
        removeSubscription(session, user: entry.user, subscription, time: time, quiet: false, into: &out)
    }

    /// One subscription of `session` ends: `unsubscribed` unless `quiet` (its session is
    /// disconnecting), and `destination-vacated` when it was the destination's last.
    private mutating func removeSubscription(
        _ session: String, user: String, _ subscription: (id: String, destination: String), time: Int64, quiet: Bool,
        into out: inout [LifecycleEvent]
    ) {
        let destination = subscription.destination
        if !quiet {
            emit(.unsubscribed, session: session, user: user, destination: destination, subscription: subscription.id, time: time, into: &out)
        }
        guard var subscribed = destinations[destination] else { return }
        let count = subscribed[session, default: 0] - 1
        if count > 0 {
            subscribed[session] = count
            destinations[destination] = subscribed
            return
        }
        subscribed[session] = nil
        if !user.isEmpty, var usersThere = destinationUsers[destination] {
            let sessionsOfUser = usersThere[user, default: 0] - 1
            usersThere[user] = sessionsOfUser > 0 ? sessionsOfUser : nil
            destinationUsers[destination] = usersThere.isEmpty ? nil : usersThere
        }
        if subscribed.isEmpty {
            destinations[destination] = nil
            emit(.destinationVacated, session: session, user: user, destination: destination, time: time, into: &out)
        } else {
            destinations[destination] = subscribed
        }
    }

    private mutating func emit(
        _ type: LifecycleEventType, session: String, user: String, destination: String? = nil, subscription: String? = nil,
        reason: DisconnectReason? = nil, time: Int64, into out: inout [LifecycleEvent]
    ) {
        guard types.isEmpty || types.contains(type) else { return }
        if !resetEmitted {
            // This process's first event: the sessions of the one before ended without events.
            resetEmitted = true
            var reset = LifecycleEvent(id: eventID(0), type: .presenceReset)
            reset.instance = instance
            reset.time = time
            reset.generation = Self.generationStart(time)
            out.append(reset)
        }
        lastEventNumber += 1
        var event = LifecycleEvent(id: eventID(lastEventNumber), type: type)
        event.session = session
        event.instance = instance
        event.destination = destination
        event.subscription = subscription
        event.reason = reason
        event.time = time
        if !user.isEmpty {
            event.user = user
            event.generation = nextGeneration(of: user, time: time)
        }
        out.append(event)
    }

    /// The user's next generation: +1, or a new counter at the event's time in µs (the user's
    /// first event, or the first after a day without one), so generations keep increasing
    /// across a forgotten counter and a restart of the process.
    private mutating func nextGeneration(of user: String, time: Int64) -> UInt64 {
        var value = Self.generationStart(time)
        if let last = generations[user] {
            value = time - last.time < Self.generationLifetimeMs ? last.value &+ 1 : max(value, last.value &+ 1)
        }
        generations[user] = (value: value, time: max(time, generations[user]?.time ?? time))
        if generations.count >= pruneAt { pruneGenerations(now: time) }
        return value
    }

    /// A new counter's first generation: the time in µs.
    private static func generationStart(_ time: Int64) -> UInt64 {
        let start = UInt64(clamping: time).multipliedReportingOverflow(by: 1_000)
        return start.overflow ? UInt64.max / 2 : max(1, start.partialValue)
    }

    /// Forgets the generations of users without an event for a day (amortized: the next prune
    /// waits until there are twice as many left).
    private mutating func pruneGenerations(now: Int64) {
        generations = generations.filter { now - $0.value.time < Self.generationLifetimeMs }
        pruneAt = max(1_024, generations.count * 2)
    }
}
