import NIOCore

/// `XADD key [MAXLEN [~] threshold] id field value [field value ...]`. Replies the new entry's ID.
public struct XADD: RedisCommand {
    public typealias Response = String
    public var key: String
    /// Entry ID; `*` (the default) lets the server generate one.
    public var id: String
    /// Trim the stream to about (`approximateTrim`) or exactly this many entries.
    public var maxLength: Int?
    public var approximateTrim: Bool
    public var fields: [(name: String, value: RedisArgument)]

    public init(key: String, id: String = "*", maxLength: Int? = nil, approximateTrim: Bool = true, fields: [(name: String, value: RedisArgument)]) {
        self.key = key
        self.id = id
        self.maxLength = maxLength
        self.approximateTrim = approximateTrim
        self.fields = fields
    }

    public var keysAffected: [String] { [self.key] }

    public func encode(into encoder: inout RESPCommandEncoder) {
        let trimCount = self.maxLength == nil ? 0 : (self.approximateTrim ? 3 : 2)
        encoder.encodeArray(count: 3 + trimCount + 2 * self.fields.count)
        encoder.encodeBulk("XADD")
        encoder.encodeBulk(self.key)
        if let maxLength {
            encoder.encodeBulk("MAXLEN")
            if self.approximateTrim { encoder.encodeBulk("~") }
            encoder.encodeBulk(maxLength)
        }
        encoder.encodeBulk(self.id)
        for (name, value) in self.fields {
            encoder.encodeBulk(name)
            encoder.encodeBulk(value)
        }
    }
}

/// `XREAD [COUNT count] [BLOCK milliseconds] STREAMS key [key ...] id [id ...]`.
///
/// Replies `nil` when a blocking read times out. Use a dedicated connection for `BLOCK`
/// (see ``RedisClient/withDedicatedConnection(_:)``).
public struct XREAD: RedisCommand {
    public typealias Response = RedisStreamReadResult?
    public var count: Int?
    public var blockMilliseconds: Int?
    /// `(key, id)` pairs; use `$` to read only new entries.
    public var streams: [(key: String, id: String)]

    public init(count: Int? = nil, blockMilliseconds: Int? = nil, streams: [(key: String, id: String)]) {
        self.count = count
        self.blockMilliseconds = blockMilliseconds
        self.streams = streams
    }

    public var blockingTimeout: TimeAmount? { self.blockMilliseconds.map { .milliseconds(Int64($0)) } }

    public var keysAffected: [String] { self.streams.map(\.key) }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 2 + (self.count == nil ? 0 : 2) + (self.blockMilliseconds == nil ? 0 : 2) + 2 * self.streams.count)
        encoder.encodeBulk("XREAD")
        if let count {
            encoder.encodeBulk("COUNT")
            encoder.encodeBulk(count)
        }
        if let blockMilliseconds {
            encoder.encodeBulk("BLOCK")
            encoder.encodeBulk(blockMilliseconds)
        }
        encoder.encodeBulk("STREAMS")
        for stream in self.streams { encoder.encodeBulk(stream.key) }
        for stream in self.streams { encoder.encodeBulk(stream.id) }
    }
}

/// `XREADGROUP GROUP group consumer [COUNT count] [BLOCK milliseconds] [NOACK] STREAMS key [key ...] id [id ...]`.
///
/// Use `>` as the ID to receive new entries, or an explicit ID to re-read the consumer's pending entries.
/// Replies `nil` when a blocking read times out.
public struct XREADGROUP: RedisCommand {
    public typealias Response = RedisStreamReadResult?
    public var group: String
    public var consumer: String
    public var count: Int?
    public var blockMilliseconds: Int?
    public var noAck: Bool
    public var streams: [(key: String, id: String)]

    public init(group: String, consumer: String, count: Int? = nil, blockMilliseconds: Int? = nil, noAck: Bool = false, streams: [(key: String, id: String)]) {
        self.group = group
        self.consumer = consumer
        self.count = count
        self.blockMilliseconds = blockMilliseconds
        self.noAck = noAck
        self.streams = streams
    }

