import NIOCore
import STOMPCodec
import Testing

@Suite("Decoder: framing, headers and bodies")
struct DecoderFramingTests {
    @Test("every command decodes byte-exactly", arguments: STOMPCommand.allCases)
    func everyCommand(_ command: STOMPCommand) throws {
        let wire = "\(command.rawValue)\nk:v\n\nbody\u{0}"
        let (frames, rest) = try decodeAll(ByteBuffer(string: wire))
        try #require(frames.count == 1)
        #expect(frames[0].command == command)
        #expect(pairs(frames[0].headers) == ["k=v"])
        #expect(frames[0].bodyString == "body")
        #expect(rest.readableBytes == 0)
    }

    @Test("unknown and lower-case commands are rejected", arguments: ["SENDX", "send", "FOO", "CONNECTX"])
    func unknownCommand(_ word: String) {
        let error = decodingError { _ = try decodeAll("\(word)\n\n\u{0}") }
        #expect(error == .unknownCommand(word))
    }

    @Test("a header line without a colon is malformed")
    func malformedHeader() {
        let error = decodingError { _ = try decodeAll("SEND\ndestination\n\n\u{0}") }
        #expect(error == .malformedHeaderLine("destination"))
    }

    /// Its ERROR carries the receipt read before it, as for the other header errors.
    @Test("a malformed header line after a receipt names that receipt")
    func malformedHeaderAfterReceipt() {
        let error = decodingError { _ = try decodeAll("SEND\nreceipt:r1\ndestination:/topic/a\nnocolon\n\n\u{0}") }
        #expect(error == .malformedHeaderLine("nocolon"))
        #expect(error?.receipt == "r1")
    }

    @Test("a header line with an empty name is malformed (STOMP 1.2: header-name = 1*OCTET)", arguments: [":empty-name", ":", "::x"])
    func emptyHeaderName(_ line: String) {
        let error = decodingError { _ = try decodeAll("SEND\ndestination:/topic/a\n\(line)\n\n\u{0}") }
        #expect(error == .malformedHeaderLine(line))
    }

    @Test("repeated headers: the first wins, all are kept in order")
    func repeatedHeaders() throws {
        let frame = try decodeOne("MESSAGE\nfoo:first\nbar:x\nfoo:second\nfoo:third\n\n\u{0}")
        #expect(frame.headers["foo"] == "first")
        #expect(frame.headers["bar"] == "x")
        #expect(frame.headers.count == 4)
        #expect(pairs(frame.headers) == ["foo=first", "bar=x", "foo=second", "foo=third"])
    }

    @Test("header names and values are never trimmed")
    func noTrimming() throws {
        let frame = try decodeOne("SEND\n name :  spaced value \nempty:\n\n\u{0}")
        #expect(frame.headers[" name "] == "  spaced value ")
        #expect(frame.headers["name"] == nil)
        #expect(frame.headers["empty"] == "")
    }

    @Test("only the first colon separates name from value")
    func colonInValueOfConnect() throws {
        let frame = try decodeOne("CONNECT\nhost:a:b:c\n\n\u{0}")
        #expect(frame.headers["host"] == "a:b:c")
    }

    @Test("CRLF line endings are accepted everywhere")
    func crlf() throws {
        let frame = try decodeOne("SEND\r\ndestination:/topic/a\r\nx:y\r\n\r\nhello\u{0}")
        #expect(frame.command == .send)
        #expect(pairs(frame.headers) == ["destination=/topic/a", "x=y"])
        #expect(frame.bodyString == "hello")
    }

    @Test("a CR that is not followed by LF stays in the value")
    func loneCarriageReturn() throws {
        let frame = try decodeOne("CONNECT\nk:a\rb\n\n\u{0}")
        #expect(frame.headers["k"] == "a\rb")
    }

    @Test("EOL heart-beats before, between and after frames are skipped")
    func heartBeatsSkipped() throws {
        let wire = "\n\r\n\nSEND\ndestination:/a\n\none\u{0}\n\n\r\nSEND\ndestination:/b\n\ntwo\u{0}\r\n\n"
        let (frames, rest) = try decodeAll(ByteBuffer(string: wire))
        #expect(frames.map(\.bodyString) == ["one", "two"])
        #expect(frames.map { $0.headers["destination"] } == ["/a", "/b"])
        #expect(rest.readableBytes == 0)
    }

    @Test("only heart-beats yields no frame and consumes the EOLs")
    func onlyHeartBeats() throws {
        let (frames, rest) = try decodeAll(ByteBuffer(string: "\n\n\r\n\n"))
        #expect(frames.isEmpty)
        #expect(rest.readableBytes == 0)
    }

    @Test("an empty body and no headers")
    func emptyBody() throws {
        let frame = try decodeOne("DISCONNECT\n\n\u{0}")
        #expect(frame.command == .disconnect)
        #expect(frame.headers.isEmpty)
        #expect(frame.body.readableBytes == 0)
    }

    @Test("without content-length the body ends at the first NUL")
    func bodyEndsAtNul() throws {
        let (frames, rest) = try decodeAll(ByteBuffer(string: "SEND\n\nab\ncd\u{0}SEND\n\nx\u{0}"))
        #expect(frames.map(\.bodyString) == ["ab\ncd", "x"])
        #expect(rest.readableBytes == 0)
    }

    @Test("content-length lets NUL bytes into the body")
    func contentLengthWithNuls() throws {
        var wire = ByteBuffer(string: "SEND\ncontent-length:5\n\n")
        wire.writeBytes([0x61, 0x00, 0x00, 0x62, 0x00])
        wire.writeInteger(UInt8(0))
        wire.writeString("SEND\n\nnext\u{0}")
        let (frames, rest) = try decodeAll(wire)
        try #require(frames.count == 2)
        #expect(Array(frames[0].body.readableBytesView) == [0x61, 0x00, 0x00, 0x62, 0x00])
        #expect(frames[0].headers["content-length"] == "5")
        #expect(frames[1].bodyString == "next")
        #expect(rest.readableBytes == 0)
    }

