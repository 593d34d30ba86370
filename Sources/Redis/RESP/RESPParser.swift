import NIOCore

/// An error thrown when bytes received from the server are not valid RESP2/RESP3.
public struct RESPParsingError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The kind of malformation that was detected.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        enum Base: Hashable, Sendable {
            case invalidLeadingByte
            case invalidLength
            case missingCRLF
            case canNotParseInteger
            case canNotParseDouble
            case canNotParseBigNumber
            case canNotParseBoolean
            case invalidVerbatimString
            case invalidSimpleString
            case tooDeeplyNested
            case bulkStringTooLarge
            case lineTooLong
        }

        let base: Base

        /// A byte that does not start any RESP type was found where a value was expected.
        public static let invalidLeadingByte = Code(base: .invalidLeadingByte)
        /// A bulk string / aggregate length is negative (other than the RESP2 null `-1`) or not a number.
        public static let invalidLength = Code(base: .invalidLength)
        /// A line or bulk payload is not terminated by `\r\n`.
        public static let missingCRLF = Code(base: .missingCRLF)
        /// An integer (`:`) value contains a non-digit or overflows `Int64`.
        public static let canNotParseInteger = Code(base: .canNotParseInteger)
        /// A double (`,`) value is not a valid floating point literal.
        public static let canNotParseDouble = Code(base: .canNotParseDouble)
        /// A big number (`(`) value contains a non-digit.
        public static let canNotParseBigNumber = Code(base: .canNotParseBigNumber)
        /// A boolean (`#`) value is neither `t` nor `f`.
        public static let canNotParseBoolean = Code(base: .canNotParseBoolean)
        /// A verbatim string (`=`) does not start with a 3 byte format and `:`.
        public static let invalidVerbatimString = Code(base: .invalidVerbatimString)
        /// A simple string or error contains a bare `\r` or `\n`.
        public static let invalidSimpleString = Code(base: .invalidSimpleString)
        /// Aggregates are nested deeper than the configured maximum depth.
        public static let tooDeeplyNested = Code(base: .tooDeeplyNested)
        /// A bulk string / error / verbatim string exceeds the configured maximum length.
        public static let bulkStringTooLarge = Code(base: .bulkStringTooLarge)
        /// A line (simple string, number, length header) exceeds the configured maximum length.
        public static let lineTooLong = Code(base: .lineTooLong)

        public var description: String { "\(self.base)" }
    }

    /// What went wrong.
    public var code: Code
    /// Byte offset, relative to the start of the value being parsed, where the problem was detected.
    public var offset: Int

    public init(code: Code, offset: Int) {
        self.code = code
        self.offset = offset
    }

    public var description: String { "RESPParsingError(\(self.code) at offset \(self.offset))" }
}

/// Limits applied while parsing server replies.
public struct RESPParserLimits: Hashable, Sendable {
    /// Maximum nesting depth of aggregates (arrays, maps, sets, pushes, attributes). Default 100.
    public var maxDepth: Int
    /// Maximum length of a single bulk string in bytes. Default 512 MiB (the Redis `proto-max-bulk-len` default).
    public var maxBulkLength: Int
    /// Maximum length of a single line (simple strings, numbers, headers). Default 64 MiB.
    public var maxLineLength: Int

    public init(maxDepth: Int = 100, maxBulkLength: Int = 512 * 1024 * 1024, maxLineLength: Int = 64 * 1024 * 1024) {
        self.maxDepth = maxDepth
        self.maxBulkLength = maxBulkLength
        self.maxLineLength = maxLineLength
    }

    static let unlimited = RESPParserLimits(maxDepth: .max, maxBulkLength: .max, maxLineLength: .max)
}

/// Incremental, resumable RESP2/RESP3 parser.
///
/// `next(from:)` validates one complete top-level value starting at the buffer's reader index. If the
/// buffer does not yet contain the whole value it returns `nil` *without consuming anything* and remembers
/// how far it got (the number of bytes of fully validated child values and the open aggregate frames), so
/// a large aggregate arriving in many small reads is scanned only once. Once complete, the value is
/// returned as a zero-copy slice of the buffer and the reader index advances past it.
public struct RESPParser: Sendable {
    public let limits: RESPParserLimits
    /// Bytes (relative to the reader index) that have already been validated for the value in progress.
    private var validatedOffset = 0
    /// Remaining child counts of the currently open aggregates, innermost last.
    private var openFrames: [Int] = []

    public init(limits: RESPParserLimits = .init()) {
        self.limits = limits
    }

