import NIOCore
import STOMPCodec
import Testing

@Suite("Header escaping")
struct EscapingTests {
    static let escapedCommands: [STOMPCommand] = [.send, .subscribe, .unsubscribe, .ack, .nack, .begin, .commit, .abort, .disconnect, .message, .receipt, .error]

    @Test("every escape rule is decoded in names and values", arguments: escapedCommands)
    func decodeEscapes(_ command: STOMPCommand) throws {
        let wire = "\(command.rawValue)\nna\\cme\\\\x:a\\rb\\nc\\cd\\\\e\n\n\u{0}"
        let frame = try decodeOne(wire)
        #expect(pairs(frame.headers) == ["na:me\\x=a\rb\nc:d\\e"])
    }

    @Test("escaped backslash followed by a letter is not a second escape")
    func backslashThenLetter() throws {
        let frame = try decodeOne("SEND\nk:\\\\n\\\\c\n\n\u{0}")
        #expect(frame.headers["k"] == "\\n\\c")
    }

    @Test("an undefined escape is an error", arguments: [("\\t", "\\t"), ("a\\tb", "\\t"), ("x\\", "\\"), ("\\C", "\\C"), ("\\ ", "\\ ")])
    func undefinedEscape(_ value: String, _ reported: String) {
        let error = decodingError { _ = try decodeAll("SEND\ndestination:\(value)\n\n\u{0}") }
        #expect(error == .undefinedEscape(reported))
    }

    /// STOMP 1.1 defines `\n`, `\c` and `\\` only: its `\r` is an undefined escape (1.2 added it).
    @Test("without escapeCarriageReturn (STOMP 1.1), a CR escape is undefined")
    func carriageReturnEscapeIsOneTwoOnly() throws {
        var decoder = STOMPFrameDecoder()
        decoder.escapeCarriageReturn = false
        var ok = ByteBuffer(string: "SEND\nk:a\\nb\\cc\\\\d\n\n\u{0}")
        #expect(try decoder.decodeFrame(&ok)?.headers["k"] == "a\nb:c\\d")
        var bad = ByteBuffer(string: "SEND\nreceipt:r1\nk:1\\r2\n\n\u{0}")
        let error = decodingError { _ = try decoder.decodeFrame(&bad) }
        #expect(error == .undefinedEscape("\\r"))
        #expect(error?.receipt == "r1")
        #expect(try decodeOne("SEND\nk:1\\r2\n\n\u{0}").headers["k"] == "1\r2")  // 1.2, the default
    }

    /// Headers are UTF-8: other bytes (a binary WebSocket message, where nothing checked them)
    /// are an error naming it, escaped or not, rather than replaced by U+FFFD (two destinations
    /// became one, and a receipt id the client could not match).
    @Test("a header that is not UTF-8 is an error", arguments: [true, false])
    func invalidUTF8Header(_ escape: Bool) {
        for line in [[0xFE], [0x6B, 0x3A, 0xC3], [0x6B, 0x3A, 0x61, 0x5C, 0x6E, 0xFF], [0x6B, 0x3A, 0xED, 0xA0, 0x80]] as [[UInt8]] {
            var input = ByteBuffer(string: "SEND\nreceipt:r9\n")
            input.writeBytes(line.contains(0x3A) ? line : line + [0x3A, 0x76])
            input.writeString("\n\n\u{0}")
            let error = decodingError { _ = try decodeAll(input, escapeHeaders: escape) }
            // An escape in the value is taken literally without escaping: still not UTF-8.
            #expect(error == .invalidUTF8, "\(line)")
            #expect(error?.receipt == "r9")
            #expect(error?.description == "header is not valid UTF-8")
        }
        let good = try? decodeAll(ByteBuffer(string: "SEND\nk:\u{E9}\u{1F600}\n\n\u{0}"), escapeHeaders: escape)
        #expect(good?.frames.first?.headers["k"] == "\u{E9}\u{1F600}")
    }

    @Test("an undefined escape in a header name is an error too")
    func undefinedEscapeInName() {
        let error = decodingError { _ = try decodeAll("SUBSCRIBE\na\\qb:v\n\n\u{0}") }
        #expect(error == .undefinedEscape("\\q"))
    }

    @Test("CONNECT, STOMP and CONNECTED headers are taken literally", arguments: [STOMPCommand.connect, .stomp, .connected])
    func connectNotUnescaped(_ command: STOMPCommand) throws {
        let frame = try decodeOne("\(command.rawValue)\nlogin:a\\nb\\tc\\\\\npasscode:x\\\n\n\u{0}")
        #expect(frame.headers["login"] == "a\\nb\\tc\\\\")
        #expect(frame.headers["passcode"] == "x\\")
    }

    @Test("with escaping off (STOMP 1.0) nothing is unescaped and bad escapes are fine")
    func stomp10NoEscaping() throws {
        let frame = try decodeOne("SEND\ndestination:/topic/a\\cb\nx\\n:\\t\\\n\n\u{0}", escapeHeaders: false)
        #expect(pairs(frame.headers) == ["destination=/topic/a\\cb", "x\\n=\\t\\"])
    }

    @Test("escapeHeaders can be switched off on a live decoder")
    func switchOffMidStream() throws {
        var decoder = STOMPFrameDecoder()
        var buffer = ByteBuffer(string: "SEND\nk:a\\cb\n\n\u{0}")
        let first = try #require(try decoder.decodeFrame(&buffer))
        #expect(first.headers["k"] == "a:b")
        decoder.escapeHeaders = false
        buffer.writeString("SEND\nk:a\\cb\n\n\u{0}")
        let second = try #require(try decoder.decodeFrame(&buffer))
        #expect(second.headers["k"] == "a\\cb")
    }

