import NIOCore

/// `PUBLISH channel message`. Replies the number of clients that received the message.
public struct PUBLISH: RedisCommand {
    public typealias Response = Int
    public var channel: String
    public var message: RedisArgument

    public init(channel: String, message: RedisArgument) {
        self.channel = channel
        self.message = message
    }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 3)
        encoder.encodeBulk("PUBLISH")
        encoder.encodeBulk(self.channel)
        encoder.encodeBulk(self.message)
    }
}

/// `SPUBLISH shardchannel message`. Replies the number of clients that received the message.
public struct SPUBLISH: RedisCommand {
    public typealias Response = Int
    public var channel: String
    public var message: RedisArgument

    public init(channel: String, message: RedisArgument) {
        self.channel = channel
        self.message = message
    }

    public var keysAffected: [String] { [self.channel] }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 3)
        encoder.encodeBulk("SPUBLISH")
        encoder.encodeBulk(self.channel)
        encoder.encodeBulk(self.message)
    }
}

/// The three kinds of Redis pub/sub subscriptions.
public enum RedisSubscriptionKind: Sendable, Hashable, CaseIterable {
    /// `SUBSCRIBE` to exact channel names.
    case channel
    /// `PSUBSCRIBE` to glob-style patterns.
    case pattern
    /// `SSUBSCRIBE` to shard channels (Redis 7+).
    case shardChannel

    /// The command that subscribes (`SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE`).
    public var subscribeCommand: String {
        switch self {
        case .channel: "SUBSCRIBE"
        case .pattern: "PSUBSCRIBE"
        case .shardChannel: "SSUBSCRIBE"
        }
    }

    /// The command that unsubscribes (`UNSUBSCRIBE`, `PUNSUBSCRIBE`, `SUNSUBSCRIBE`).
    public var unsubscribeCommand: String {
        switch self {
        case .channel: "UNSUBSCRIBE"
        case .pattern: "PUNSUBSCRIBE"
        case .shardChannel: "SUNSUBSCRIBE"
        }
    }

    /// The push message kind that carries published messages (`message`, `pmessage`, `smessage`).
    var messageKind: String {
        switch self {
        case .channel: "message"
        case .pattern: "pmessage"
        case .shardChannel: "smessage"
        }
    }
}

/// A subscription management command (`SUBSCRIBE`, `UNSUBSCRIBE`, `PSUBSCRIBE`, `PUNSUBSCRIBE`,
/// `SSUBSCRIBE`, `SUNSUBSCRIBE`).
///
/// The server answers these with one confirmation per name (as RESP3 push messages or RESP2 arrays),
/// so they are executed by the connection's subscription path rather than as ordinary commands; use
/// ``RedisClient/subscribe(to:kind:bufferSize:)`` or ``RedisConnection/subscriptionCommand(_:)``.
public struct SubscriptionCommand: Sendable, Hashable {
    public var kind: RedisSubscriptionKind
    public var isSubscribe: Bool
    public var names: [String]

    public init(kind: RedisSubscriptionKind, isSubscribe: Bool, names: [String]) {
        precondition(!names.isEmpty, "subscription commands need at least one channel/pattern")
        self.kind = kind
        self.isSubscribe = isSubscribe
        self.names = names
    }

    /// The lowercase confirmation kind the server sends back (e.g. `subscribe`, `punsubscribe`).
    public var confirmationKind: String {
        (self.isSubscribe ? self.kind.subscribeCommand : self.kind.unsubscribeCommand).lowercased()
    }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 1 + self.names.count)
        encoder.encodeBulk(self.isSubscribe ? self.kind.subscribeCommand : self.kind.unsubscribeCommand)
        for name in self.names { encoder.encodeBulk(name) }
    }
}

/// `SUBSCRIBE channel [channel ...]`.
public func SUBSCRIBE(_ channels: String...) -> SubscriptionCommand {
    SubscriptionCommand(kind: .channel, isSubscribe: true, names: channels)
}

/// `UNSUBSCRIBE channel [channel ...]`.
public func UNSUBSCRIBE(_ channels: String...) -> SubscriptionCommand {
    SubscriptionCommand(kind: .channel, isSubscribe: false, names: channels)
}

/// `PSUBSCRIBE pattern [pattern ...]`.
public func PSUBSCRIBE(_ patterns: String...) -> SubscriptionCommand {
    SubscriptionCommand(kind: .pattern, isSubscribe: true, names: patterns)
}

/// `PUNSUBSCRIBE pattern [pattern ...]`.
public func PUNSUBSCRIBE(_ patterns: String...) -> SubscriptionCommand {
    SubscriptionCommand(kind: .pattern, isSubscribe: false, names: patterns)
}

/// `SSUBSCRIBE shardchannel [shardchannel ...]`.
public func SSUBSCRIBE(_ channels: String...) -> SubscriptionCommand {
    SubscriptionCommand(kind: .shardChannel, isSubscribe: true, names: channels)
}

/// `SUNSUBSCRIBE shardchannel [shardchannel ...]`.
public func SUNSUBSCRIBE(_ channels: String...) -> SubscriptionCommand {
    SubscriptionCommand(kind: .shardChannel, isSubscribe: false, names: channels)
}

/// A message published to a channel, pattern or shard channel that the client is subscribed to.
public struct RedisPubSubMessage: Sendable, Hashable {
    /// Which kind of subscription matched.
    public var kind: RedisSubscriptionKind
    /// The channel the message was published to.
    public var channel: String
    /// For pattern subscriptions: the pattern that matched `channel`.
    public var pattern: String?
    /// The published payload (a slice of the receive buffer).
    public var payload: ByteBuffer

    public init(kind: RedisSubscriptionKind, channel: String, pattern: String? = nil, payload: ByteBuffer) {
        self.kind = kind
        self.channel = channel
        self.pattern = pattern
        self.payload = payload
    }

    /// The subscription name this message is routed by (pattern for pattern messages, else channel).
    var subscriptionName: String { self.pattern ?? self.channel }

    /// Decodes `message`/`pmessage`/`smessage` pushes (RESP3 push or RESP2 array elements).
    init?(elements: [RESPToken]) {
        guard let first = elements.first, let kind = try? String(fromRESP: first) else { return nil }
        switch kind.lowercased() {
        case "message" where elements.count == 3, "smessage" where elements.count == 3:
            guard let channel = try? String(fromRESP: elements[1]), let payload = try? ByteBuffer(fromRESP: elements[2])
            else { return nil }
            self.init(kind: kind.lowercased() == "message" ? .channel : .shardChannel, channel: channel, payload: payload)
        case "pmessage" where elements.count == 4:
            guard let pattern = try? String(fromRESP: elements[1]), let channel = try? String(fromRESP: elements[2]),
                let payload = try? ByteBuffer(fromRESP: elements[3])
            else { return nil }
            self.init(kind: .pattern, channel: channel, pattern: pattern, payload: payload)
        default:
            return nil
        }
    }
}
