import NIOCore

/// A Redis command with a typed response.
///
/// Commands are small value types that encode themselves as a RESP array of bulk strings.
public protocol RedisCommand: Sendable {
    /// The decoded reply type.
    associatedtype Response: RESPTokenDecodable & Sendable = RESPToken

    /// Encodes the command (array header and every argument) into `encoder`.
    func encode(into encoder: inout RESPCommandEncoder)

    /// For blocking commands (e.g. `XREAD BLOCK`): how long the server may legitimately hold the reply.
    /// It is added to the connection's command timeout; `.zero` means "blocks forever" and disables the
    /// timeout. `nil` (the default) for ordinary commands.
    var blockingTimeout: TimeAmount? { get }

    /// The keys (or, for `SPUBLISH`, the shard channel) the command touches. With Redis Cluster the
    /// command goes to the primary that owns their slot (they must all share one); a command without
    /// keys (the default) goes to any primary.
    var keysAffected: [String] { get }

    /// For a write that must reach replicas (``ReplicatedWrite``): the `WAIT` the connection
    /// sends behind it (one per flush for all such writes), whose count completes it. `nil` (the
    /// default) otherwise.
    var replicaWait: WAIT? { get }
}

extension RedisCommand {
    public var blockingTimeout: TimeAmount? { nil }
    public var keysAffected: [String] { [] }
    public var replicaWait: WAIT? { nil }
}

/// A command given as raw arguments, decoded as a ``RESPToken``. Useful for commands without a typed struct.
public struct RawCommand: RedisCommand {
    public typealias Response = RESPToken
    public var arguments: [RedisArgument]
    /// The keys among `arguments`, for routing in a Redis Cluster (none: any primary).
    public var keys: [String]

    public init(_ arguments: RedisArgument...) { self.init(arguments: arguments) }
    public init(arguments: [RedisArgument], keys: [String] = []) {
        self.arguments = arguments
        self.keys = keys
    }

    public var keysAffected: [String] { self.keys }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: self.arguments.count)
        for argument in self.arguments { encoder.encodeBulk(argument) }
    }
}

// MARK: - Connection commands

/// `PING [message]`. Replies `PONG`, or echoes `message`.
public struct PING: RedisCommand {
    public typealias Response = String
    public var message: String?

    public init(message: String? = nil) { self.message = message }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: self.message == nil ? 1 : 2)
        encoder.encodeBulk("PING")
        if let message { encoder.encodeBulk(message) }
    }
}

/// `HELLO protover [AUTH username password] [SETNAME clientname]`.
public struct HELLO: RedisCommand {
    public typealias Response = RESPToken
    public var protocolVersion: Int
    public var username: String?
    public var password: String?
    public var clientName: String?

    /// - Parameters:
    ///   - username: used only together with `password`; defaults to `default` when only a password is given.
    public init(protocolVersion: Int = 3, username: String? = nil, password: String? = nil, clientName: String? = nil) {
        self.protocolVersion = protocolVersion
        self.username = username
        self.password = password
        self.clientName = clientName
    }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 2 + (self.password == nil ? 0 : 3) + (self.clientName == nil ? 0 : 2))
        encoder.encodeBulk("HELLO")
        encoder.encodeBulk(self.protocolVersion)
        if let password {
            encoder.encodeBulk("AUTH")
            encoder.encodeBulk(self.username ?? "default")
            encoder.encodeBulk(password)
        }
        if let clientName {
            encoder.encodeBulk("SETNAME")
            encoder.encodeBulk(clientName)
        }
    }
}

/// `AUTH [username] password`.
public struct AUTH: RedisCommand {
    public typealias Response = RedisOK
    public var username: String?
    public var password: String

    public init(username: String? = nil, password: String) {
        self.username = username
        self.password = password
    }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: self.username == nil ? 2 : 3)
        encoder.encodeBulk("AUTH")
        if let username { encoder.encodeBulk(username) }
        encoder.encodeBulk(self.password)
    }
}

/// `SELECT index`.
public struct SELECT: RedisCommand {
    public typealias Response = RedisOK
    public var database: Int

    public init(database: Int) { self.database = database }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 2)
        encoder.encodeBulk("SELECT")
        encoder.encodeBulk(self.database)
    }
}

