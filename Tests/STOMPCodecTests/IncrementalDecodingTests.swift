import NIOCore
import NIOEmbedded
import NIOTestUtils
import STOMPCodec
import Testing

@Suite("Incremental decoding")
struct IncrementalDecodingTests {
    static func binaryBody() -> ByteBuffer {
        var b = ByteBuffer()
        b.writeBytes([0x00, 0x01, 0x0A, 0x00, 0xFE])
        return b
    }

    @Test("ByteToMessageDecoderVerifier: drip-fed, chunked and batched input")
    func verifier() throws {
        var binary = ByteBuffer(string: "SEND\ndestination:/topic/bin\ncontent-length:5\n\n")
        binary.writeImmutableBuffer(Self.binaryBody())
        binary.writeInteger(UInt8(0))
        let pairs: [(ByteBuffer, [STOMPFrame])] = [
            (
                ByteBuffer(string: "CONNECT\naccept-version:1.2\nhost:x\n\n\u{0}"),
                [STOMPFrame(.connect, headers: ["accept-version": "1.2", "host": "x"])]
            ),
            (
                ByteBuffer(string: "\n\r\nSUBSCRIBE\r\nid:0\r\ndestination:/topic/a\\cb\r\n\r\n\u{0}"),
                [STOMPFrame(.subscribe, headers: ["id": "0", "destination": "/topic/a:b"])]
            ),
            (
                ByteBuffer(string: "SEND\ndestination:/topic/a\n\nhello\u{0}SEND\ndestination:/topic/b\nx:1\nx:2\n\nworld\u{0}"),
                [
                    STOMPFrame(.send, headers: ["destination": "/topic/a"], body: "hello"),
                    STOMPFrame(.send, headers: STOMPHeaders([("destination", "/topic/b"), ("x", "1"), ("x", "2")]), body: "world"),
                ]
            ),
            (
                binary,
                [STOMPFrame(.send, headers: ["destination": "/topic/bin", "content-length": "5"], body: Self.binaryBody())]
            ),
            (
                ByteBuffer(string: "DISCONNECT\nreceipt:77\n\n\u{0}\n"),
                [STOMPFrame(.disconnect, headers: ["receipt": "77"])]
            ),
        ]
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs, decoderFactory: { STOMPFrameDecoder() })
    }

    @Test("the decoder works as a channel handler and reports decode errors")
    func asChannelHandler() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(STOMPFrameDecoder()))
        try channel.writeInbound(ByteBuffer(string: "SEND\nk:v\n\nab"))
        #expect(try channel.readInbound(as: STOMPFrame.self) == nil)
        try channel.writeInbound(ByteBuffer(string: "c\u{0}SEND\n"))
        let frame = try #require(try channel.readInbound(as: STOMPFrame.self))
        #expect(frame.bodyString == "abc")
        #expect(throws: STOMPDecodingError.undefinedEscape("\\t")) {
            try channel.writeInbound(ByteBuffer(string: "k:\\t\n\n\u{0}"))
        }
        _ = try? channel.finish()
    }

    @Test("three frames in one buffer come out in order")
    func threeFramesInOneBuffer() throws {
        let wire = "SUBSCRIBE\nid:1\ndestination:/topic/x\n\n\u{0}\nSEND\ndestination:/topic/x\ncontent-length:3\n\na\u{0}b\u{0}\r\nUNSUBSCRIBE\nid:1\n\n\u{0}"
        var decoder = STOMPFrameDecoder()
        var buffer = ByteBuffer(string: wire)
        var frames: [STOMPFrame] = []
        while let f = try decoder.decodeFrame(&buffer) { frames.append(f) }
        #expect(frames.map(\.command) == [.subscribe, .send, .unsubscribe])
        #expect(frames[1].bodyString == "a\u{0}b")
        #expect(frames[0].headers["destination"] == "/topic/x")
        #expect(frames[2].headers["id"] == "1")
        #expect(buffer.readableBytes == 0)
    }

    @Test("a large frame fed one byte at a time", arguments: [false, true])
    func largeFrameByteAtATime(_ withContentLength: Bool) throws {
        var body = ""
        for i in 0..<20_000 { body.unicodeScalars.append(Unicode.Scalar(UInt8(97 + i % 26))) }
        var header = "SEND\ndestination:/topic/big\n"
        for i in 0..<20 { header += "h\(i):" + String(repeating: "v", count: 100) + "\n" }
        if withContentLength { header += "content-length:\(body.utf8.count)\n" }
        let wire = ByteBuffer(string: header + "\n" + body + "\u{0}" + "SEND\n\nafter\u{0}")
        let (frames, rest) = try decodeChunked(wire, chunk: 1)
        try #require(frames.count == 2)
        #expect(frames[0].bodyString == body)
        #expect(frames[0].headers.count == (withContentLength ? 22 : 21))
        #expect(frames[0].headers["h19"] == String(repeating: "v", count: 100))
        #expect(frames[1].bodyString == "after")
        #expect(rest.readableBytes == 0)
    }

    @Test("every chunk size gives the same frames as one buffer")
    func chunkSizesAgree() throws {
        var wire = ByteBuffer(string: "\r\nCONNECT\r\naccept-version:1.1,1.2\r\n\r\n\u{0}\n")
        wire.writeString("SEND\ndestination:/topic/q\\c1\ncontent-length:4\n\n\u{0}\u{0}\u{0}\u{0}\u{0}")
        wire.writeString("MESSAGE\nsubscription:0\nmessage-id:m-1\ndestination:/topic/q\n\nbody text\u{0}\n\n")
        let (reference, _) = try decodeAll(wire)
        #expect(reference.count == 3)
        for chunk in 1...12 {
            let (frames, rest) = try decodeChunked(wire, chunk: chunk)
            #expect(frames == reference, "chunk size \(chunk)")
            #expect(rest.readableBytes == 0)
        }
    }

    @Test("a CR split from its LF across chunks is still an EOL")
    func splitCRLF() throws {
        var decoder = STOMPFrameDecoder()
        var buffer = ByteBuffer(string: "\r")
        #expect(try decoder.decodeFrame(&buffer) == nil)
        buffer.writeString("\nSEND\r")
        #expect(try decoder.decodeFrame(&buffer) == nil)
        buffer.writeString("\nk:v\r")
        #expect(try decoder.decodeFrame(&buffer) == nil)
        buffer.writeString("\n\r")
        #expect(try decoder.decodeFrame(&buffer) == nil)
        buffer.writeString("\n\u{0}")
        let frame = try #require(try decoder.decodeFrame(&buffer))
        #expect(frame.command == .send)
        #expect(pairs(frame.headers) == ["k=v"])
    }
}
