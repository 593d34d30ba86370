import NIOCore

/// Writes commands as RESP arrays of bulk strings directly into a `ByteBuffer`.
///
/// ```swift
/// var encoder = RESPCommandEncoder(buffer: allocator.buffer(capacity: 64))
/// encoder.encodeArray(count: 2)
/// encoder.encodeBulk("GET")
/// encoder.encodeBulk("key")
/// ```
public struct RESPCommandEncoder: Sendable {
    /// The encoded bytes.
    public var buffer: ByteBuffer

    public init(buffer: ByteBuffer = ByteBuffer()) {
        self.buffer = buffer
    }

    /// Writes an array header `*<count>\r\n`; the caller must then encode exactly `count` bulk strings.
    public mutating func encodeArray(count: Int) {
        self.buffer.writeInteger(UInt8(ascii: "*"))
        self.writeDecimal(count)
        self.buffer.writeInteger(UInt16(0x0D0A))
    }

    /// Writes a bulk string holding the UTF-8 bytes of `string`.
    public mutating func encodeBulk(_ string: String) {
        self.writeBulkHeader(string.utf8.count)
        self.buffer.writeString(string)
        self.buffer.writeInteger(UInt16(0x0D0A))
    }

    /// Writes a bulk string holding the readable bytes of `bytes`.
    public mutating func encodeBulk(_ bytes: ByteBuffer) {
        self.writeBulkHeader(bytes.readableBytes)
        self.buffer.writeImmutableBuffer(bytes)
        self.buffer.writeInteger(UInt16(0x0D0A))
    }

    /// Writes a bulk string holding `bytes`.
    public mutating func encodeBulk(_ bytes: [UInt8]) {
        self.writeBulkHeader(bytes.count)
        self.buffer.writeBytes(bytes)
        self.buffer.writeInteger(UInt16(0x0D0A))
    }

    /// Writes a bulk string holding the decimal representation of `value`.
    public mutating func encodeBulk(_ value: Int) {
        self.writeBulkHeader(Self.decimalLength(value))
        self.writeDecimal(value)
        self.buffer.writeInteger(UInt16(0x0D0A))
    }

    /// Writes a bulk string for a ``RedisArgument``.
    public mutating func encodeBulk(_ argument: RedisArgument) {
        switch argument {
        case .string(let s): self.encodeBulk(s)
        case .bytes(let b): self.encodeBulk(b)
        case .integer(let i): self.encodeBulk(i)
        }
    }

    /// Convenience: encodes a whole command whose arguments are all strings.
    public mutating func encodeCommand(_ arguments: String...) {
        self.encodeArray(count: arguments.count)
        for argument in arguments { self.encodeBulk(argument) }
    }

    private mutating func writeBulkHeader(_ length: Int) {
        self.buffer.writeInteger(UInt8(ascii: "$"))
        self.writeDecimal(length)
        self.buffer.writeInteger(UInt16(0x0D0A))
    }

    static func decimalLength(_ value: Int) -> Int {
        var length = value < 0 ? 2 : 1
        var v = value.magnitude
        while v >= 10 {
            v /= 10
            length += 1
        }
        return length
    }

    private mutating func writeDecimal(_ value: Int) {
        let length = Self.decimalLength(value)
        var magnitude = value.magnitude
        self.buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { pointer in
            var index = length - 1
            repeat {
                pointer[index] = UInt8(ascii: "0") + UInt8(magnitude % 10)
                magnitude /= 10
                index -= 1
            } while magnitude > 0
            if value < 0 { pointer[0] = UInt8(ascii: "-") }
            return length
        }
    }
}

/// A single command argument: a string, binary bytes or an integer.
public enum RedisArgument: Sendable, Hashable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral {
    case string(String)
    case bytes(ByteBuffer)
    case integer(Int)

    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .integer(value) }
}
