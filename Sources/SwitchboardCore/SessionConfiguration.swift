import NIOCore
import STOMPCodec

/// Settings of every STOMP session. Defaults are safe for production.
public struct SessionConfiguration: Sendable {
    /// The `server` header of `CONNECTED`.
    public var serverName = "switchboard/0.1"
    public var supportedVersions: Set<STOMPVersion> = Set(STOMPVersion.allCases)
    /// The server's heart-beat offer: it can send every `send` ms and wants to hear from the
    /// client every `receive` ms (0 disables either).
    public var heartBeat = STOMPHeartBeat(send: 10_000, receive: 10_000)
    /// A client is closed once silent for `tolerance ×` the negotiated receive interval.
    public var heartBeatTolerance = 2.0
    /// A connection that has not sent `CONNECT` by then is closed.
    public var connectTimeout: TimeAmount = .seconds(10)
    public var decoderLimits = STOMPDecoderLimits()
    public var maxSubscriptionsPerSession = 256
    /// Outbound bytes queued for a connection before it is a slow consumer and is closed.
    public var maxPendingOutboundBytes = 4 * 1024 * 1024
    /// SENDs buffered in one transaction, and open transactions per session.
    public var maxFramesPerTransaction = 1_000
    public var maxTransactionsPerSession = 16
    /// Frames queued behind an unfinished `/app` SEND (reading from the socket stops meanwhile).
    public var maxQueuedFrames = 10_000
    /// Broker destinations (SUBSCRIBE and SEND); `/topic/` by default.
    public var brokerPrefixes: [String] = ["/topic/"]
    /// Application destinations, routed to backends.
    public var applicationPrefixes: [String] = ["/app/"]

    public init() {}

    public func isBrokerDestination(_ d: String) -> Bool { brokerPrefixes.contains { d.hasPrefix($0) } }
    public func isApplicationDestination(_ d: String) -> Bool { applicationPrefixes.contains { d.hasPrefix($0) } }
}
