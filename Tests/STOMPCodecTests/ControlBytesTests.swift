import NIOCore
import STOMPCodec
import Testing

/// NUL and other control bytes: between frames, quoted in error descriptions (which become an
/// ERROR's `message` header), and in header values the encoder writes.
@Suite("Codec: control bytes")
struct ControlBytesTests {
    @Test("stray NULs between frames are skipped like heart-beat EOLs", arguments: ["\u{0}", "\u{0}\u{0}", "\u{0}\n", "\n\u{0}\r\n\u{0}"])
    func nulBetweenFrames(_ gap: String) throws {
        let wire = "SUBSCRIBE\ndestination:/topic/a\nid:1\n\n\u{0}" + gap + "SEND\ndestination:/topic/a\n\nhi\u{0}"
        for chunk in [1, 2, 7, wire.utf8.count] {
            let (frames, rest) = try decodeChunked(ByteBuffer(string: wire), chunk: chunk)
            #expect(frames.map(\.command) == [.subscribe, .send], "chunk \(chunk)")
            #expect(frames.last?.bodyString == "hi")
            #expect(rest.readableBytes == 0)
        }
    }

    @Test("NULs and EOLs alone are consumed and produce nothing")
    func nulsOnly() throws {
        let (frames, rest) = try decodeAll(ByteBuffer(string: "\u{0}\n\u{0}\u{0}\r\n"))
        #expect(frames.isEmpty)
        #expect(rest.readableBytes == 0)
    }

    @Test("a command starting with another control byte is unknown, quoted with \\xNN")
    func controlInCommand() {
        let error = decodingError { _ = try decodeAll("\u{1}SEND\ndestination:/a\n\n\u{0}") }
        #expect(error == .unknownCommand("\u{1}SEND"))
        #expect(error?.description == "unknown command '\\x01SEND'")
    }

    @Test(
        "descriptions quoting client bytes hold no control character",
        arguments: [
            (STOMPDecodingError.unknownCommand("\u{0}SEND"), "unknown command '\\x00SEND'"),
            (.unknownCommand("A\u{7F}B\u{85}C\u{1B}[2J"), "unknown command 'A\\x7fB\\x85C\\x1b[2J'"),
            (.malformedHeaderLine("a\u{0}b\rc\td"), "malformed header line 'a\\x00b\\x0dc\\x09d': expected name:value"),
            (.undefinedEscape("\\\u{0}"), "undefined escape sequence '\\\\x00' in header"),
            (.invalidContentLength("1\u{0}"), "invalid content-length '1\\x00'"),
            (.unknownCommand("caf\u{E9} \u{1F600}"), "unknown command 'caf\u{E9} \u{1F600}'"),
        ])
    func escapedDescription(_ error: STOMPDecodingError, _ expected: String) {
        #expect(error.description == expected)
        #expect(!error.description.unicodeScalars.contains { $0.properties.generalCategory == .control })
    }

    @Test("quoted client bytes are shortened before escaping")
    func shortened() {
        let error = STOMPDecodingError.unknownCommand(String(repeating: "\u{0}", count: 100))
        #expect(error.description == "unknown command '" + String(repeating: "\\x00", count: 32) + "'")
    }

    @Test("an escaped header never carries a raw NUL, CR or LF", arguments: [true, false])
    func escapedEncoding(_ escapeCR: Bool) {
        let frame = STOMPFrame(.error, headers: ["message": "a\u{0}b\rc\nd:e"], body: "")
        var bytes = ByteBuffer()
        STOMPFrameEncoder.encode(frame, escapeHeaders: true, escapeCarriageReturn: escapeCR, into: &bytes)
        let cr = escapeCR ? "\\r" : " "
        #expect(String(buffer: bytes) == "ERROR\nmessage:a b\(cr)c\\nd\\ce\n\n\u{0}")
    }

    @Test("an unescaped header (1.0, CONNECTED) writes NUL, CR and LF as spaces")
    func unescapedEncoding() {
        let frame = STOMPFrame(.connected, headers: ["server": "a\u{0}b\rc\nd"], body: "")
        var bytes = ByteBuffer()
        STOMPFrameEncoder.encode(frame, escapeHeaders: true, into: &bytes)
        #expect(String(buffer: bytes) == "CONNECTED\nserver:a b c d\n\n\u{0}")
    }

    @Test("an encoded frame with NULs in headers decodes as one frame, NULs as spaces", arguments: [true, false])
    func roundTrip(_ escape: Bool) throws {
        let frame = STOMPFrame(.message, headers: ["x\u{0}": "\u{0}v\u{0}"], body: "b")
        var bytes = ByteBuffer()
        STOMPFrameEncoder.encode(frame, escapeHeaders: escape, into: &bytes)
        let (frames, rest) = try decodeAll(bytes, escapeHeaders: escape)
        try #require(frames.count == 1)
        #expect(pairs(frames[0].headers) == ["x = v "])
        #expect(frames[0].bodyString == "b")
        #expect(rest.readableBytes == 0)
    }
}
