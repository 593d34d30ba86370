import Crypto
import Foundation
import NIOCore
import Testing

@testable import SwitchboardServer

/// The `Sec-WebSocket-Key` check and the `Sec-WebSocket-Accept` value, computed without
/// Foundation, against RFC 6455 and against Foundation's own base64 and SHA-1.
@Suite struct WebSocketHandshakeKeyTests {
    @Test func acceptValueOfTheRFCExample() {
        // RFC 6455 §1.3.
        #expect(WebSocketHandshake.acceptValue(forKey: "dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    }

    @Test func acceptValueMatchesFoundationForRandomKeys() {
        for _ in 0..<200 {
            let nonce = Data((0..<16).map { _ in UInt8.random(in: 0...255) })
            let key = nonce.base64EncodedString()
            let expected = Data(Insecure.SHA1.hash(data: Data((key + WebSocketHandshake.acceptGUID).utf8))).base64EncodedString()
            #expect(WebSocketHandshake.acceptValue(forKey: key) == expected)
            #expect(WebSocketHandshake.isValidKey(key))
        }
    }

    @Test(arguments: [
        "",
        "dGhlIHNhbXBsZSBub25jZQ",  // no padding
        "dGhlIHNhbXBsZSBub25jZQ=",  // short padding
        "dGhlIHNhbXBsZSBub25j!Q==",  // not base64
        "dGhlIHNhbXBsZSBub25jZQ=A",  // padding in the wrong place
        "c2hvcnQ=",  // 5 bytes
        "dGhpcyBpcyBhIDE3LWJ5dGUga2V5IQ==",  // longer than 16 bytes
        "dGhlIHNhbXBsZSBub25 ZQ==",  // a space
    ])
    func invalidKeysAreRefused(_ key: String) {
        #expect(!WebSocketHandshake.isValidKey(key))
        // Foundation agrees that none of these is a 16-byte value.
        #expect(Data(base64Encoded: key)?.count != 16)
    }

    /// A third `=` is not base64 (RFC 4648 §3.2), so the key is refused, although
    /// Foundation on Linux decodes it to 16 bytes and the check before this one let it by.
    @Test func anExtraPaddingCharacterIsRefused() {
        #expect(!WebSocketHandshake.isValidKey("dGhlIHNhbXBsZSBub25jZQ==="))
    }

    /// A refused upgrade answers the HTTP API's JSON error shape, byte for byte.
    @Test func aRefusalIsTheAPIErrorShape() {
        var refusal = WebSocketHandshake.Refusal.badRequest(#"the "path" is not /stomp"#, field: "path")
        refusal.extraHeaders = [("Retry-After", "1")]
        let bytes = WebSocketHandshake.response(for: refusal)
        let body = #"{"error":"the \"path\" is not /stomp","field":"path"}"#
        #expect(
            String(buffer: bytes)
                == "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                + "Content-Length: \(body.utf8.count)\r\n\r\n\(body)")
    }
}
