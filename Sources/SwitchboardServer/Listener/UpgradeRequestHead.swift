import NIOCore
import SwitchboardWire

/// The parts of an HTTP/1.1 request head that decide a WebSocket handshake, read straight from
/// the first bytes of a connection.
///
/// Only a clean `GET … HTTP/1.1` head carrying `Upgrade: websocket` and a `Connection` header
/// with the `upgrade` token is classified as an upgrade. Everything else, including anything
/// this reader does not fully understand (obsolete line folding, a bare LF, odd whitespace),
/// is ``Classification/plainHTTP`` and goes unchanged to the full HTTP/1.1 parser, which
/// serves it or answers 400. So this reader never has to be a complete HTTP parser.
struct UpgradeRequestHead: Equatable, Sendable {
    /// The request target as sent (path and query).
    var target: String
    /// Every `Sec-WebSocket-Key` value (exactly one is valid).
    var keys: [String] = []
    /// Every `Sec-WebSocket-Version` value (exactly one, `13`, is valid).
    var versions: [String] = []
    /// The comma-separated tokens of every `Sec-WebSocket-Protocol` header, in order.
    var protocols: [String] = []
    var origin: String?
    /// How many `Host` headers the head has (exactly one is valid: RFC 9112 §3.2, RFC 6455 §4.1).
    var hostCount = 0
    /// Every `Cookie` header value.
    var cookies: [String] = []

    /// The target without its query.
    var path: Substring { target.firstIndex(of: "?").map { target[..<$0] } ?? target[...] }

    enum Classification: Equatable {
        case upgrade(UpgradeRequestHead)
        case plainHTTP
    }

    /// Where the head ends (just past its blank line), searching from `from` (the caller keeps
    /// the previous length minus 3, so a head arriving byte by byte is scanned once in total).
    static func endOfHead(in bytes: UnsafeRawBufferPointer, from: Int) -> Int? {
        var i = max(from, 0)
        while i + 3 < bytes.count {
            guard let cr = bytes[i..<(bytes.count - 3)].firstIndex(of: UInt8(ascii: "\r")) else { return nil }
            if bytes[cr + 1] == UInt8(ascii: "\n") && bytes[cr + 2] == UInt8(ascii: "\r") && bytes[cr + 3] == UInt8(ascii: "\n") {
                return cr + 4
            }
            i = cr + 1
        }
        return nil
    }

    /// Whether `bytes` from `from` on hold an LF without a CR before it: a head that
    /// ``endOfHead(in:from:)`` never finds the end of (its lines end in bare LFs), for the full
    /// HTTP/1.1 parser to serve or refuse.
    static func hasBareLF(in bytes: UnsafeRawBufferPointer, from: Int) -> Bool {
        var i = max(from, 0)
        while i < bytes.count, let lf = bytes[i...].firstIndex(of: UInt8(ascii: "\n")) {
            if lf == 0 || bytes[lf - 1] != UInt8(ascii: "\r") { return true }
            i = lf + 1
        }
        return false
    }