    @Test("content-length 0 with an immediate NUL")
    func contentLengthZero() throws {
        let frame = try decodeOne("SEND\ncontent-length:0\n\n\u{0}")
        #expect(frame.body.readableBytes == 0)
    }

    @Test("content-length followed by a non-NUL byte is an error")
    func missingNullTerminator() {
        let error = decodingError { _ = try decodeAll("SEND\ncontent-length:3\n\nabcd\u{0}") }
        #expect(error == .missingNullTerminator)
    }

    @Test(
        "an error found once the frame's receipt header was read names it",
        arguments: [
            ("SEND\nreceipt:r1\ncontent-length:3\n\nabcd\u{0}", "r1", STOMPDecodingError.missingNullTerminator),
            ("SEND\nreceipt:r2\ncontent-length:abc\n\nx\u{0}", "r2", .invalidContentLength("abc")),
            ("SEND\nreceipt:r3\nx:a\\tb\n\nx\u{0}", "r3", .undefinedEscape("\\t")),
            ("SEND\nx:a\\tb\nreceipt:r4\n\nx\u{0}", nil, .undefinedEscape("\\t")),
            ("SEND\nreceipt:r5\n\n" + String(repeating: "b", count: 200), "r5", .bodyTooLarge(limit: 100)),
        ] as [(String, String?, STOMPDecodingError)])
    func errorsNameTheFramesReceipt(_ input: String, _ receipt: String?, _ expected: STOMPDecodingError) {
        var limits = STOMPDecoderLimits()
        limits.maxBodyBytes = 100
        let error = decodingError { _ = try decodeAll(input, limits: limits) }
        #expect(error == expected)
        #expect(error?.receipt == receipt)
    }

    @Test("an invalid content-length is rejected", arguments: ["-1", "abc", "", " 3", "3 ", "+3", "1e3", "99999999999999999999999"])
    func invalidContentLength(_ value: String) {
        let error = decodingError { _ = try decodeAll("SEND\ncontent-length:\(value)\n\nabc\u{0}") }
        #expect(error == .invalidContentLength(value))
    }

    @Test("the first content-length wins")
    func firstContentLengthWins() throws {
        var wire = ByteBuffer(string: "SEND\ncontent-length:2\ncontent-length:1\n\n")
        wire.writeBytes([0x00, 0x41, 0x00])
        let (frames, _) = try decodeAll(wire)
        try #require(frames.count == 1)
        #expect(Array(frames[0].body.readableBytesView) == [0x00, 0x41])
    }

    @Test("an incomplete frame returns nil and leaves the bytes")
    func incompleteFrame() throws {
        for partial in ["SEN", "SEND\ndest", "SEND\ndestination:/a\n", "SEND\n\nbody", "SEND\ncontent-length:4\n\nbo", "SEND\ncontent-length:4\n\nbody"] {
            let (frames, rest) = try decodeAll(ByteBuffer(string: partial))
            #expect(frames.isEmpty, "\(partial)")
            #expect(rest.readableBytes == partial.utf8.count, "\(partial)")
        }
    }

    @Test("the body is a slice of the input (the bytes after the frame are untouched)")
    func trailingBytesKept() throws {
        let (frames, rest) = try decodeAll(ByteBuffer(string: "SEND\n\nx\u{0}SUBSCRIBE\nid:1"))
        #expect(frames.count == 1)
        #expect(String(buffer: rest) == "SUBSCRIBE\nid:1")
    }

    @Test("error descriptions name the offending input")
    func errorDescriptions() {
        #expect(STOMPDecodingError.unknownCommand("FOO").description == "unknown command 'FOO'")
        #expect(STOMPDecodingError.undefinedEscape("\\t").description == "undefined escape sequence '\\t' in header")
        #expect(STOMPDecodingError.invalidContentLength("-1").description == "invalid content-length '-1'")
        #expect(STOMPDecodingError.tooManyHeaders(limit: 3).description == "too many headers (limit 3)")
        #expect(STOMPDecodingError.headerLineTooLong(limit: 10).description == "header line too long (limit 10 bytes)")
        #expect(STOMPDecodingError.frameTooLarge(limit: 99).description == "frame too large (limit 99 bytes)")
        #expect(STOMPDecodingError.malformedHeaderLine("abc").description.contains("'abc'"))
        #expect(STOMPDecodingError.missingNullTerminator.description.contains("NUL"))
        let long = String(repeating: "X", count: 100)
        #expect(STOMPDecodingError.unknownCommand(long).description == "unknown command '\(String(repeating: "X", count: 32))'")
    }
}

@Suite("STOMPHeaders")
struct HeadersTests {
    @Test("set replaces every repeat; remove drops them all; add keeps repeats")
    func mutations() {
        var h: STOMPHeaders = ["a": "1", "b": "2"]
        h.add("a", "3")
        #expect(pairs(h) == ["a=1", "b=2", "a=3"])
        h.set("a", "9")
        #expect(pairs(h) == ["b=2", "a=9"])
        h.remove("b")
        #expect(pairs(h) == ["a=9"])
        #expect(h.count == 1)
    }

    @Test("equality is order-sensitive")
    func equality() {
        let a: STOMPHeaders = ["x": "1", "y": "2"]
        let b: STOMPHeaders = ["y": "2", "x": "1"]
        #expect(a != b)
        #expect(a == STOMPHeaders([("x", "1"), ("y", "2")]))
    }
}
