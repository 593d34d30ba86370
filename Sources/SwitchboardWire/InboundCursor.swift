import Redis

/// `FCALL switchboard_inbound_cursor 1 <prefix>inbound:<stream>:cursor <id> <ttl-ms> [<was>]`:
/// the shared position of an inbound stream route (see ``HistoryFunctions``), the newest entry
/// id any instance read past (`through`), and where the instance that stored it first started
/// (`from`: entries up to it were not necessarily read by any). `advanceTo` moves it forward;
/// nil reads it. It moves back only with `rewindingFrom`, and only from that position (the
/// stream went back: see ``InboundStreamCursor``), so an instance's stale view cannot undo
/// another's progress. The key expires `ttlMilliseconds` after the last call (a week by
/// default). A library of an older version ignores `rewindingFrom`.
///
/// An instance that starts reads from it, so entries added while every instance was down are
/// read (before, every instance started at the stream's end); an instance that falls behind
/// it by more than the `once` token's lifetime knows another instance recorded those entries.
public struct InboundCursor: RedisCommand {
    public struct Response: RESPTokenDecodable, Sendable, Equatable {
        /// The newest entry id read past; nil: none stored.
        public var through: String?
        /// Where the first instance to store it started.
        public var from: String?
        /// Redis's time (`TIME`), in milliseconds.
        public var wallMilliseconds: Int64

        public init(through: String?, from: String?, wallMilliseconds: Int64) {
            self.through = through
            self.from = from
            self.wallMilliseconds = wallMilliseconds
        }

        public init(fromRESP token: RESPToken) throws {
            let parts = try [String](fromRESP: token)
            guard parts.count == 3, let wall = Int64(parts[2]) else { throw RESPDecodeError(token: token, expected: "[through, from, ms]") }
            self.through = parts[0].isEmpty ? nil : parts[0]
            self.from = parts[1].isEmpty ? nil : parts[1]
            self.wallMilliseconds = wall
        }
    }

    public var key: String
    public var advanceTo: String?
    public var ttlMilliseconds: Int
    /// Moves `through` back to `advanceTo` if it is this id now.
    public var rewindingFrom: String?

    public init(key: String, advanceTo: String?, ttlMilliseconds: Int = 7 * 86_400_000, rewindingFrom: String? = nil) {
        self.key = key
        self.advanceTo = advanceTo
        self.ttlMilliseconds = ttlMilliseconds
        self.rewindingFrom = rewindingFrom
    }

    public var keysAffected: [String] { [key] }

    public func encode(into encoder: inout RESPCommandEncoder) {
        if let rewindingFrom {
            encoder.encodeCommand("FCALL", "switchboard_inbound_cursor", "1", key, advanceTo ?? "", String(ttlMilliseconds), rewindingFrom)
        } else {
            encoder.encodeCommand("FCALL", "switchboard_inbound_cursor", "1", key, advanceTo ?? "", String(ttlMilliseconds))
        }
    }
}
