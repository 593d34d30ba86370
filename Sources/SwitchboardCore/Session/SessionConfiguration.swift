import NIOCore
import STOMPCodec
import SwitchboardWire

/// Settings of every STOMP session. Defaults are safe for production.
package struct SessionConfiguration: Sendable {
    /// The `server` header of `CONNECTED`.
    package var serverName = "switchboard/0.1"
    package var supportedVersions: Set<STOMPVersion> = Set(STOMPVersion.allCases)
    /// The server's heart-beat offer: it can send every `send` ms and wants to hear from the
    /// client every `receive` ms (0 disables either).
    package var heartBeat = STOMPHeartBeat(send: 10_000, receive: 10_000)
    /// A client is closed once silent for `tolerance ×` the negotiated receive interval.
    package var heartBeatTolerance = 2.0
    /// A connection that has not sent `CONNECT` by then is closed.
    package var connectTimeout: TimeAmount = .seconds(10)
    package var decoderLimits = STOMPDecoderLimits()
    package var maxSubscriptionsPerSession = 256
    /// Outbound bytes queued for a connection before it is a slow consumer and is closed.
    package var maxPendingOutboundBytes = 4 * 1024 * 1024
    /// A replay the connection takes nothing of for this long (its socket does not drain) ends
    /// the session as a slow consumer: a paused replay holds its messages in memory.
    package var replayStallTimeout: TimeAmount = .seconds(10)
    /// SENDs buffered in one transaction, and open transactions per session.
    package var maxFramesPerTransaction = 1_000
    package var maxTransactionsPerSession = 16
    /// Bytes (bodies and headers) held by a session's open transactions together.
    package var maxTransactionBytes = 4 * 1024 * 1024
    /// Frames queued behind an unfinished `/app` SEND (reading from the socket stops meanwhile).
    package var maxQueuedFrames = 10_000
    /// SENDs to order-keeping backends (Redis) awaiting confirmation at once per session;
    /// reading from the socket pauses while this many are unconfirmed.
    package var maxPipelinedSends = 128
    /// Broker destinations (SUBSCRIBE and SEND); `/topic/` by default.
    package var brokerPrefixes: [String] = ["/topic/"]
    /// Application destinations, routed to backends.
    package var applicationPrefixes: [String] = ["/app/"]

    /// Prefix of user destinations (`/user/queue/...`); nil disables them.
    package var userPrefix: String? = UserDestinations.prefix
    /// What may follow the user prefix (`/user/queue/x` → `/queue/x` must start with one).
    package var userDestinationPrefixes: [String] = ["/queue/"]
    /// Checks tokens; nil: no authentication (every session is anonymous).
    package var authenticator: (any SessionAuthenticator)?
    /// Whether sessions without a token are accepted when an authenticator is set.
    package var allowAnonymous = true
    /// Who may subscribe and send where; nil: everyone, everywhere allowed (but presence
    /// nowhere: see ``AccessPolicy/mayWatchPresence(_:identity:)``).
    package var accessPolicy: (any AccessPolicy)?
    /// Whether `x-presence: true` on SUBSCRIBE can be served: join/leave notices come from the
    /// lifecycle functions, so only in Redis mode with `events.enabled`.
    package var presenceNotices = false
    /// Most sessions of one user on this instance.
    package var maxSessionsPerUser = 100
    /// Token buckets per connection: sustained frames and bytes per second (burst: 2× the rate).
    package var maxFramesPerSecond = 2_000
    package var maxBytesPerSecond = 4 * 1024 * 1024

    package init() {}

    /// Whether `d` is a user destination a client may subscribe to (`/user/queue/...`).
    package func isUserDestination(_ d: String) -> Bool {
        guard let prefix = userPrefix, d.hasPrefix(prefix) else { return false }
        let rest = d.dropFirst(prefix.count - 1)
        return userDestinationPrefixes.contains { rest.hasPrefix($0) }
    }

    /// Whether a backend's `topic` for a user (`/queue/x`, routed to `/~user/<U>/queue/x`) is one
    /// of the user destinations; false when user destinations are off.
    package func isUserTopic(_ topic: String) -> Bool {
        userPrefix != nil && userDestinationPrefixes.contains(where: topic.hasPrefix)
    }

    /// Never one of the gateway's own routing forms (`/~user/…`, `/~session/…`, `/~presence…`),
    /// whatever the prefixes: with a broker prefix `/` a client could otherwise subscribe to
    /// every user's queue, or send to one.
    package func isBrokerDestination(_ d: String) -> Bool { !d.hasPrefix("/~") && brokerPrefixes.contains { d.hasPrefix($0) } }
    package func isApplicationDestination(_ d: String) -> Bool { applicationPrefixes.contains { d.hasPrefix($0) } }
}
