/// Why an inbound STOMP byte stream could not be decoded.
///
/// Every error is fatal for the connection: the server answers with an `ERROR` frame whose
/// `message` header is ``description`` and closes. Client bytes quoted in a description are
/// shortened, and control characters in them are written as `\xNN` (a NUL as `\x00`), so the
/// description is one printable line whatever the input.
///
/// A struct rather than an enum, so that new kinds of failure can be added without breaking
/// exhaustive `switch`es in other modules. Errors are made with the static factories
/// (`STOMPDecodingError.frameTooLarge(limit: 4096)`), compared with `==`, and told apart by
/// ``kind``; a `switch` over an error matches kinds directly:
///
/// ```swift
/// switch error {
/// case .frameTooLarge, .bodyTooLarge: ...
/// default: ...
/// }
/// ```
public struct STOMPDecodingError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What failed, without the details (the quoted input, the limit).
    public struct Kind: Sendable, Hashable, CustomStringConvertible {
        fileprivate enum Value: Sendable, Hashable {
            case unknownCommand
            case malformedHeaderLine
            case undefinedEscape
            case invalidContentLength
            case missingNullTerminator
            case tooManyHeaders
            case headerLineTooLong
            case frameTooLarge
            case headersTooLarge
            case bodyTooLarge
            case invalidUTF8
        }

        fileprivate let value: Value

        fileprivate init(_ value: Value) {
            self.value = value
        }

        /// The command line is not a STOMP command.
        public static var unknownCommand: Self { Self(.unknownCommand) }
        /// A header line has no `:`.
        public static var malformedHeaderLine: Self { Self(.malformedHeaderLine) }
        /// A header holds a `\` escape STOMP does not define.
        public static var undefinedEscape: Self { Self(.undefinedEscape) }
        /// The `content-length` header is not a non-negative integer.
        public static var invalidContentLength: Self { Self(.invalidContentLength) }
        /// The `content-length` bytes of the body are not followed by a NUL.
        public static var missingNullTerminator: Self { Self(.missingNullTerminator) }
        /// More headers than ``STOMPDecoderLimits/maxHeaders``.
        public static var tooManyHeaders: Self { Self(.tooManyHeaders) }
        /// A header line longer than ``STOMPDecoderLimits/maxHeaderLineBytes``.
        public static var headerLineTooLong: Self { Self(.headerLineTooLong) }
        /// A frame larger than ``STOMPDecoderLimits/maxFrameBytes``.
        public static var frameTooLarge: Self { Self(.frameTooLarge) }
        /// A header block larger than ``STOMPDecoderLimits/maxHeaderBytes``.
        public static var headersTooLarge: Self { Self(.headersTooLarge) }
        /// A body larger than ``STOMPDecoderLimits/maxBodyBytes``.
        public static var bodyTooLarge: Self { Self(.bodyTooLarge) }
        /// A header name or value is not valid UTF-8.
        public static var invalidUTF8: Self { Self(.invalidUTF8) }

        public var description: String { "\(value)" }
    }

    /// The failure with its details.
    enum Code: Sendable, Hashable {
        case unknownCommand(String)
        case malformedHeaderLine(String)
        case undefinedEscape(String)
        case invalidContentLength(String)
        case missingNullTerminator
        case tooManyHeaders(limit: Int)
        case headerLineTooLong(limit: Int)
        case frameTooLarge(limit: Int)
        case headersTooLarge(limit: Int)
        case bodyTooLarge(limit: Int)
        case invalidUTF8
    }

    let code: Code

    /// The `receipt` header of the frame that failed, when it was read before the failure (a
    /// body without its NUL, a bad `content-length`, an undefined escape in a later header): the
    /// `ERROR` then carries it as `receipt-id`. Not compared by `==`.
    public internal(set) var receipt: String?

    init(_ code: Code) {
        self.code = code
    }

    /// The same failure, naming the receipt of its frame.
    func receipt(_ receipt: String?) -> Self {
        var copy = self
        copy.receipt = receipt
        return copy
    }

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(self.code) }

    /// The command line read, which is not a STOMP command (empty when the frame has none).
    public static func unknownCommand(_ command: String) -> Self { Self(.unknownCommand(command)) }
    /// A header line without a `:`.
    public static func malformedHeaderLine(_ line: String) -> Self { Self(.malformedHeaderLine(line)) }
    /// An undefined escape sequence in a header, from its `\`.
    public static func undefinedEscape(_ sequence: String) -> Self { Self(.undefinedEscape(sequence)) }
    /// A `content-length` value that is not a non-negative integer.
    public static func invalidContentLength(_ value: String) -> Self { Self(.invalidContentLength(value)) }
    /// The `content-length` bytes of the body are not followed by a NUL.
    public static var missingNullTerminator: Self { Self(.missingNullTerminator) }
    /// More headers than `limit`.
    public static func tooManyHeaders(limit: Int) -> Self { Self(.tooManyHeaders(limit: limit)) }
    /// A header line longer than `limit` bytes.
    public static func headerLineTooLong(limit: Int) -> Self { Self(.headerLineTooLong(limit: limit)) }
    /// A frame larger than `limit` bytes.
    public static func frameTooLarge(limit: Int) -> Self { Self(.frameTooLarge(limit: limit)) }
    /// A header block larger than `limit` bytes.
    public static func headersTooLarge(limit: Int) -> Self { Self(.headersTooLarge(limit: limit)) }
    /// A body larger than `limit` bytes.
    public static func bodyTooLarge(limit: Int) -> Self { Self(.bodyTooLarge(limit: limit)) }
    /// A header name or value that is not valid UTF-8 (STOMP's headers are UTF-8).
    public static var invalidUTF8: Self { Self(.invalidUTF8) }

    /// What failed, without the details.
    public var kind: Kind {
        switch code {
        case .unknownCommand: .unknownCommand
        case .malformedHeaderLine: .malformedHeaderLine
        case .undefinedEscape: .undefinedEscape
        case .invalidContentLength: .invalidContentLength
        case .missingNullTerminator: .missingNullTerminator
        case .tooManyHeaders: .tooManyHeaders
        case .headerLineTooLong: .headerLineTooLong
        case .frameTooLarge: .frameTooLarge
        case .headersTooLarge: .headersTooLarge
        case .bodyTooLarge: .bodyTooLarge
        case .invalidUTF8: .invalidUTF8
        }
    }

    /// The limit exceeded, for the errors about a limit (nil for the others).
    public var limit: Int? {
        switch code {
        case .tooManyHeaders(let n), .headerLineTooLong(let n), .frameTooLarge(let n), .headersTooLarge(let n), .bodyTooLarge(let n): n
        case .unknownCommand, .malformedHeaderLine, .undefinedEscape, .invalidContentLength, .missingNullTerminator, .invalidUTF8: nil
        }
    }

    /// Matches an error against a kind in a `switch` (`case .frameTooLarge:`).
    public static func ~= (kind: Kind, error: STOMPDecodingError) -> Bool {
        error.kind == kind
    }

    public var description: String {
        switch code {
        case .unknownCommand(let c): return "unknown command '\(Self.quote(c, max: 32))'"
        case .malformedHeaderLine(let l): return "malformed header line '\(Self.quote(l, max: 64))': expected name:value"
        case .undefinedEscape(let e): return "undefined escape sequence '\(Self.quote(e, max: 8))' in header"
        case .invalidContentLength(let v): return "invalid content-length '\(Self.quote(v, max: 32))'"
        case .missingNullTerminator: return "frame body is not followed by a NUL octet after content-length bytes"
        case .tooManyHeaders(let n): return "too many headers (limit \(n))"
        case .headerLineTooLong(let n): return "header line too long (limit \(n) bytes)"
        case .frameTooLarge(let n): return "frame too large (limit \(n) bytes)"
        case .headersTooLarge(let n): return "headers too large (limit \(n) bytes)"
        case .bodyTooLarge(let n): return "body too large (limit \(n) bytes)"
        case .invalidUTF8: return "header is not valid UTF-8"
        }
    }

    /// The first `max` characters of `text`, with control characters (C0, DEL, C1) as `\xNN`.
    package static func quote(_ text: String, max: Int) -> String {
        let head = text.prefix(max)
        guard head.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else { return String(head) }
        var out = ""
        for scalar in head.unicodeScalars {
            if scalar.properties.generalCategory == .control {
                let hex = String(scalar.value, radix: 16, uppercase: false)
                out += hex.count < 2 ? "\\x0" + hex : "\\x" + hex
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}