    // MARK: Encoder

    @Test("the encoder escapes exactly backslash, colon, CR and LF for 1.1+")
    func encoderEscapes() {
        let frame = STOMPFrame(.message, headers: ["a:b\\c": "x\ny\rz:w\\v\t!"], body: "hi")
        let bytes = STOMPFrameEncoder.encode(frame, escapeHeaders: true)
        #expect(String(buffer: bytes) == "MESSAGE\na\\cb\\\\c:x\\ny\\rz\\cw\\\\v\t!\n\nhi\u{0}")
    }

    @Test("plain headers are written unchanged")
    func encoderPlain() {
        let frame = STOMPFrame(.receipt, headers: ["receipt-id": "77", "x": "é ü"])
        let bytes = STOMPFrameEncoder.encode(frame, escapeHeaders: true)
        #expect(String(buffer: bytes) == "RECEIPT\nreceipt-id:77\nx:é ü\n\n\u{0}")
    }

    @Test("CONNECTED is never escaped; line breaks become spaces", arguments: [true, false])
    func encoderConnected(_ escape: Bool) {
        let frame = STOMPFrame(.connected, headers: ["server": "a:b\\c", "x": "1\n2\r3"])
        let bytes = STOMPFrameEncoder.encode(frame, escapeHeaders: escape)
        #expect(String(buffer: bytes) == "CONNECTED\nserver:a:b\\c\nx:1 2 3\n\n\u{0}")
    }

    @Test("with escaping off (1.0) only line breaks are replaced")
    func encoderNoEscape() {
        let frame = STOMPFrame(.message, headers: ["d": "/a:b\\c\nd"], body: "")
        let bytes = STOMPFrameEncoder.encode(frame, escapeHeaders: false)
        #expect(String(buffer: bytes) == "MESSAGE\nd:/a:b\\c d\n\n\u{0}")
    }

    @Test("with escaping off (1.0) a colon in a name becomes _: no second header can be forged")
    func encoderNoEscapeNameColon() throws {
        let frame = STOMPFrame(.message, headers: STOMPHeaders([("subscription:", "forged"), ("a:b\n", "v:w"), ("subscription", "real")]), body: "")
        let bytes = STOMPFrameEncoder.encode(frame, escapeHeaders: false)
        #expect(String(buffer: bytes) == "MESSAGE\nsubscription_:forged\na_b :v:w\nsubscription:real\n\n\u{0}")
        let decoded = try decodeOne(String(buffer: bytes), escapeHeaders: false)
        #expect(decoded.headers["subscription"] == "real")
    }

    @Test("the encoder writes repeated headers in order and keeps the body bytes")
    func encoderOrderAndBody() {
        var body = ByteBuffer()
        body.writeBytes([1, 0, 2])
        let frame = STOMPFrame(.send, headers: STOMPHeaders([("a", "1"), ("b", "2"), ("a", "3")]), body: body)
        let bytes = STOMPFrameEncoder.encode(frame, escapeHeaders: true)
        var expected = ByteBuffer(string: "SEND\na:1\nb:2\na:3\n\n")
        expected.writeBytes([1, 0, 2, 0])
        #expect(bytes == expected, "\(visible(bytes))")
    }

    @Test("encode then decode returns the same frame", arguments: [true, false])
    func roundTrip(_ escape: Bool) throws {
        let headerValues = ["plain", "col:on", "back\\slash", "new\nline", "cr\rhere", "all:\\\n\r", "  spaced  ", "", "ünïcødé"]
        var headers = STOMPHeaders()
        for (i, v) in headerValues.enumerated() { headers.add("h\(i)", v) }
        if escape { headers.add("we:ird\\name", "v") }  // a colon in a name needs escaping
        headers.add("h0", "repeat")
        var body = ByteBuffer()
        body.writeBytes([0x00, 0xFF, 0x0A, 0x00])
        headers.add("content-length", String(body.readableBytes))
        let original = STOMPFrame(.send, headers: headers, body: body)

        var wire = STOMPFrameEncoder.encode(original, escapeHeaders: escape)
        var copy = wire
        wire.writeString("\n")  // a heart-beat between the two copies
        wire.writeBuffer(&copy)
        let (frames, rest) = try decodeAll(wire, escapeHeaders: escape)
        #expect(rest.readableBytes == 0)
        try #require(frames.count == 2)
        if escape {
            #expect(frames[0] == original)
            #expect(frames[1] == original)
        } else {
            // 1.0 cannot carry line breaks in headers: they became spaces, everything else is literal.
            var expected = STOMPHeaders()
            for (n, v) in headers {
                expected.add(n, String(decoding: v.utf8.map { $0 == 10 || $0 == 13 ? 32 : $0 }, as: UTF8.self))
            }
            #expect(pairs(frames[0].headers) == pairs(expected))
            #expect(frames[0].body == body)
        }
    }

    @Test("unescape rejects a lone trailing backslash directly")
    func unescapeAPI() throws {
        let ok = try Array("a\\cb".utf8).withUnsafeBytes { raw throws(STOMPDecodingError) in try STOMPHeaderEscaping.unescape(raw) }
        #expect(ok == "a:b")
        let error = decodingError {
            _ = try Array("ab\\".utf8).withUnsafeBytes { raw throws(STOMPDecodingError) in try STOMPHeaderEscaping.unescape(raw) }
        }
        #expect(error == .undefinedEscape("\\"))
    }
}