    public var blockingTimeout: TimeAmount? { self.blockMilliseconds.map { .milliseconds(Int64($0)) } }

    public var keysAffected: [String] { self.streams.map(\.key) }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(
            count: 5 + (self.count == nil ? 0 : 2) + (self.blockMilliseconds == nil ? 0 : 2) + (self.noAck ? 1 : 0) + 2 * self.streams.count
        )
        encoder.encodeBulk("XREADGROUP")
        encoder.encodeBulk("GROUP")
        encoder.encodeBulk(self.group)
        encoder.encodeBulk(self.consumer)
        if let count {
            encoder.encodeBulk("COUNT")
            encoder.encodeBulk(count)
        }
        if let blockMilliseconds {
            encoder.encodeBulk("BLOCK")
            encoder.encodeBulk(blockMilliseconds)
        }
        if self.noAck { encoder.encodeBulk("NOACK") }
        encoder.encodeBulk("STREAMS")
        for stream in self.streams { encoder.encodeBulk(stream.key) }
        for stream in self.streams { encoder.encodeBulk(stream.id) }
    }
}

/// `XACK key group id [id ...]`. Replies the number of entries acknowledged.
public struct XACK: RedisCommand {
    public typealias Response = Int
    public var key: String
    public var group: String
    public var ids: [String]

    public init(key: String, group: String, ids: [String]) {
        self.key = key
        self.group = group
        self.ids = ids
    }

    public var keysAffected: [String] { [self.key] }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 3 + self.ids.count)
        encoder.encodeBulk("XACK")
        encoder.encodeBulk(self.key)
        encoder.encodeBulk(self.group)
        for id in self.ids { encoder.encodeBulk(id) }
    }
}

/// `XGROUP CREATE key group id [MKSTREAM] [ENTRIESREAD n]`.
///
/// Fails with a ``RedisServerError`` whose ``RedisServerError/isBusyGroup`` is `true` if the group exists.
public struct XGROUPCREATE: RedisCommand {
    public typealias Response = RedisOK
    public var key: String
    public var group: String
    /// Last delivered ID; `$` (default) means "only new entries", `0` means "the whole stream".
    public var id: String
    public var makeStream: Bool
    public var entriesRead: Int?

    public init(key: String, group: String, id: String = "$", makeStream: Bool = false, entriesRead: Int? = nil) {
        self.key = key
        self.group = group
        self.id = id
        self.makeStream = makeStream
        self.entriesRead = entriesRead
    }

    public var keysAffected: [String] { [self.key] }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 5 + (self.makeStream ? 1 : 0) + (self.entriesRead == nil ? 0 : 2))
        encoder.encodeBulk("XGROUP")
        encoder.encodeBulk("CREATE")
        encoder.encodeBulk(self.key)
        encoder.encodeBulk(self.group)
        encoder.encodeBulk(self.id)
        if self.makeStream { encoder.encodeBulk("MKSTREAM") }
        if let entriesRead {
            encoder.encodeBulk("ENTRIESREAD")
            encoder.encodeBulk(entriesRead)
        }
    }
}

/// `XAUTOCLAIM key group consumer min-idle-time start [COUNT count]`.
public struct XAUTOCLAIM: RedisCommand {
    public typealias Response = RedisStreamAutoClaimResult
    public var key: String
    public var group: String
    public var consumer: String
    public var minIdleMilliseconds: Int
    public var start: String
    public var count: Int?

    public init(key: String, group: String, consumer: String, minIdleMilliseconds: Int, start: String = "0-0", count: Int? = nil) {
        self.key = key
        self.group = group
        self.consumer = consumer
        self.minIdleMilliseconds = minIdleMilliseconds
        self.start = start
        self.count = count
    }

    public var keysAffected: [String] { [self.key] }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 6 + (self.count == nil ? 0 : 2))
        encoder.encodeBulk("XAUTOCLAIM")
        encoder.encodeBulk(self.key)
        encoder.encodeBulk(self.group)
        encoder.encodeBulk(self.consumer)
        encoder.encodeBulk(self.minIdleMilliseconds)
        encoder.encodeBulk(self.start)
        if let count {
            encoder.encodeBulk("COUNT")
            encoder.encodeBulk(count)
        }
    }
}

