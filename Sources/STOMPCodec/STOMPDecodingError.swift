/// Why an inbound STOMP byte stream could not be decoded.
///
/// Every case is fatal for the connection: the server answers with an `ERROR` frame whose
/// `message` header is ``description`` and closes. Client bytes quoted in a description are
/// shortened, and control characters in them are written as `\xNN` (a NUL as `\x00`), so the
/// description is one printable line whatever the input.
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
        }
    }

    /// The first `max` characters of `text`, with control characters (C0, DEL, C1) as `\xNN`.
    static func quote(_ text: String, max: Int) -> String {
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
