import NIOCore
import Testing

@testable import SwitchboardServer

@Suite struct UpgradeRequestHeadTests {
    func classify(_ text: String) -> UpgradeRequestHead.Classification {
        let buffer = ByteBuffer(string: text)
        return buffer.withUnsafeReadableBytes { bytes in
            guard let end = UpgradeRequestHead.endOfHead(in: bytes, from: 0) else { return .plainHTTP }
            return UpgradeRequestHead.classify(UnsafeRawBufferPointer(rebasing: bytes[..<end]))
        }
    }

    static let chrome = """
        GET /stomp?access_token=a%20b HTTP/1.1\r
        Host: localhost:8080\r
        Connection: Upgrade\r
        Pragma: no-cache\r
        Upgrade: websocket\r
        Origin: http://localhost:3000\r
        Sec-WebSocket-Version: 13\r
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r
        Sec-WebSocket-Protocol: v10.stomp, v11.stomp, v12.stomp\r
        Cookie: a=1; sb_token=xyz\r
        \r

        """

    @Test func browserUpgradeIsRecognisedWithItsFields() throws {
        guard case .upgrade(let head) = classify(Self.chrome) else { Issue.record("not an upgrade"); return }
        #expect(head.target == "/stomp?access_token=a%20b")
        #expect(head.path == "/stomp")
        #expect(head.keys == ["dGhlIHNhbXBsZSBub25jZQ=="])
        #expect(head.versions == ["13"])
        #expect(head.protocols == ["v10.stomp", "v11.stomp", "v12.stomp"])
        #expect(head.origin == "http://localhost:3000")
        #expect(head.cookies == ["a=1; sb_token=xyz"])
    }

    @Test func namesAreCaseInsensitiveAndTokenListsAreSplit() {
        let text =
            "GET /stomp HTTP/1.1\r\nhost: x\r\nconnection: keep-alive, Upgrade\r\nUPGRADE: WebSocket\r\n"
            + "sec-websocket-key: k\r\nSEC-WEBSOCKET-PROTOCOL: v12.stomp\r\nsec-websocket-protocol:  v11.stomp ,\r\nSec-WebSocket-Key: k2\r\n\r\n"
        guard case .upgrade(let head) = classify(text) else { Issue.record("not an upgrade"); return }
        #expect(head.protocols == ["v12.stomp", "v11.stomp"])
        #expect(head.keys == ["k", "k2"], "duplicates are kept, so the handshake can refuse them")
    }

    @Test(arguments: [
        "POST /stomp HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",  // not GET
        "GET /stomp HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",  // not 1.1
        "GET /stomp HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",  // no Connection: upgrade
        "GET /stomp HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",  // another protocol
        "GET /api HTTP/1.1\r\nHost: x\r\n\r\n",  // plain request
        "GET /stomp HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n folded\r\n\r\n",  // obsolete folding
        "GET /stomp HTTP/1.1\r\nUpgrade : websocket\r\nConnection: upgrade\r\n\r\n",  // space before colon
        "GET /stomp HTTP/1.1\r\nUpgrade: websocket\nConnection: upgrade\r\n\r\n",  // bare LF
        "GET /stomp HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nno colon\r\n\r\n",
        "GET  /stomp HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",  // double space
        "GET stomp HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",  // not origin-form
        "\r\n\r\n",
    ])
    func anythingUnusualIsLeftToTheHTTPParser(text: String) {
        #expect(classify(text) == .plainHTTP)
    }

    @Test func endOfHeadIsFoundWhenScanningResumesByteByByte() {
        let bytes = Array(Self.chrome.utf8)
        var scanned = 0
        var found: Int?
        for n in 1...bytes.count {
            let end = bytes[..<n].withUnsafeBytes { UpgradeRequestHead.endOfHead(in: $0, from: scanned) }
            if let end { found = end; break }
            scanned = max(0, n - 3)
        }
        #expect(found == bytes.count)
    }

    @Test func endOfHeadStopsAtTheFirstBlankLine() {
        let text = "GET / HTTP/1.1\r\nA: b\r\n\r\nbody\r\n\r\n"
        let end = ByteBuffer(string: text).withUnsafeReadableBytes { UpgradeRequestHead.endOfHead(in: $0, from: 0) }
        #expect(end == "GET / HTTP/1.1\r\nA: b\r\n\r\n".utf8.count)
        #expect(ByteBuffer(string: "GET / HTTP/1.1\r\nA: b\r\n\r").withUnsafeReadableBytes { UpgradeRequestHead.endOfHead(in: $0, from: 0) } == nil)
    }
}
