import NIOCore

/// One complete, already validated RESP2/RESP3 value.
///
/// A token is a zero-copy slice of the receive buffer. Decoding into ``Value`` is cheap and lazy:
/// aggregates are exposed as ``Array`` / ``Map`` sequences that parse their children on iteration.
///
/// RESP3 attributes (`|`) are treated as a prefix of the value they annotate: ``value`` describes the
/// annotated value and ``attributes`` exposes the attribute map, if any.
public struct RESPToken: Hashable, Sendable, CustomStringConvertible {
    /// The raw bytes of exactly one value (including any attribute prefix).
    public let base: ByteBuffer

    /// Wraps bytes that were validated by ``RESPParser``.
    init(validated base: ByteBuffer) {
        self.base = base
    }

    /// Parses exactly one value from `buffer`. Throws if the bytes are malformed, incomplete or contain trailing data.
    public init(validating buffer: ByteBuffer, limits: RESPParserLimits = .init()) throws {
        var copy = buffer
        var parser = RESPParser(limits: limits)
        guard let token = try parser.next(from: &copy) else {
            throw RESPParsingError(code: .missingCRLF, offset: buffer.readableBytes)
        }
        guard copy.readableBytes == 0 else {
            throw RESPParsingError(code: .invalidLength, offset: token.base.readableBytes)
        }
        self = token
    }

    /// The decoded view of a RESP value.
    public enum Value: Hashable, Sendable {
        case simpleString(ByteBuffer)
        case simpleError(ByteBuffer)
        case bulkString(ByteBuffer)
        /// A RESP3 verbatim string; the buffer includes the 3 byte format and `:` (e.g. `txt:hello`).
        case verbatimString(ByteBuffer)
        case number(Int64)
        case double(Double)
        case boolean(Bool)
        case bigNumber(ByteBuffer)
        /// RESP3 null, or the RESP2 null bulk string / null array.
        case null
        case bulkError(ByteBuffer)
        case array(RESPToken.Array)
        case map(RESPToken.Map)
        case set(RESPToken.Array)
        case push(RESPToken.Array)
    }

    /// The attribute map preceding this value, if the server sent one.
    public var attributes: Map? {
        guard self.base.getInteger(at: self.base.readerIndex, as: UInt8.self) == UInt8(ascii: "|") else { return nil }
        return Self.decode(self.base).attributes
    }

    /// The decoded value.
    public var value: Value {
        Self.decode(self.base).value
    }

    private static func decode(_ base: ByteBuffer) -> (value: Value, attributes: Map?) {
        var buffer = base
        let type = buffer.readInteger(as: UInt8.self)!
        let headerLength = base.withUnsafeReadableBytes { $0.firstIndex(of: 0x0D)! }
        let line = buffer.readSlice(length: headerLength - 1)!
        buffer.moveReaderIndex(forwardBy: 2)
        func count() -> Int { Int(RESPParser.parseInt64(line, from: 0, to: line.readableBytes)!) }
        switch type {
        case UInt8(ascii: "+"): return (.simpleString(line), nil)
        case UInt8(ascii: "-"): return (.simpleError(line), nil)
        case UInt8(ascii: ":"): return (.number(Int64(count())), nil)
        case UInt8(ascii: "_"): return (.null, nil)
        case UInt8(ascii: "#"): return (.boolean(line.getInteger(at: line.readerIndex, as: UInt8.self) == UInt8(ascii: "t")), nil)
        case UInt8(ascii: ","): return (.double(RESPParser.parseDouble(line, from: 0, to: line.readableBytes)!), nil)
        case UInt8(ascii: "("): return (.bigNumber(line), nil)
        case UInt8(ascii: "$"), UInt8(ascii: "!"), UInt8(ascii: "="):
            let length = count()
            if length < 0 { return (.null, nil) }
            let payload = buffer.readSlice(length: length)!
            switch type {
            case UInt8(ascii: "$"): return (.bulkString(payload), nil)
            case UInt8(ascii: "!"): return (.bulkError(payload), nil)
            default: return (.verbatimString(payload), nil)
            }
        case UInt8(ascii: "*"):
            let n = count()
            if n < 0 { return (.null, nil) }
            return (.array(Array(count: n, buffer: buffer)), nil)
        case UInt8(ascii: "~"): return (.set(Array(count: count(), buffer: buffer)), nil)
        case UInt8(ascii: ">"): return (.push(Array(count: count(), buffer: buffer)), nil)
        case UInt8(ascii: "%"): return (.map(Map(count: count(), buffer: buffer)), nil)
        case UInt8(ascii: "|"):
            let n = count()
            var rest = buffer
            for _ in 0..<(2 * n) { _ = RESPParser.readValidated(from: &rest) }
            let attributeBytes = buffer.readSlice(length: buffer.readableBytes - rest.readableBytes)!
            return (Self.decode(rest).value, Map(count: n, buffer: attributeBytes))
        default:
            preconditionFailure("RESPToken holds unvalidated bytes")
        }
    }