    /// Classifies a complete head (the bytes up to and including its blank line).
    static func classify(_ head: UnsafeRawBufferPointer) -> Classification {
        var lines = HeadLines(bytes: head)
        guard let requestLine = lines.next(), let request = parseRequestLine(head, requestLine) else { return .plainHTTP }
        var result = UpgradeRequestHead(target: request)
        var upgradeWebSocket = false
        var connectionUpgrade = false
        var complete = false
        while let line = lines.next() {
            if line.isEmpty {
                complete = true
                break
            }
            // Obsolete line folding or whitespace before the colon: leave it to the full parser.
            guard let colon = head[line].firstIndex(of: UInt8(ascii: ":")), colon > line.lowerBound,
                !isWhitespace(head[line.lowerBound]), !isWhitespace(head[colon - 1])
            else { return .plainHTTP }
            let name = head[line.lowerBound..<colon]
            var valueStart = colon + 1
            var valueEnd = line.upperBound
            while valueStart < valueEnd, isWhitespace(head[valueStart]) { valueStart += 1 }
            while valueEnd > valueStart, isWhitespace(head[valueEnd - 1]) { valueEnd -= 1 }
            let value = String(decoding: head[valueStart..<valueEnd], as: UTF8.self)
            switch name.count {
            case 7 where equalsLowercased(name, "upgrade"):
                upgradeWebSocket = upgradeWebSocket || tokens(value).contains { $0.lowercased() == "websocket" }
            case 10 where equalsLowercased(name, "connection"):
                connectionUpgrade = connectionUpgrade || tokens(value).contains { $0.lowercased() == "upgrade" }
            case 6 where equalsLowercased(name, "origin"):
                if result.origin == nil { result.origin = value }
            case 4 where equalsLowercased(name, "host"):
                result.hostCount += 1
            case 6 where equalsLowercased(name, "cookie"):
                result.cookies.append(value)
            case 17 where equalsLowercased(name, "sec-websocket-key"):
                result.keys.append(value)
            case 21 where equalsLowercased(name, "sec-websocket-version"):
                result.versions.append(value)
            case 22 where equalsLowercased(name, "sec-websocket-protocol"):
                result.protocols += tokens(value)
            default:
                break
            }
        }
        return complete && upgradeWebSocket && connectionUpgrade ? .upgrade(result) : .plainHTTP
    }

    /// `GET <target> HTTP/1.1` → the target; anything else → nil.
    private static func parseRequestLine(_ head: UnsafeRawBufferPointer, _ line: Range<Int>) -> String? {
        let version = " HTTP/1.1"
        guard line.count > 4 + version.utf8.count, head[line.lowerBound..<(line.lowerBound + 4)].elementsEqual("GET ".utf8),
            head[(line.upperBound - version.utf8.count)..<line.upperBound].elementsEqual(version.utf8)
        else { return nil }
        let target = head[(line.lowerBound + 4)..<(line.upperBound - version.utf8.count)]
        guard target.first == UInt8(ascii: "/"), !target.contains(where: { $0 <= 0x20 || $0 == 0x7F }) else { return nil }
        return String(decoding: target, as: UTF8.self)
    }

    private static func isWhitespace(_ byte: UInt8) -> Bool { byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }

    /// ASCII case-insensitive comparison with a lower-case name of the same length.
    private static func equalsLowercased(_ bytes: Slice<UnsafeRawBufferPointer>, _ lower: StaticString) -> Bool {
        lower.withUTF8Buffer { name in
            var i = bytes.startIndex
            for expected in name {
                var b = bytes[i]
                if b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z") { b += 32 }
                if b != expected { return false }
                i += 1
            }
            return true
        }
    }

    /// A comma-separated header value's non-empty tokens, trimmed.
    private static func tokens(_ value: String) -> [String] {
        var out: [String] = []
        var rest = value[...]
        while true {
            let comma = rest.firstIndex(of: ",")
            let token = (comma.map { rest[..<$0] } ?? rest).trimmingWhitespace()
            if !token.isEmpty { out.append(String(token)) }
            guard let comma else { return out }
            rest = rest[rest.index(after: comma)...]
        }
    }
}

/// The CRLF-terminated lines of a head (without their CRLF). A bare LF or CR ends iteration
/// and sets ``malformed``, so the head is left to the full parser.
private struct HeadLines {
    let bytes: UnsafeRawBufferPointer
    var position = 0
    private(set) var malformed = false

    mutating func next() -> Range<Int>? {
        guard !malformed, position < bytes.count, let lf = bytes[position...].firstIndex(of: UInt8(ascii: "\n")) else { return nil }
        guard lf > position, bytes[lf - 1] == UInt8(ascii: "\r"), !bytes[position..<(lf - 1)].contains(UInt8(ascii: "\r")) else {
            malformed = true
            return nil
        }
        defer { position = lf + 1 }
        return position..<(lf - 1)
    }
}

private extension Substring {
    func trimmingWhitespace() -> Substring {
        var s = self
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return s
    }
}
