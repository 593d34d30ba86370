import Redis

/// Names of the Redis channels the gateway uses. With the default prefix `switchboard:`:
///
/// | channel | carries |
/// | --- | --- |
/// | `switchboard:dest:<destination>` | messages for a broker destination, e.g. `switchboard:dest:/topic/greetings` |
/// | `switchboard:instance:<instance-id>` | messages addressed to one session on that instance |
/// | `switchboard:presence:<destination>` | join/leave notices of a destination (``PresenceNotice``), subscribed while the instance has a watcher |
///
/// Keys: `switchboard:{<destination>}:seq` and `:log` hold a destination's history (see
/// ``HistoryFunctions``); `switchboard:inbound:<stream>:cursor` the shared position of an
/// inbound stream route (``InboundCursor``).
///
/// On Redis Cluster the gateway uses sharded Pub/Sub (`SPUBLISH`/`SSUBSCRIBE`), whose channels
/// carry a hash tag so each lives on one shard:
///
/// | shard channel | carries |
/// | --- | --- |
/// | `switchboard:{<destination>}:dest` | a destination's messages; same slot as its history keys, so the history function `SPUBLISH`es it |
/// | `switchboard:{instance:<instance-id>}` | messages addressed to one session on that instance |
/// | `switchboard:{canary}`, `switchboard:{canary:<n>}` | the delivery canary, one channel on every shard |
///
/// A backend may `PUBLISH switchboard:dest:/topic/x <body>`: a payload that does not start
/// with the envelope marker (byte 0x01) is delivered as the body, byte for byte.
public struct RedisChannelNaming: Sendable {
    public var prefix: String

    public init(prefix: String = "switchboard:") { self.prefix = prefix }

    public func channel(forDestination destination: String) -> String { prefix + "dest:" + destination }

    public func destination(fromChannel channel: String) -> String? {
        let head = prefix + "dest:"
        guard channel.hasPrefix(head) else { return nil }
        return String(channel.dropFirst(head.count))
    }

    /// The base of a destination's history keys, `<prefix>{<destination>}` (see
    /// ``HistoryFunctions``): the braces put the sequence and the log in one hash slot.
    public func historyKey(forDestination destination: String) -> String { prefix + "{" + destination + "}" }

    public func instanceChannel(_ instanceID: String) -> String { prefix + "instance:" + instanceID }

    /// The shared position of an inbound stream route, `<prefix>inbound:<stream>:cursor`
    /// (``InboundCursor``).
    public func inboundCursorKey(forStream stream: String) -> String { prefix + "inbound:" + stream + ":cursor" }

    /// A destination's shard channel on Redis Cluster, `<prefix>{<destination>}:dest`: in the slot
    /// of its history keys (``historyKey(forDestination:)``).
    public func shardChannel(forDestination destination: String) -> String { historyKey(forDestination: destination) + ":dest" }

    /// The destination of a shard channel; nil for any other channel.
    public func destination(fromShardChannel channel: String) -> String? {
        let head = prefix + "{"
        let tail = "}:dest"
        guard channel.hasPrefix(head), channel.hasSuffix(tail), channel.count >= head.count + tail.count else { return nil }
        return String(channel.dropFirst(head.count).dropLast(tail.count))
    }

    /// An instance's shard channel on Redis Cluster, `<prefix>{instance:<instance-id>}`.
    public func instanceShardChannel(_ instanceID: String) -> String { prefix + "{instance:" + instanceID + "}" }

    /// The delivery canary's channel: `<prefix>canary`, or the shard channel `<prefix>{canary}`.
    public func canaryChannel(sharded: Bool) -> String { sharded ? prefix + "{canary}" : prefix + "canary" }

    /// The delivery canary's shard channels on a Redis Cluster, one on every primary that owns
    /// slots in `topology`: for each, the first of `<prefix>{canary}`, `<prefix>{canary:1}`,
    /// `<prefix>{canary:2}`, … whose slot it owns (a shard that stops delivering is noticed,
    /// whichever it is).
    public func canaryChannels(for topology: RedisClusterTopology) -> [String] {
        var wanted = Set(topology.shards.filter { !$0.slots.isEmpty }.map(\.primary))
        var channels: [String] = []
        var candidate = 0
        // A primary owning one slot is found after about 16,384 candidates.
        while !wanted.isEmpty, candidate < 1_000_000 {
            let channel = candidate == 0 ? canaryChannel(sharded: true) : prefix + "{canary:\(candidate)}"
            if let owner = topology.primary(for: HashSlot(key: channel)), wanted.remove(owner) != nil { channels.append(channel) }
            candidate += 1
        }
        return channels
    }

    /// The channel of a destination's join/leave notices (see ``PresenceNotice``).
    public func presenceChannel(forDestination destination: String) -> String { prefix + "presence:" + destination }

    /// The destination of a presence channel; nil for any other channel.
    public func destination(fromPresenceChannel channel: String) -> String? {
        let head = prefix + "presence:"
        guard channel.hasPrefix(head) else { return nil }
        return String(channel.dropFirst(head.count))
    }

    /// A Redis glob that matches at least every channel of a destination the pattern matches
    /// (Redis `*` also spans separators, so it may match more; the hub filters exactly).
    public func glob(for pattern: DestinationPattern) -> String {
        // On UTF-8 bytes, as the pattern is matched and Redis matches globs: by `Character`, a
        // separator or a glob character followed by a combining mark was one grapheme, so it
        // was neither seen as a separator nor escaped, and the glob matched nothing.
        var out = Self.escapeGlob(Array((prefix + "dest:").utf8))
        let bytes = Array(pattern.text.utf8)
        var start = 0
        while start <= bytes.count {
            let end = bytes[start...].firstIndex { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ".") } ?? bytes.count
            let segment = bytes[start..<end]
            if segment.elementsEqual("*".utf8) || segment.elementsEqual("**".utf8) {
                out.append(UInt8(ascii: "*"))
            } else {
                out += Self.escapeGlob(segment)
            }
            if end < bytes.count { out.append(bytes[end]) }
            start = end + 1
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// `bytes` with Redis's glob characters (`*`, `?`, `[`, `]`, `\\`) escaped.
    static func escapeGlob(_ bytes: some Collection<UInt8>) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        for b in bytes {
            if b == UInt8(ascii: "*") || b == UInt8(ascii: "?") || b == UInt8(ascii: "[") || b == UInt8(ascii: "]") || b == UInt8(ascii: "\\") {
                out.append(UInt8(ascii: "\\"))
            }
            out.append(b)
        }
        return out
    }
}