    /// Parses one complete RESP value from `buffer`, or returns `nil` if more bytes are needed.
    public mutating func next(from buffer: inout ByteBuffer) throws(RESPParsingError) -> RESPToken? {
        var offset = self.validatedOffset
        while true {
            guard let item = try Self.parseItem(buffer, at: offset, depth: self.openFrames.count, limits: self.limits) else {
                self.validatedOffset = offset
                return nil
            }
            offset = item.end
            if item.children > 0 {
                self.openFrames.append(item.children)
                continue
            }
            // A complete element: close every frame that is now complete.
            var topLevelDone = true
            while !self.openFrames.isEmpty {
                self.openFrames[self.openFrames.count - 1] -= 1
                if self.openFrames[self.openFrames.count - 1] == 0 {
                    self.openFrames.removeLast()
                } else {
                    topLevelDone = false
                    break
                }
            }
            if topLevelDone {
                self.validatedOffset = 0
                let slice = buffer.readSlice(length: offset)!
                return RESPToken(validated: slice)
            }
        }
    }

    /// Reads one already validated value off the front of `buffer` (used by lazy aggregate views).
    static func readValidated(from buffer: inout ByteBuffer) -> RESPToken? {
        var parser = RESPParser(limits: .unlimited)
        return try? parser.next(from: &buffer)
    }

    struct Item {
        /// Offset just past this item's own bytes (header and payload, but not children).
        var end: Int
        /// Number of child values that follow (0 for scalars and empty aggregates).
        var children: Int
    }

    /// Parses the item (scalar, or aggregate header) starting at `offset`.
    static func parseItem(
        _ buffer: ByteBuffer,
        at offset: Int,
        depth: Int,
        limits: RESPParserLimits
    ) throws(RESPParsingError) -> Item? {
        let readable = buffer.readableBytes
        guard offset < readable else { return nil }
        let typeByte = buffer.getInteger(at: buffer.readerIndex + offset, as: UInt8.self)!
        let lineStart = offset + 1
        guard let lineEnd = try Self.findLineEnd(buffer, from: lineStart, limits: limits) else { return nil }
        // `lineEnd` is the offset of the "\r" of the terminating "\r\n".
        let afterLine = lineEnd + 2
        switch typeByte {
        case UInt8(ascii: "+"), UInt8(ascii: "-"):
            return Item(end: afterLine, children: 0)
        case UInt8(ascii: ":"):
            guard Self.parseInt64(buffer, from: lineStart, to: lineEnd) != nil else {
                throw RESPParsingError(code: .canNotParseInteger, offset: lineStart)
            }
            return Item(end: afterLine, children: 0)
        case UInt8(ascii: "_"):
            guard lineEnd == lineStart else { throw RESPParsingError(code: .missingCRLF, offset: lineStart) }
            return Item(end: afterLine, children: 0)
        case UInt8(ascii: "#"):
            guard lineEnd == lineStart + 1,
                let b = buffer.getInteger(at: buffer.readerIndex + lineStart, as: UInt8.self),
                b == UInt8(ascii: "t") || b == UInt8(ascii: "f")
            else { throw RESPParsingError(code: .canNotParseBoolean, offset: lineStart) }
            return Item(end: afterLine, children: 0)
        case UInt8(ascii: ","):
            guard Self.parseDouble(buffer, from: lineStart, to: lineEnd) != nil else {
                throw RESPParsingError(code: .canNotParseDouble, offset: lineStart)
            }
            return Item(end: afterLine, children: 0)
        case UInt8(ascii: "("):
            guard Self.isBigNumber(buffer, from: lineStart, to: lineEnd) else {
                throw RESPParsingError(code: .canNotParseBigNumber, offset: lineStart)
            }
            return Item(end: afterLine, children: 0)
        case UInt8(ascii: "$"), UInt8(ascii: "!"), UInt8(ascii: "="):
            guard let length = Self.parseInt64(buffer, from: lineStart, to: lineEnd) else {
                throw RESPParsingError(code: .invalidLength, offset: lineStart)
            }
            if length == -1 && typeByte == UInt8(ascii: "$") {
                return Item(end: afterLine, children: 0)  // RESP2 null bulk string
            }
            guard length >= 0 else { throw RESPParsingError(code: .invalidLength, offset: lineStart) }
            guard length <= limits.maxBulkLength else {
                throw RESPParsingError(code: .bulkStringTooLarge, offset: lineStart)
            }
            // Compared without adding to the length, which a limit raised to .max lets reach Int.max.
            guard Int(length) <= readable - afterLine - 2 else { return nil }
            let payloadEnd = afterLine + Int(length)
            guard buffer.getInteger(at: buffer.readerIndex + payloadEnd, as: UInt16.self) == 0x0D0A else {
                throw RESPParsingError(code: .missingCRLF, offset: payloadEnd)
            }
            if typeByte == UInt8(ascii: "=") {
                guard length >= 4, buffer.getInteger(at: buffer.readerIndex + afterLine + 3, as: UInt8.self) == UInt8(ascii: ":")
                else { throw RESPParsingError(code: .invalidVerbatimString, offset: afterLine) }
            }
            return Item(end: payloadEnd + 2, children: 0)
        case UInt8(ascii: "*"), UInt8(ascii: "~"), UInt8(ascii: ">"), UInt8(ascii: "%"), UInt8(ascii: "|"):
            guard let count = Self.parseInt64(buffer, from: lineStart, to: lineEnd) else {
                throw RESPParsingError(code: .invalidLength, offset: lineStart)
            }
            if count == -1 && typeByte == UInt8(ascii: "*") {
                return Item(end: afterLine, children: 0)  // RESP2 null array
            }
            // Each child needs at least 3 bytes, which bounds the count by the bulk limit sensibly.
            guard count >= 0, count <= Int64(Int32.max) else {
                throw RESPParsingError(code: .invalidLength, offset: lineStart)
            }
            var children = Int(count)
            if typeByte == UInt8(ascii: "%") || typeByte == UInt8(ascii: "|") { children *= 2 }
            // An attribute is a prefix of the value that follows it: that value is one more child.
            if typeByte == UInt8(ascii: "|") { children += 1 }
            if children > 0 && depth + 1 > limits.maxDepth {
                throw RESPParsingError(code: .tooDeeplyNested, offset: offset)
            }
            return Item(end: afterLine, children: children)
        default:
            throw RESPParsingError(code: .invalidLeadingByte, offset: offset)
        }
    }

