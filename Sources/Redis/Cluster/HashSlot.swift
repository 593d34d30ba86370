/// A Redis Cluster hash slot (0…16383): `CRC16(key) mod 16384`, where only the part between the first
/// `{` and the next `}` is hashed when that part is not empty (the key's *hash tag*), so that related
/// keys such as `{user1}:seq` and `{user1}:log` share a slot.
///
/// The CRC is CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), as in the Redis Cluster
/// specification; the values equal the server's `CLUSTER KEYSLOT`.
public struct HashSlot: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// The number of slots of a Redis Cluster.
    public static let count = 16384
    /// The slot number, 0…16383.
    public let rawValue: Int

    /// - Precondition: `rawValue` is in 0…16383.
    public init(rawValue: Int) {
        precondition((0..<Self.count).contains(rawValue), "hash slot out of range")
        self.rawValue = rawValue
    }

    /// The slot of `key` (a channel name for sharded Pub/Sub).
    public init(key: String) { self.init(key: key.utf8) }

    /// The slot of the key bytes `key`.
    public init<Bytes: Collection>(key: Bytes) where Bytes.Element == UInt8 {
        self.rawValue = Int(Self.crc16(Self.hashedPart(of: key)) & 0x3FFF)
    }

    /// The slot all of `keys` share; `nil` without keys.
    /// - Throws: ``RedisClientError/crossSlot`` when they are in different slots.
    public init?(keys: [String]) throws {
        guard let first = keys.first else { return nil }
        let slot = HashSlot(key: first)
        for key in keys.dropFirst() where HashSlot(key: key) != slot {
            throw RedisClientError(.crossSlot, detail: "keys '\(first)' (slot \(slot)) and '\(key)' (slot \(HashSlot(key: key))) are in different slots")
        }
        self = slot
    }

    public static func < (lhs: HashSlot, rhs: HashSlot) -> Bool { lhs.rawValue < rhs.rawValue }

    public var description: String { "\(self.rawValue)" }

    /// The bytes that are hashed: the hash tag if there is a non-empty one, else the whole key.
    static func hashedPart<Bytes: Collection>(of key: Bytes) -> Bytes.SubSequence where Bytes.Element == UInt8 {
        guard let open = key.firstIndex(of: UInt8(ascii: "{")) else { return key[...] }
        let afterOpen = key.index(after: open)
        guard let close = key[afterOpen...].firstIndex(of: UInt8(ascii: "}")), close != afterOpen else { return key[...] }
        return key[afterOpen..<close]
    }

    static func crc16<Bytes: Sequence>(_ bytes: Bytes) -> UInt16 where Bytes.Element == UInt8 {
        var crc: UInt16 = 0
        for byte in bytes {
            crc = (crc << 8) ^ Self.table[Int(UInt8(truncatingIfNeeded: crc >> 8) ^ byte)]
        }
        return crc
    }

    private static let table: [UInt16] = (0..<256).map { index in
        var crc = UInt16(index) << 8
        for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        return crc
    }
}
