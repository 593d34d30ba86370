import NIOCore
import Redis

/// The type of one lifecycle event (the stream entry's `type` field).
public enum LifecycleEventType: String, Sendable, Hashable, CaseIterable {
    case connected
    case disconnected
    case subscribed
    case unsubscribed
    /// The user's first session anywhere connected.
    case userOnline = "user-online"
    /// The user's last session anywhere is gone.
    case userOffline = "user-offline"
    /// The first subscriber of a destination, across all instances.
    case destinationOccupied = "destination-occupied"
    /// The last subscriber of a destination left, across all instances.
    case destinationVacated = "destination-vacated"
    /// Written before the first event once Redis holds no trace of earlier ones: the first ever,
    /// or after Redis lost its data (presence with it), when the sessions of that moment ended
    /// without events. Forget what was derived from older events (its ``LifecycleEvent/generation``
    /// is above theirs) and read presence again (`GET /api/users/{user}/presence`); the sessions
    /// still open register again, with `connected` and `user-online`. No session or user. With an
    /// instance: that instance's sessions only (Redis went back to older data and it found it, or
    /// an embedded broker's process started).
    /// Always written, whatever `events.types` says.
    case presenceReset = "presence-reset"
}

/// Why a session ended (the `reason` of `disconnected` and `user-offline`).
public enum DisconnectReason: String, Sendable, Hashable, CaseIterable {
    /// The client sent `DISCONNECT` or closed the connection.
    case client
    case heartbeatTimeout = "heartbeat-timeout"
    case slowConsumer = "slow-consumer"
    /// A protocol violation, a limit, a failed route.
    case error
    case authExpired = "auth-expired"
    /// The instance shut down gracefully.
    case drain
    /// The instance died: its lease expired and another instance reaped its sessions.
    case nodeLost = "node-lost"
}

/// A fact about one session, as the session core reports it (the input of the
/// `switchboard_events` function; the events written follow from it and from presence).
public struct LifecycleFact: Sendable, Hashable {
    public enum Kind: Sendable, Hashable {
        /// CONNECT completed; `user` nil for an anonymous session.
        case connected(user: String?)
        case disconnected(DisconnectReason)
        case subscribed(id: String, destination: String)
        case unsubscribed(id: String)
    }

    public var session: String
    public var kind: Kind
    /// Wall-clock ms when it happened.
    public var time: Int64

    public init(session: String, kind: Kind, time: Int64) {
        self.session = session
        self.kind = kind
        self.time = time
    }

    /// The fact's 6 arguments of `switchboard_events`: kind, session, user, subscription,
    /// destination or reason, time.
    func encode(into encoder: inout RESPCommandEncoder) {
        switch kind {
        case .connected(let user): Self.encode(&encoder, "c", session, user ?? "", "", "", time)
        case .disconnected(let reason): Self.encode(&encoder, "d", session, "", "", reason.rawValue, time)
        case .subscribed(let id, let destination): Self.encode(&encoder, "s", session, "", id, destination, time)
        case .unsubscribed(let id): Self.encode(&encoder, "u", session, "", id, "", time)
        }
    }

    private static func encode(_ encoder: inout RESPCommandEncoder, _ a: String, _ b: String, _ c: String, _ d: String, _ e: String, _ time: Int64) {
        for part in [a, b, c, d, e] { encoder.encodeBulk(part) }
        encoder.encodeBulk(String(time))
    }
}

/// One entry of the events stream, decoded (for consumers).
public struct LifecycleEvent: Sendable, Hashable {
    /// The stream entry id: unique, the natural key of exactly-once processing.
    public var id: String
    public var type: LifecycleEventType
    public var session: String?
    public var user: String?
    /// The instance the session was on.
    public var instance: String?
    public var destination: String?
    /// `disconnected`, `user-offline`: why.
    public var reason: DisconnectReason?
    /// `subscribed`, `unsubscribed`: the subscription id.
    public var subscription: String?
    /// Wall-clock ms (the instance's clock; Redis's for `node-lost`).
    public var time: Int64?
    /// The user's generation, increasing with each event of the user, so one user's facts can
    /// be ordered by a consumer that runs in parallel. Not consecutive: in Redis mode it is the
    /// last one +1 or Redis's time in µs, whichever is larger (so it keeps increasing after
    /// Redis lost its data or went back to an older copy of it); the embedded broker's is +1,
    /// from the event's time in µs after a day without events of the user. A gap says nothing
    /// about missed events.
    public var generation: UInt64?

    public init(id: String, type: LifecycleEventType) {
        self.id = id
        self.type = type
    }

    /// Decodes a stream entry; nil when it is not a lifecycle event (no known `type`).
    public init?(_ entry: RedisStreamEntry) {
        var values: [String: String] = [:]
        for field in entry.fields where values[field.name] == nil { values[field.name] = String(buffer: field.value) }
        self.init(id: entry.id, fields: values)
    }

    /// Decodes the fields of a stream entry; nil without a known `type`.
    public init?(id: String, fields: [String: String]) {
        guard let raw = fields["type"], let type = LifecycleEventType(rawValue: raw) else { return nil }
        self.init(id: id, type: type)
        session = fields["session"]
        user = fields["user"]
        instance = fields["instance"]
        destination = fields["destination"]
        reason = fields["reason"].flatMap(DisconnectReason.init(rawValue:))
        subscription = fields["subscription"]
        time = fields["time"].flatMap { Int64($0) }
        generation = fields["gen"].flatMap { UInt64($0) }
    }
}
