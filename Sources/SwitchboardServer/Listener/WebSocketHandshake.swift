import Crypto
import Foundation
import NIOCore
import STOMPCodec
import SwitchboardAPIModel
import SwitchboardCore
import SwitchboardWire
import Synchronization

/// The server side of the WebSocket opening handshake (RFC 6455 §4.2) for STOMP connections:
/// decides on an upgrade request and writes the `101` or the refusal.
///
/// The checks, in order: the endpoint path, shutdown, `Sec-WebSocket-Version` (426 unless 13),
/// `Sec-WebSocket-Key` (one base64 16-byte nonce), the `Origin` allowlist, the STOMP
/// subprotocol, and last the connection limits (a reservation is released when the channel
/// closes). Refusals are JSON (`{"error": …, "field": …}`) and close the connection.
struct WebSocketHandshake: Sendable {
    let services: GatewayServices
    let stompPath: String
    let admission: ConnectionAdmission
    let limiter: ConnectionLimiter
    let allowedOrigins: [String]
    let handshakeCookie: String

    /// Why an upgrade was refused.
    struct Refusal: Error, Equatable {
        var status: Int
        var reason: String
        var message: String
        /// The request field at fault.
        var field: String
        var extraHeaders: [(String, String)] = []

        static func == (a: Refusal, b: Refusal) -> Bool {
            a.status == b.status && a.message == b.message && a.field == b.field
        }

        static func badRequest(_ message: String, field: String) -> Refusal {
            Refusal(status: 400, reason: "Bad Request", message: message, field: field)
        }
    }

    enum Decision {
        /// The `101` response to write, and what the session learns of the handshake.
        case accept(response: ByteBuffer, handshake: HandshakeInfo)
        case refuse(Refusal)
    }

    /// The magic GUID of RFC 6455 §1.3.
    static var acceptGUID: String { "258EAFA5-E914-47DA-95CA-C5AB0DC85B11" }

    /// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`: base64 of the SHA-1 of the
    /// key and the GUID, hashed and encoded without intermediate `Data` or `String`s.
    static func acceptValue(forKey key: String) -> String {
        var hasher = Insecure.SHA1()
        var key = key
        key.withUTF8 { hasher.update(bufferPointer: UnsafeRawBufferPointer($0)) }
        var guid = acceptGUID
        guid.withUTF8 { hasher.update(bufferPointer: UnsafeRawBufferPointer($0)) }
        return hasher.finalize().withUnsafeBytes { digest in
            // 20 bytes: 6 groups of 3, then 2 bytes and one `=`.
            String(unsafeUninitializedCapacity: 28) { out in
                var o = 0
                var i = 0
                while i + 3 <= digest.count {
                    let n = UInt32(digest[i]) << 16 | UInt32(digest[i + 1]) << 8 | UInt32(digest[i + 2])
                    for shift in stride(from: 18, through: 0, by: -6) {
                        out[o] = base64Alphabet[Int((n >> UInt32(shift)) & 63)]
                        o += 1
                    }
                    i += 3
                }
                if digest.count - i == 2 {
                    let n = UInt32(digest[i]) << 16 | UInt32(digest[i + 1]) << 8
                    out[o] = base64Alphabet[Int(n >> 18 & 63)]
                    out[o + 1] = base64Alphabet[Int(n >> 12 & 63)]
                    out[o + 2] = base64Alphabet[Int(n >> 6 & 63)]
                    out[o + 3] = UInt8(ascii: "=")
                    o += 4
                }
                return o
            }
        }
    }

    private static let base64Alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    /// Whether `key` is one base64-encoded 16-byte value: 22 base64 characters, then `==`.
    static func isValidKey(_ key: String) -> Bool {
        var key = key
        return key.withUTF8 { bytes in
            guard bytes.count == 24, bytes[22] == UInt8(ascii: "="), bytes[23] == UInt8(ascii: "=") else { return false }
            for byte in bytes[..<22] {
                switch byte {
                case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                    UInt8(ascii: "+"), UInt8(ascii: "/"):
                    continue
                default:
                    return false
                }
            }
            return true
        }
    }