    public var description: String {
        switch self.value {
        case .simpleString(let b): return "+\(String(buffer: b))"
        case .simpleError(let b): return "-\(String(buffer: b))"
        case .bulkString(let b): return "\"\(String(buffer: b))\""
        case .verbatimString(let b): return "=\(String(buffer: b))"
        case .number(let n): return "\(n)"
        case .double(let d): return "\(d)"
        case .boolean(let b): return "\(b)"
        case .bigNumber(let b): return "(\(String(buffer: b))"
        case .null: return "null"
        case .bulkError(let b): return "!\(String(buffer: b))"
        case .array(let a): return "[" + a.map(\.description).joined(separator: ", ") + "]"
        case .set(let a): return "~[" + a.map(\.description).joined(separator: ", ") + "]"
        case .push(let a): return ">[" + a.map(\.description).joined(separator: ", ") + "]"
        case .map(let m): return "{" + m.map { "\($0.key): \($0.value)" }.joined(separator: ", ") + "}"
        }
    }
}

extension RESPToken {
    /// A lazy view over the elements of a RESP array, set or push.
    public struct Array: Sequence, Hashable, Sendable {
        /// Number of elements.
        public let count: Int
        /// The bytes of all elements.
        let buffer: ByteBuffer

        init(count: Int, buffer: ByteBuffer) {
            self.count = count
            self.buffer = buffer
        }

        public struct Iterator: IteratorProtocol {
            var buffer: ByteBuffer
            var remaining: Int

            public mutating func next() -> RESPToken? {
                guard self.remaining > 0 else { return nil }
                self.remaining -= 1
                return RESPParser.readValidated(from: &self.buffer)
            }
        }

        public func makeIterator() -> Iterator {
            Iterator(buffer: self.buffer, remaining: self.count)
        }

        public var underestimatedCount: Int { self.count }

        /// Decodes every element as `T`.
        public func decode<T: RESPTokenDecodable>(as: T.Type = T.self) throws -> [T] {
            var result: [T] = []
            result.reserveCapacity(self.count)
            for element in self { result.append(try T(fromRESP: element)) }
            return result
        }
    }

    /// A lazy view over the key/value pairs of a RESP3 map or attribute.
    public struct Map: Sequence, Hashable, Sendable {
        /// Number of key/value pairs.
        public let count: Int
        let buffer: ByteBuffer

        init(count: Int, buffer: ByteBuffer) {
            self.count = count
            self.buffer = buffer
        }

        public struct Iterator: IteratorProtocol {
            var buffer: ByteBuffer
            var remaining: Int

            public mutating func next() -> (key: RESPToken, value: RESPToken)? {
                guard self.remaining > 0 else { return nil }
                self.remaining -= 1
                guard let key = RESPParser.readValidated(from: &self.buffer),
                    let value = RESPParser.readValidated(from: &self.buffer)
                else { return nil }
                return (key, value)
            }
        }

        public func makeIterator() -> Iterator {
            Iterator(buffer: self.buffer, remaining: self.count)
        }

        public var underestimatedCount: Int { self.count }

        /// Returns the value stored under a string key (simple or bulk string), if any.
        public subscript(key: String) -> RESPToken? {
            for (k, v) in self where (try? String(fromRESP: k)) == key { return v }
            return nil
        }
    }
}
