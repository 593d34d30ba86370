import NIOCore

/// One stream entry: its ID and field/value pairs (values are binary-safe).
public struct RedisStreamEntry: Sendable, RESPTokenDecodable {
    /// The entry ID, e.g. `1700000000000-0`.
    public var id: String
    /// Field/value pairs in the order the server returned them. Empty for deleted entries.
    public var fields: [(name: String, value: ByteBuffer)]
    /// `true` when the server returned the ID with a nil field list (the entry was deleted but is still pending).
    public var isDeleted: Bool

    public init(id: String, fields: [(name: String, value: ByteBuffer)], isDeleted: Bool = false) {
        self.id = id
        self.fields = fields
        self.isDeleted = isDeleted
    }

    /// The value of the first field called `name`.
    public subscript(field name: String) -> ByteBuffer? {
        self.fields.first { $0.name == name }?.value
    }

    public init(fromRESP token: RESPToken) throws {
        guard let parts = token.flattenedElements(), parts.count == 2 else {
            throw RESPDecodeError(token: token, expected: "RedisStreamEntry")
        }
        self.id = try String(fromRESP: parts[0])
        if case .null = parts[1].value {
            self.fields = []
            self.isDeleted = true
            return
        }
        guard let flat = parts[1].flattenedElements(), flat.count % 2 == 0 else {
            throw RESPDecodeError(token: token, expected: "RedisStreamEntry fields")
        }
        var fields: [(name: String, value: ByteBuffer)] = []
        fields.reserveCapacity(flat.count / 2)
        var index = 0
        while index < flat.count {
            fields.append((try String(fromRESP: flat[index]), try ByteBuffer(fromRESP: flat[index + 1])))
            index += 2
        }
        self.fields = fields
        self.isDeleted = false
    }
}

/// The entries read from one stream by `XREAD`/`XREADGROUP`.
public struct RedisStreamMessages: Sendable {
    /// The stream key.
    public var key: String
    /// Entries in ID order.
    public var entries: [RedisStreamEntry]

    public init(key: String, entries: [RedisStreamEntry]) {
        self.key = key
        self.entries = entries
    }
}

/// The reply of `XREAD`/`XREADGROUP`: entries per stream, in the order the server sent them.
///
/// Decodes both the RESP3 map shape (`{key: [entries]}`) and the RESP2 array shape (`[[key, [entries]], ...]`).
/// A timed out blocking read replies null, which the commands surface as `nil`.
public struct RedisStreamReadResult: Sendable, RESPTokenDecodable {
    public var streams: [RedisStreamMessages]

    public init(streams: [RedisStreamMessages]) { self.streams = streams }

    /// Entries of the stream `key` (empty if none were returned).
    public subscript(key: String) -> [RedisStreamEntry] {
        self.streams.first { $0.key == key }?.entries ?? []
    }

    public init(fromRESP token: RESPToken) throws {
        var streams: [RedisStreamMessages] = []
        switch token.value {
        case .map(let map):
            for (key, value) in map {
                streams.append(RedisStreamMessages(key: try String(fromRESP: key), entries: try [RedisStreamEntry](fromRESP: value)))
            }
        case .array(let array):
            for element in array {
                guard let pair = element.flattenedElements(), pair.count == 2 else {
                    throw RESPDecodeError(token: token, expected: "RedisStreamReadResult")
                }
                streams.append(RedisStreamMessages(key: try String(fromRESP: pair[0]), entries: try [RedisStreamEntry](fromRESP: pair[1])))
            }
        default:
            throw RESPDecodeError(token: token, expected: "RedisStreamReadResult")
        }
        self.streams = streams
    }
}

/// The reply of `XAUTOCLAIM`.
public struct RedisStreamAutoClaimResult: Sendable, RESPTokenDecodable {
    /// The cursor to pass as `start` to continue scanning (`0-0` when the scan is complete).
    public var nextStartID: String
    /// The entries whose ownership was transferred to the calling consumer.
    public var entries: [RedisStreamEntry]
    /// IDs of pending entries that no longer exist in the stream (removed from the PEL; Redis 7+).
    public var deletedIDs: [String]

    public init(fromRESP token: RESPToken) throws {
        guard let parts = token.flattenedElements(), parts.count == 2 || parts.count == 3 else {
            throw RESPDecodeError(token: token, expected: "RedisStreamAutoClaimResult")
        }
        self.nextStartID = try String(fromRESP: parts[0])
        self.entries = try [RedisStreamEntry](fromRESP: parts[1])
        self.deletedIDs = parts.count == 3 ? try [String](fromRESP: parts[2]) : []
    }
}

/// The summary form of `XPENDING key group`.
public struct RedisStreamPendingSummary: Sendable, RESPTokenDecodable {
    /// Number of pending entries in the group.
    public var count: Int
    /// Smallest and greatest pending IDs (`nil` when nothing is pending).
    public var smallestID: String?
    public var greatestID: String?
    /// Pending entry count per consumer.
    public var consumers: [(name: String, pending: Int)]