    /// Decides on an upgrade request from `address`. On acceptance a connection is reserved
    /// with the limiter; the caller releases it when the channel closes.
    func decide(_ head: UpgradeRequestHead, address: String) -> Decision {
        guard head.path == stompPath[...] else {
            return .refuse(.badRequest("no WebSocket endpoint at \(head.path); use \(stompPath)", field: "path"))
        }
        // A request without Host, or with two (which one names the server?), is a 400 for
        // every HTTP/1.1 server (RFC 9112 §3.2); a WebSocket client must send one (RFC 6455 §4.1).
        guard head.hostCount == 1 else {
            return .refuse(.badRequest("an upgrade request needs exactly one Host header, got \(head.hostCount)", field: "Host"))
        }
        guard admission.admitsConnections else {
            return .refuse(Refusal(status: 503, reason: "Service Unavailable", message: "server shutting down, reconnect", field: "Upgrade"))
        }
        guard head.versions.count == 1, head.versions[0] == "13" else {
            return .refuse(
                Refusal(
                    status: 426, reason: "Upgrade Required", message: "Sec-WebSocket-Version must be 13",
                    field: "Sec-WebSocket-Version", extraHeaders: [("Sec-WebSocket-Version", "13"), ("Upgrade", "websocket")]))
        }
        guard head.keys.count == 1, Self.isValidKey(head.keys[0]) else {
            return .refuse(.badRequest("Sec-WebSocket-Key must be one base64-encoded 16-byte value", field: "Sec-WebSocket-Key"))
        }
        if let origin = head.origin, !OriginName.isAllowed(origin, by: allowedOrigins) {
            return .refuse(Refusal(status: 403, reason: "Forbidden", message: "origin \(origin) is not allowed", field: "Origin"))
        }
        var version: STOMPVersion?
        if !head.protocols.isEmpty {
            version = STOMPVersion.negotiateSubprotocol(offered: head.protocols, supported: services.configuration.supportedVersions)
            if version == nil {
                return .refuse(
                    .badRequest(
                        "no supported STOMP subprotocol offered (v12.stomp, v11.stomp, v10.stomp)",
                        field: "Sec-WebSocket-Protocol"))
            }
        }
        // Last check: it reserves a connection.
        if let reason = limiter.reserve(for: address) {
            return .refuse(Refusal(status: 429, reason: "Too Many Requests", message: reason, field: "Upgrade"))
        }
        var response = ByteBuffer()
        response.reserveCapacity(160)
        response.writeStaticString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: ")
        response.writeString(Self.acceptValue(forKey: head.keys[0]))
        if let version {
            response.writeStaticString("\r\nSec-WebSocket-Protocol: ")
            response.writeString(version.webSocketSubprotocol)
        }
        response.writeStaticString("\r\n\r\n")
        // A browser sends its cookies with an upgrade from any site's page: the cookie is a
        // login only from the origins listed (cross-site WebSocket hijacking otherwise).
        let cookies = head.origin == nil || !OriginName.allowsAny(allowedOrigins) ? head.cookies : []
        let handshake = HandshakeInfo(
            token: Self.token(target: head.target, cookies: cookies, cookieName: handshakeCookie),
            remoteAddress: address, origin: head.origin)
        return .accept(response: response, handshake: handshake)
    }

    /// A refusal as a complete HTTP response that closes the connection.
    static func response(for refusal: Refusal) -> ByteBuffer {
        // The same JSON error shape as the HTTP API's, written the same way (no Foundation: a
        // flood of refused connections stays cheap).
        var body = APIJSON.body(APIErrorBody(error: refusal.message, field: refusal.field))
        // (A 426 names the protocol to upgrade to, with the `upgrade` option: RFC 9110 §7.8.)
        let upgrade = refusal.extraHeaders.contains { $0.0 == "Upgrade" }
        var text = "HTTP/1.1 \(refusal.status) \(refusal.reason)\r\nConnection: \(upgrade ? "Upgrade, close" : "close")\r\nContent-Type: application/json\r\n"
        for (name, value) in refusal.extraHeaders { text += "\(name): \(value)\r\n" }
        text += "Content-Length: \(body.readableBytes)\r\n\r\n"
        var buffer = ByteBuffer(string: text)
        buffer.writeBuffer(&body)
        return buffer
    }

    /// A token from the `access_token` query parameter or the named cookie.
    static func token(target: String, cookies: [String], cookieName: String) -> String? {
        if let q = target.firstIndex(of: "?") {
            for pair in target[target.index(after: q)...].split(separator: "&") where pair.hasPrefix("access_token=") {
                let raw = String(pair.dropFirst("access_token=".count))
                return raw.removingPercentEncoding ?? raw
            }
        }
        for header in cookies {
            for part in header.split(separator: ";") {
                let trimmed = part.drop { $0 == " " }
                if trimmed.hasPrefix(cookieName + "=") { return String(trimmed.dropFirst(cookieName.count + 1)) }
            }
        }
        return nil
    }
}

/// Whether new WebSocket sessions are accepted (false while draining).
final class ConnectionAdmission: Sendable {
    private let open = Atomic<Bool>(true)
    var admitsConnections: Bool { open.load(ordering: .relaxed) }
    func stopAdmitting() { open.store(false, ordering: .relaxed) }
}
