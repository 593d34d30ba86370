import NIOCore
import Redis

/// Where the lifecycle functions write, and what: shared by every command of an instance.
public struct LifecycleStreamSettings: Sendable, Hashable {
    /// The events stream.
    public var stream: String
    /// `XADD MAXLEN ~` of the stream.
    public var maxLength: Int
    /// The event types written (empty: all). Presence is kept whatever the types.
    public var types: Set<LifecycleEventType>
    /// The key prefix (`redis.channel-prefix`).
    public var prefix: String

    public init(stream: String = "switchboard:events", maxLength: Int = 100_000, types: Set<LifecycleEventType> = [], prefix: String = "switchboard:") {
        self.stream = stream
        self.maxLength = maxLength
        self.types = types
        self.prefix = prefix
    }

    var typesArgument: String {
        types.isEmpty || types.count == LifecycleEventType.allCases.count ? "*" : types.map(\.rawValue).sorted().joined(separator: ",")
    }
}

/// `FCALL switchboard_events 1 <stream> <prefix> <instance> <maxlen> <types> <loop> <batch> <facts…>`:
/// one batch of an event loop's facts, applied to presence and written as events in one step.
/// A batch whose number is not above the loop's last applied one is skipped (a retry).
public struct LifecycleEventsBatch: RedisCommand {
    /// Events written; -1 when the batch had been applied already; a loss of the registry
    /// (``RegistryLoss/init(eventsAnswer:)``: Redis lost its data, or the instance was reaped):
    /// the batch was applied, and the instance's other sessions are not in presence any more.
    public typealias Response = Int
    public var settings: LifecycleStreamSettings
    /// The instance's registry name.
    public var instance: String
    /// The event loop the batch comes from, and its number on that loop (increasing from 1).
    public var loop: Int
    public var batch: UInt64
    public var facts: [LifecycleFact]
    /// Whether Redis applied a batch of this instance before, on any loop: a first batch of a
    /// loop then finds a registry Redis lost, as later batches do.
    public var known: Bool
    /// The number of the last registry loss the instance acted on (``RegistryLoss/numbered(_:)``,
    /// 0: none); nil: the answer says a loss as `-2`, unnumbered (an older gateway's call).
    public var lossesSeen: Int?

    public init(
        settings: LifecycleStreamSettings, instance: String, loop: Int, batch: UInt64, facts: [LifecycleFact], known: Bool = false,
        lossesSeen: Int? = nil
    ) {
        self.settings = settings
        self.instance = instance
        self.loop = loop
        self.batch = batch
        self.facts = facts
        self.known = known
        self.lossesSeen = lossesSeen
    }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 10 + 6 * (facts.count + (lossesSeen == nil ? 0 : 1)))
        encoder.encodeBulk("FCALL")
        encoder.encodeBulk("switchboard_events")
        encoder.encodeBulk(1)
        encoder.encodeBulk(settings.stream)
        encoder.encodeBulk(settings.prefix)
        encoder.encodeBulk(instance)
        encoder.encodeBulk(settings.maxLength)
        encoder.encodeBulk(settings.typesArgument)
        encoder.encodeBulk(loop)
        encoder.encodeBulk(String(batch))
        // The instance's state as a first fact of kind `k`, which older libraries ignore.
        if let lossesSeen {
            for part in ["k", known ? "1" : "0", String(lossesSeen), "", "", "0"] { encoder.encodeBulk(part) }
        }
        for fact in facts { fact.encode(into: &encoder) }
    }
}

/// A loss of an instance's registry, in an answer of `switchboard_events` or
/// `switchboard_lease_renew`: Redis lost its data, or the instance was reaped while away. Its
/// sessions are no longer in presence: the instance closes them, and they register again.
public enum RegistryLoss: Sendable, Hashable {
    /// Said by an older library, without a number: each such answer is a loss to act on.
    case unnumbered
    /// The loss's number (Redis's time in ms when it was found, above the number of the last
    /// loss the caller had acted on): told again until the instance passes it as seen, so an
    /// answer lost on the way is not missed, and a loss told twice is acted on once.
    case numbered(Int)

    /// From an answer of `switchboard_events`; nil when it says no loss.
    public init?(eventsAnswer answer: Int) { self.init(answer, unnumbered: -2) }

    /// From an answer of `switchboard_lease_renew`; nil when the lease was held.
    public init?(renewAnswer answer: Int) { self.init(answer, unnumbered: 0) }

    /// `-(1000 + n)`: loss `n`; `unnumbered`: an older library's answer for a loss.
    private init?(_ answer: Int, unnumbered: Int) {
        if answer == unnumbered {
            self = .unnumbered
        } else if answer <= -1000 {
            self = .numbered(-answer - 1000)
        } else {
            return nil
        }
    }
}

/// `FCALL switchboard_lease_renew 0 <prefix> <instance> <ttl-ms> <known> [<seen>]`: renews the
/// instance's lease; a ``RegistryLoss`` when it had expired and the instance was (being) reaped
/// meanwhile, or Redis lost its data.
public struct LeaseRenew: RedisCommand {
    public typealias Response = Int
    public var prefix: String
    public var instance: String
    public var ttlMilliseconds: Int
    /// Whether this instance held the lease before (false on the first renewal).
    public var held: Bool
    /// The number of the last registry loss the instance acted on; nil: a loss is answered `0`,
    /// unnumbered.
    public var lossesSeen: Int?

    public init(prefix: String, instance: String, ttlMilliseconds: Int, held: Bool, lossesSeen: Int? = nil) {
        self.prefix = prefix
        self.instance = instance
        self.ttlMilliseconds = ttlMilliseconds
        self.held = held
        self.lossesSeen = lossesSeen
    }

