/// Why an inbound STOMP byte stream could not be decoded.
///
/// Every case is fatal for the connection: the server answers with an `ERROR` frame whose
/// `message` header is ``description`` and closes.
public enum STOMPDecodingError: Error, Sendable, Hashable, CustomStringConvertible {
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

    public var description: String {
        switch self {
        case .unknownCommand(let c): return "unknown command '\(c.prefix(32))'"
        case .malformedHeaderLine(let l): return "malformed header line '\(l.prefix(64))': expected name:value"
        case .undefinedEscape(let e): return "undefined escape sequence '\(e)' in header"
        case .invalidContentLength(let v): return "invalid content-length '\(v.prefix(32))'"
        case .missingNullTerminator: return "frame body is not followed by a NUL octet after content-length bytes"
        case .tooManyHeaders(let n): return "too many headers (limit \(n))"
        case .headerLineTooLong(let n): return "header line too long (limit \(n) bytes)"
        case .frameTooLarge(let n): return "frame too large (limit \(n) bytes)"
        case .headersTooLarge(let n): return "headers too large (limit \(n) bytes)"
        case .bodyTooLarge(let n): return "body too large (limit \(n) bytes)"
        }
    }
}