    /// Returns the offset of the `\r` of the first `\r\n` at or after `from`, `nil` if not yet received.
    static func findLineEnd(_ buffer: ByteBuffer, from: Int, limits: RESPParserLimits) throws(RESPParsingError) -> Int? {
        let readable = buffer.readableBytes
        let result: Result<Int?, RESPParsingError> = buffer.withUnsafeReadableBytes { bytes in
            guard from < bytes.count else { return .success(nil) }
            guard let cr = bytes[from...].firstIndex(where: { $0 == 0x0D || $0 == 0x0A }) else {
                if readable - from > limits.maxLineLength {
                    return .failure(RESPParsingError(code: .lineTooLong, offset: from))
                }
                return .success(nil)
            }
            if bytes[cr] == 0x0A { return .failure(RESPParsingError(code: .invalidSimpleString, offset: cr)) }
            if cr - from > limits.maxLineLength { return .failure(RESPParsingError(code: .lineTooLong, offset: from)) }
            guard cr + 1 < bytes.count else { return .success(nil) }
            guard bytes[cr + 1] == 0x0A else { return .failure(RESPParsingError(code: .missingCRLF, offset: cr)) }
            return .success(cr)
        }
        return try result.get()
    }

    /// Parses a signed decimal `Int64` from `[from, to)` (offsets relative to the reader index).
    static func parseInt64(_ buffer: ByteBuffer, from: Int, to: Int) -> Int64? {
        buffer.withUnsafeReadableBytes { bytes -> Int64? in
            var index = from
            guard index < to else { return nil }
            var negative = false
            if bytes[index] == UInt8(ascii: "-") || bytes[index] == UInt8(ascii: "+") {
                negative = bytes[index] == UInt8(ascii: "-")
                index += 1
                guard index < to else { return nil }
            }
            var value: Int64 = 0
            while index < to {
                let byte = bytes[index]
                guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
                let digit = Int64(byte &- UInt8(ascii: "0"))
                let (multiplied, o1) = value.multipliedReportingOverflow(by: 10)
                let (added, o2) = negative ? multiplied.subtractingReportingOverflow(digit) : multiplied.addingReportingOverflow(digit)
                guard !o1, !o2 else { return nil }
                value = added
                index += 1
            }
            return value
        }
    }

    static func parseDouble(_ buffer: ByteBuffer, from: Int, to: Int) -> Double? {
        guard to > from, to - from <= 512,
            let text = buffer.getString(at: buffer.readerIndex + from, length: to - from)
        else { return nil }
        switch text {
        case "inf", "+inf": return .infinity
        case "-inf": return -.infinity
        case "nan", "-nan": return .nan
        default:
            // Reject things Swift accepts but RESP does not (hex floats, "infinity", whitespace).
            guard
                text.utf8.allSatisfy({
                    $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: ".")
                        || $0 == UInt8(ascii: "e") || $0 == UInt8(ascii: "E") || ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9"))
                })
            else { return nil }
            return Double(text)
        }
    }

    static func isBigNumber(_ buffer: ByteBuffer, from: Int, to: Int) -> Bool {
        buffer.withUnsafeReadableBytes { bytes in
            var index = from
            if index < to, bytes[index] == UInt8(ascii: "-") || bytes[index] == UInt8(ascii: "+") { index += 1 }
            guard index < to else { return false }
            return bytes[index..<to].allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
        }
    }
}

/// A NIO decoder turning received bytes into complete ``RESPToken`` values.
public struct RESPTokenDecoder: ByteToMessageDecoder, Sendable {
    public typealias InboundOut = RESPToken

    private var parser: RESPParser

    public init(limits: RESPParserLimits = .init()) {
        self.parser = RESPParser(limits: limits)
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let token = try self.parser.next(from: &buffer) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(token))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try self.decode(context: context, buffer: &buffer)
    }
}
