import NIOCore
import STOMPCodec
import SwitchboardCore
import SwitchboardRedis
import SwitchboardWire
import Testing

@Suite struct RedisEnvelopeTests {
    static let awkwardHeaders: STOMPHeaders = [
        "content-type": "application/octet-stream",
        "x-multi-line": "first\nsecond\r\nthird",
        "x:colon:name": "value:with:colons",
        "x-backslash": #"C:\temp\new"#,
        "x-empty": "",
        "x-unicode": "héllo ✓",
    ]

    static let binaryBody = ByteBuffer(bytes: [0x00, 0x01, 0xFF, 0x00, 0x0A, 0x3A, 0x5C, 0x00])

    static func message(
        destination: String = "/topic/sensors.1", id: String = "inst-a-42", headers: STOMPHeaders = awkwardHeaders, body: ByteBuffer = binaryBody
    ) -> PublishedMessage {
        PublishedMessage(destination: destination, messageID: id, headers: headers, body: body)
    }

    @Test func roundTripKeepsEveryPartWithSession() throws {
        let payload = RedisEnvelope.encode(Self.message(), origin: "inst-a", session: "inst-a-s-7")
        let decoded = try #require(RedisEnvelope.decode(payload))
        #expect(decoded.destination == "/topic/sensors.1")
        #expect(decoded.messageID == "inst-a-42")
        #expect(decoded.origin == "inst-a")
        #expect(decoded.session == "inst-a-s-7")
        #expect(decoded.headers == Self.awkwardHeaders)
        #expect(decoded.body == Self.binaryBody)
    }

    @Test func roundTripWithoutSession() throws {
        let payload = RedisEnvelope.encode(Self.message(headers: [:]), origin: "inst-b")
        let decoded = try #require(RedisEnvelope.decode(payload))
        #expect(decoded.session == nil)
        #expect(decoded.origin == "inst-b")
        #expect(decoded.headers.isEmpty)
        #expect(decoded.body == Self.binaryBody)
    }

    @Test func encodingIsAMarkedEscapedMESSAGEFrame() {
        let payload = RedisEnvelope.encode(Self.message(headers: ["x-multi-line": "a\nb", "x:c": "d:e"], body: ByteBuffer(string: "hi")), origin: "o")
        #expect(payload.getInteger(at: payload.readerIndex, as: UInt8.self) == RedisEnvelope.marker)
        let text = String(decoding: payload.readableBytesView.dropFirst(), as: UTF8.self)
        #expect(
            text == "MESSAGE\ndestination:/topic/sensors.1\nmessage-id:inst-a-42\norigin:o\nsession:\nx-multi-line:a\\nb\nx\\cc:d\\ce\ncontent-length:2\n\nhi\u{0}")
    }

    @Test(arguments: [0, 1, 4096, 200_000])
    func bodiesOfAnySizeSurvive(size: Int) throws {
        let body = ByteBuffer(bytes: (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        let decoded = try #require(RedisEnvelope.decode(RedisEnvelope.encode(Self.message(body: body), origin: "o")))
        #expect(decoded.body == body)
        #expect(decoded.body.readableBytes == size)
    }

    /// The HTTP API takes header values as long as a body (up to `http.max-body-bytes`): the
    /// envelope's 64 KiB header block made every instance drop such a message, which history
    /// kept all the same (a jump in `x-position` for every subscriber).
    @Test func headerValuesAsLongAsABodySurvive() throws {
        let long = String(repeating: "v", count: 300_000)
        let headers: STOMPHeaders = ["x-long": long, "x-other": "1"]
        let decoded = try #require(RedisEnvelope.decode(RedisEnvelope.encode(Self.message(headers: headers), origin: "o")))
        #expect(decoded.headers["x-long"] == long && decoded.headers["x-other"] == "1")
    }

    @Test func userDestinationAndUnicodeDestinationSurvive() throws {
        for destination in ["/~user/al%2Eice/queue/inbox", "/topic/ünï.cödé", "/topic/a:b\nc"] {
            let decoded = try #require(RedisEnvelope.decode(RedisEnvelope.encode(Self.message(destination: destination), origin: "o")))
            #expect(decoded.destination == destination)
        }
    }

    @Test func payloadWithoutMarkerIsARawTextBody() {
        let raw = ByteBuffer(string: "MESSAGE\ndestination:/topic/x\n\nnot an envelope\u{0}")
        let decoded = RedisEnvelope.decode(raw)
        #expect(decoded?.body == raw)
        #expect(decoded?.headers == ["content-type": "text/plain"])
        #expect(decoded?.destination == nil)
        #expect(decoded?.messageID == nil)
        #expect(decoded?.origin == nil)
        #expect(decoded?.session == nil)

        let empty = RedisEnvelope.decode(ByteBuffer())
        #expect(empty?.body.readableBytes == 0)
        #expect(empty?.headers == ["content-type": "text/plain"])
    }

    @Test func markerIsLookedForAtTheReaderIndex() throws {
        var buffer = ByteBuffer(string: "ignored")
        var envelope = RedisEnvelope.encode(Self.message(), origin: "o")
        buffer.writeBuffer(&envelope)
        buffer.moveReaderIndex(forwardBy: "ignored".utf8.count)
        #expect(try #require(RedisEnvelope.decode(buffer)).origin == "o")
    }

    @Test func malformedEnvelopesAreRefused() {
        let whole = RedisEnvelope.encode(Self.message(), origin: "o")
        var cases: [ByteBuffer] = [
            ByteBuffer(bytes: [RedisEnvelope.marker]),
            ByteBuffer(bytes: [RedisEnvelope.marker] + Array("garbage".utf8)),
            ByteBuffer(bytes: [RedisEnvelope.marker] + Array("SEND\ndestination:/topic/x\n\nbody\u{0}".utf8)),
            ByteBuffer(bytes: [RedisEnvelope.marker] + Array("MESSAGE\ndestination:/topic/x\ncontent-length:10\n\nshort\u{0}".utf8)),
        ]
        cases.append(whole.getSlice(at: whole.readerIndex, length: whole.readableBytes - 3)!)
        for payload in cases {
            #expect(RedisEnvelope.decode(payload) == nil, "\(String(decoding: payload.readableBytesView, as: UTF8.self))")
        }
    }

    @Test func userHeadersNamedLikeEnvelopeHeadersSurvive() throws {
        let message = Self.message(headers: ["origin": "sensor-7", "session": "morning", "x-k": "v"])
        let decoded = try #require(RedisEnvelope.decode(RedisEnvelope.encode(message, origin: "inst-a")))
        #expect(decoded.origin == "inst-a", "the envelope's origin comes first and wins")
        // User headers named like the envelope's own come after them and stay user headers.
        #expect(decoded.headers == message.headers)
        #expect(decoded.session == nil)
    }
}