/// `XPENDING key group` (summary form).
public struct XPENDING: RedisCommand {
    public typealias Response = RedisStreamPendingSummary
    public var key: String
    public var group: String

    public init(key: String, group: String) {
        self.key = key
        self.group = group
    }

    public var keysAffected: [String] { [self.key] }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeCommand("XPENDING", self.key, self.group)
    }
}

/// `XPENDING key group [IDLE min-idle-time] start end count [consumer]` (extended form).
public struct XPENDINGRANGE: RedisCommand {
    public typealias Response = [RedisStreamPendingEntry]
    public var key: String
    public var group: String
    public var minIdleMilliseconds: Int?
    public var start: String
    public var end: String
    public var count: Int
    public var consumer: String?

    public init(key: String, group: String, minIdleMilliseconds: Int? = nil, start: String = "-", end: String = "+", count: Int, consumer: String? = nil) {
        self.key = key
        self.group = group
        self.minIdleMilliseconds = minIdleMilliseconds
        self.start = start
        self.end = end
        self.count = count
        self.consumer = consumer
    }

    public var keysAffected: [String] { [self.key] }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 6 + (self.minIdleMilliseconds == nil ? 0 : 2) + (self.consumer == nil ? 0 : 1))
        encoder.encodeBulk("XPENDING")
        encoder.encodeBulk(self.key)
        encoder.encodeBulk(self.group)
        if let minIdleMilliseconds {
            encoder.encodeBulk("IDLE")
            encoder.encodeBulk(minIdleMilliseconds)
        }
        encoder.encodeBulk(self.start)
        encoder.encodeBulk(self.end)
        encoder.encodeBulk(self.count)
        if let consumer { encoder.encodeBulk(consumer) }
    }
}

/// `XTRIM key MAXLEN|MINID [~] threshold`. Replies the number of entries deleted.
public struct XTRIM: RedisCommand {
    public typealias Response = Int

    /// The trimming strategy.
    public enum Strategy: Sendable, Hashable {
        case maxLength(Int)
        case minID(String)
    }

    public var key: String
    public var strategy: Strategy
    public var approximate: Bool

    public init(key: String, strategy: Strategy, approximate: Bool = true) {
        self.key = key
        self.strategy = strategy
        self.approximate = approximate
    }

    public var keysAffected: [String] { [self.key] }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: self.approximate ? 5 : 4)
        encoder.encodeBulk("XTRIM")
        encoder.encodeBulk(self.key)
        switch self.strategy {
        case .maxLength(let n):
            encoder.encodeBulk("MAXLEN")
            if self.approximate { encoder.encodeBulk("~") }
            encoder.encodeBulk(n)
        case .minID(let id):
            encoder.encodeBulk("MINID")
            if self.approximate { encoder.encodeBulk("~") }
            encoder.encodeBulk(id)
        }
    }
}

/// `XLEN key`.
public struct XLEN: RedisCommand {
    public typealias Response = Int
    public var key: String

    public init(key: String) { self.key = key }

    public var keysAffected: [String] { [self.key] }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeCommand("XLEN", self.key)
    }
}

/// `XINFO STREAM key` (the summary form, without `FULL`). A missing key is the server error
/// `ERR no such key` (``RedisServerError/isNoSuchKey``).
public struct XINFOSTREAM: RedisCommand {
    public typealias Response = RedisStreamInfo
    public var key: String

    public init(key: String) { self.key = key }

    public var keysAffected: [String] { [self.key] }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeCommand("XINFO", "STREAM", self.key)
    }
}

/// `XINFO GROUPS key`: the stream's consumer groups. A missing key is the server error
/// `ERR no such key` (``RedisServerError/isNoSuchKey``).
public struct XINFOGROUPS: RedisCommand {
    public typealias Response = [RedisStreamGroupInfo]
    public var key: String

    public init(key: String) { self.key = key }

    public var keysAffected: [String] { [self.key] }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeCommand("XINFO", "GROUPS", self.key)
    }
}