/// `CLIENT SETNAME name` (sent during a RESP2 handshake when a client name is configured).
public struct CLIENTSETNAME: RedisCommand {
    public typealias Response = RedisOK
    public var name: String

    public init(name: String) { self.name = name }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeCommand("CLIENT", "SETNAME", self.name)
    }
}

// MARK: - Keys and scripting

/// `GET key`. `nil` when the key does not exist.
public struct GET: RedisCommand {
    public typealias Response = ByteBuffer?
    public var key: String

    public init(_ key: String) { self.key = key }

    public var keysAffected: [String] { [self.key] }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeCommand("GET", self.key)
    }
}

/// `SET key value [NX|XX] [PX milliseconds]`. Replies `RedisOK`, or `nil` when an `NX`/`XX` condition was not met.
public struct SET: RedisCommand {
    public typealias Response = RedisOK?

    /// Optional write condition.
    public enum Condition: Sendable, Hashable {
        case none
        case onlyIfNotExists
        case onlyIfExists
    }

    public var key: String
    public var value: RedisArgument
    public var condition: Condition
    public var expireMilliseconds: Int?

    public init(_ key: String, value: RedisArgument, condition: Condition = .none, expireMilliseconds: Int? = nil) {
        self.key = key
        self.value = value
        self.condition = condition
        self.expireMilliseconds = expireMilliseconds
    }

    public var keysAffected: [String] { [self.key] }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 3 + (self.condition == .none ? 0 : 1) + (self.expireMilliseconds == nil ? 0 : 2))
        encoder.encodeBulk("SET")
        encoder.encodeBulk(self.key)
        encoder.encodeBulk(self.value)
        switch self.condition {
        case .none: break
        case .onlyIfNotExists: encoder.encodeBulk("NX")
        case .onlyIfExists: encoder.encodeBulk("XX")
        }
        if let expireMilliseconds {
            encoder.encodeBulk("PX")
            encoder.encodeBulk(expireMilliseconds)
        }
    }
}

/// `DEL key [key ...]`. Replies the number of keys removed.
public struct DEL: RedisCommand {
    public typealias Response = Int
    public var keys: [String]

    public init(_ keys: String...) { self.keys = keys }
    public init(keys: [String]) { self.keys = keys }

    public var keysAffected: [String] { self.keys }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 1 + self.keys.count)
        encoder.encodeBulk("DEL")
        for key in self.keys { encoder.encodeBulk(key) }
    }
}

/// `EVAL script numkeys [key ...] [arg ...]`. The reply is returned undecoded.
public struct EVAL: RedisCommand {
    public typealias Response = RESPToken
    public var script: String
    public var keys: [String]
    public var arguments: [RedisArgument]

    public init(script: String, keys: [String] = [], arguments: [RedisArgument] = []) {
        self.script = script
        self.keys = keys
        self.arguments = arguments
    }

    public var keysAffected: [String] { self.keys }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 3 + self.keys.count + self.arguments.count)
        encoder.encodeBulk("EVAL")
        encoder.encodeBulk(self.script)
        encoder.encodeBulk(self.keys.count)
        for key in self.keys { encoder.encodeBulk(key) }
        for argument in self.arguments { encoder.encodeBulk(argument) }
    }
}

/// `EVALSHA sha1 numkeys [key ...] [arg ...]`. Fails with a `NOSCRIPT` server error if the script is not cached.
public struct EVALSHA: RedisCommand {
    public typealias Response = RESPToken
    public var sha1: String
    public var keys: [String]
    public var arguments: [RedisArgument]

    public init(sha1: String, keys: [String] = [], arguments: [RedisArgument] = []) {
        self.sha1 = sha1
        self.keys = keys
        self.arguments = arguments
    }

    public var keysAffected: [String] { self.keys }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 3 + self.keys.count + self.arguments.count)
        encoder.encodeBulk("EVALSHA")
        encoder.encodeBulk(self.sha1)
        encoder.encodeBulk(self.keys.count)
        for key in self.keys { encoder.encodeBulk(key) }
        for argument in self.arguments { encoder.encodeBulk(argument) }
    }
}

/// `SCRIPT LOAD script`. Replies the SHA1 digest to use with ``EVALSHA``.
public struct SCRIPTLOAD: RedisCommand {
    public typealias Response = String
    public var script: String

    public init(script: String) { self.script = script }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeCommand("SCRIPT", "LOAD", self.script)
    }
}