    public init(fromRESP token: RESPToken) throws {
        guard let parts = token.flattenedElements(), parts.count == 4 else {
            throw RESPDecodeError(token: token, expected: "RedisStreamPendingSummary")
        }
        self.count = try Int(fromRESP: parts[0])
        self.smallestID = try String?(fromRESP: parts[1])
        self.greatestID = try String?(fromRESP: parts[2])
        var consumers: [(name: String, pending: Int)] = []
        if case .null = parts[3].value {
        } else {
            guard let list = parts[3].flattenedElements() else { throw RESPDecodeError(token: token, expected: "consumers") }
            for consumer in list {
                guard let pair = consumer.flattenedElements(), pair.count == 2 else {
                    throw RESPDecodeError(token: consumer, expected: "consumer pair")
                }
                consumers.append((try String(fromRESP: pair[0]), try Int(fromRESP: pair[1])))
            }
        }
        self.consumers = consumers
    }
}

/// One element of the extended form `XPENDING key group [IDLE ms] start end count [consumer]`.
public struct RedisStreamPendingEntry: Sendable, Hashable, RESPTokenDecodable {
    public var id: String
    public var consumer: String
    /// Milliseconds since the entry was last delivered.
    public var idleMilliseconds: Int
    public var deliveryCount: Int

    public init(fromRESP token: RESPToken) throws {
        guard let parts = token.flattenedElements(), parts.count == 4 else {
            throw RESPDecodeError(token: token, expected: "RedisStreamPendingEntry")
        }
        self.id = try String(fromRESP: parts[0])
        self.consumer = try String(fromRESP: parts[1])
        self.idleMilliseconds = try Int(fromRESP: parts[2])
        self.deliveryCount = try Int(fromRESP: parts[3])
    }
}

/// What `XINFO STREAM key` says of a stream (the fields this client uses; RESP2 flat pairs or a
/// RESP3 map).
public struct RedisStreamInfo: Sendable, Hashable, RESPTokenDecodable {
    /// Entries in the stream now.
    public var length: Int
    /// The greatest id the stream ever gave an entry (it stays when entries are deleted or
    /// trimmed; `XSETID` and a re-created key move it back).
    public var lastGeneratedID: String
    /// Entries ever added to the stream (Redis 7 and later; nil before).
    public var entriesAdded: Int?

    public init(length: Int, lastGeneratedID: String, entriesAdded: Int? = nil) {
        self.length = length
        self.lastGeneratedID = lastGeneratedID
        self.entriesAdded = entriesAdded
    }

    public init(fromRESP token: RESPToken) throws {
        var length: Int?
        var lastGeneratedID: String?
        var entriesAdded: Int?
        for (name, value) in try namedFields(token, expected: "RedisStreamInfo") {
            switch name {
            case "length": length = try Int(fromRESP: value)
            case "last-generated-id": lastGeneratedID = try String(fromRESP: value)
            case "entries-added": entriesAdded = try Int(fromRESP: value)
            default: continue
            }
        }
        guard let length, let lastGeneratedID else { throw RESPDecodeError(token: token, expected: "RedisStreamInfo with length and last-generated-id") }
        self.length = length
        self.lastGeneratedID = lastGeneratedID
        self.entriesAdded = entriesAdded
    }
}

/// What `XINFO GROUPS key` says of one consumer group (RESP2 flat pairs or a RESP3 map).
public struct RedisStreamGroupInfo: Sendable, Hashable, RESPTokenDecodable {
    public var name: String
    /// Entries delivered to the group's consumers and not acknowledged yet.
    public var pending: Int
    /// Entries added to the stream and not delivered to the group yet (Redis 7 and later; nil
    /// before, or when Redis cannot tell, e.g. after entries were deleted in the middle).
    public var lag: Int?

    public init(name: String, pending: Int, lag: Int?) {
        self.name = name
        self.pending = pending
        self.lag = lag
    }

    public init(fromRESP token: RESPToken) throws {
        var fields: (name: String?, pending: Int?, lag: Int?) = (nil, nil, nil)
        for (name, value) in try namedFields(token, expected: "RedisStreamGroupInfo") {
            switch name {
            case "name": fields.name = try String(fromRESP: value)
            case "pending": fields.pending = try Int(fromRESP: value)
            case "lag": fields.lag = try Int?(fromRESP: value)
            default: continue
            }
        }
        guard let name = fields.name, let pending = fields.pending else {
            throw RESPDecodeError(token: token, expected: "RedisStreamGroupInfo with name and pending")
        }
        self.init(name: name, pending: pending, lag: fields.lag)
    }
}

/// The name/value pairs of an `XINFO` reply: RESP2 flat pairs or a RESP3 map.
func namedFields(_ token: RESPToken, expected: String) throws -> [(name: String, value: RESPToken)] {
    guard let parts = token.flattenedElements(), parts.count % 2 == 0 else { throw RESPDecodeError(token: token, expected: expected) }
    return try stride(from: 0, to: parts.count, by: 2).map { (try String(fromRESP: parts[$0]), parts[$0 + 1]) }
}