    public func encode(into encoder: inout RESPCommandEncoder) {
        if let lossesSeen {
            encoder.encodeCommand(
                "FCALL", "switchboard_lease_renew", "0", prefix, instance, String(ttlMilliseconds), held ? "1" : "0", String(lossesSeen))
        } else {
            encoder.encodeCommand("FCALL", "switchboard_lease_renew", "0", prefix, instance, String(ttlMilliseconds), held ? "1" : "0")
        }
    }
}

/// `FCALL_RO switchboard_lease_others_expired 0 <prefix> <me> <ttl-ms>`: whether another
/// instance's lease has expired (not renewed for the ttl, its lease key gone).
public struct LeaseOthersExpired: RedisCommand {
    public typealias Response = Int
    public var prefix: String
    public var me: String
    public var ttlMilliseconds: Int

    public init(prefix: String, me: String, ttlMilliseconds: Int) {
        self.prefix = prefix
        self.me = me
        self.ttlMilliseconds = ttlMilliseconds
    }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeCommand("FCALL_RO", "switchboard_lease_others_expired", "0", prefix, me, String(ttlMilliseconds))
    }
}

/// `FCALL switchboard_lease_claim 0 <prefix> <me> <ttl-ms> <grace-ms> <target>`: takes the reaping
/// lock of one instance whose lease expired more than the grace period ago (or of `target`,
/// which leaves on purpose). The instance claimed, or nil.
public struct LeaseClaim: RedisCommand {
    public typealias Response = String
    public var prefix: String
    public var me: String
    public var ttlMilliseconds: Int
    public var graceMilliseconds: Int
    public var target: String?

    public init(prefix: String, me: String, ttlMilliseconds: Int, graceMilliseconds: Int, target: String? = nil) {
        self.prefix = prefix
        self.me = me
        self.ttlMilliseconds = ttlMilliseconds
        self.graceMilliseconds = graceMilliseconds
        self.target = target
    }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeCommand("FCALL", "switchboard_lease_claim", "0", prefix, me, String(ttlMilliseconds), String(graceMilliseconds), target ?? "")
    }
}

/// `FCALL switchboard_lease_reap 1 <stream> <prefix> <dead> <maxlen> <types> <me> <count> <reason>`:
/// turns up to `count` sessions of a claimed instance's registry into `disconnected` events
/// (with the `user-offline` and `destination-vacated` that follow). Sessions left; -1: the
/// lock is no longer this instance's.
public struct LeaseReap: RedisCommand {
    public typealias Response = Int
    public var settings: LifecycleStreamSettings
    public var dead: String
    public var me: String
    public var count: Int
    public var reason: DisconnectReason

    public init(settings: LifecycleStreamSettings, dead: String, me: String, count: Int, reason: DisconnectReason = .nodeLost) {
        self.settings = settings
        self.dead = dead
        self.me = me
        self.count = count
        self.reason = reason
    }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeCommand(
            "FCALL", "switchboard_lease_reap", "1", settings.stream, settings.prefix, dead, String(settings.maxLength), settings.typesArgument, me,
            String(count), reason.rawValue)
    }
}

/// `FCALL_RO switchboard_presence 0 <prefix> user <user> 0`: whether a user is online, and
/// their sessions with the instance of each.
public struct UserPresenceQuery: RedisCommand {
    public typealias Response = UserPresence
    public var prefix: String
    public var user: String

    public init(prefix: String, user: String) {
        self.prefix = prefix
        self.user = user
    }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeCommand("FCALL_RO", "switchboard_presence", "0", prefix, "user", user, "0")
    }
}

/// A user's presence across every instance.
public struct UserPresence: RESPTokenDecodable, Sendable, Hashable {
    public var online: Bool
    /// Session id → instance.
    public var sessions: [String: String]

    public init(online: Bool, sessions: [String: String]) {
        self.online = online
        self.sessions = sessions
    }

    public init(fromRESP token: RESPToken) throws {
        let parts = try [String](fromRESP: token)
        guard let first = parts.first, parts.count % 2 == 1 else { throw RESPDecodeError(token: token, expected: "[online, session, instance…]") }
        online = first == "1"
        sessions = [:]
        for i in stride(from: 1, to: parts.count, by: 2) { sessions[parts[i]] = parts[i + 1] }
    }
}

/// `FCALL_RO switchboard_presence 0 <prefix> destination <destination> <limit>`: how many
/// sessions are subscribed to a destination, and up to `limit` of their users.
public struct DestinationPresenceQuery: RedisCommand {
    public typealias Response = DestinationPresence
    public var prefix: String
    public var destination: String
    public var limit: Int

    public init(prefix: String, destination: String, limit: Int) {
        self.prefix = prefix
        self.destination = destination
        self.limit = limit
    }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeCommand("FCALL_RO", "switchboard_presence", "0", prefix, "destination", destination, String(limit))
    }
}

/// A destination's presence across every instance.
public struct DestinationPresence: RESPTokenDecodable, Sendable, Hashable {
    /// Subscribed sessions (a session with two subscriptions to it counts once).
    public var subscribers: Int
    /// Users among them (up to the query's limit; anonymous sessions have none).
    public var users: [String]

    public init(subscribers: Int, users: [String]) {
        self.subscribers = subscribers
        self.users = users
    }

    public init(fromRESP token: RESPToken) throws {
        let parts = try [String](fromRESP: token)
        guard let first = parts.first, let count = Int(first) else { throw RESPDecodeError(token: token, expected: "[subscribers, user…]") }
        subscribers = count
        users = Array(parts.dropFirst())
    }
}
