import NIOCore
import STOMPCodec
import SwitchboardCore
import SwitchboardWire
import Testing

@Suite("PublishedMessage")
struct PublishedMessageTests {
    static func message(body: String = "hi") -> PublishedMessage {
        let headers = STOMPHeaders([
            ("content-type", "text/plain"),
            ("destination", "/evil"),
            ("x", "a\nb:c"),
            ("message-id", "forged"),
            ("subscription", "s"), ("ack", "a"), ("content-length", "99"), ("receipt", "r"), ("transaction", "t"), ("receipt-id", "ri"),
            ("x", "second"),
        ])
        return PublishedMessage(destination: "/topic/a:b", messageID: "m-1", headers: headers, body: ByteBuffer(string: body))
    }

    @Test("reserved headers are stripped and repeats collapse to the first")
    func headersCleaned() {
        let m = Self.message()
        #expect(m.headers.map { "\($0.name)=\($0.value)" } == ["content-type=text/plain", "x=a\nb:c"])
        #expect(
            PublishedMessage.reservedHeaders == [
                "destination", "message-id", "subscription", "ack", "content-length", "receipt", "transaction", "receipt-id", "x-position",
                "x-recovered", "x-presence-event", "x-presence-user", "x-presence-session",
            ])
    }

    @Test("escaped MESSAGE frame, byte-exact, without ack")
    func escapedNoAck() {
        let bytes = Self.message().encodeFrame(subscription: "sub:0", ack: nil, escape: true, allocator: ByteBufferAllocator())
        #expect(
            String(buffer: bytes) == "MESSAGE\ndestination:/topic/a\\cb\nmessage-id:m-1\ncontent-type:text/plain\nx:a\\nb\\cc\ncontent-length:2\nsubscription:sub\\c0\n\nhi\u{0}")
    }

    @Test("escaped MESSAGE frame, byte-exact, with ack")
    func escapedWithAck() {
        let bytes = Self.message().encodeFrame(subscription: "0", ack: "m-1.0", escape: true, allocator: ByteBufferAllocator())
        #expect(
            String(buffer: bytes)
                == "MESSAGE\ndestination:/topic/a\\cb\nmessage-id:m-1\ncontent-type:text/plain\nx:a\\nb\\cc\ncontent-length:2\nsubscription:0\nack:m-1.0\n\nhi\u{0}")
    }

    @Test("unescaped (STOMP 1.0) MESSAGE frame, byte-exact")
    func plain() {
        let bytes = Self.message(body: "").encodeFrame(subscription: "/topic/a:b", ack: "m-1./topic/a:b", escape: false, allocator: ByteBufferAllocator())
        #expect(
            String(buffer: bytes)
                == "MESSAGE\ndestination:/topic/a:b\nmessage-id:m-1\ncontent-type:text/plain\nx:a b:c\ncontent-length:0\nsubscription:/topic/a:b\nack:m-1./topic/a:b\n\n\u{0}")
    }

    @Test("unescaped (STOMP 1.0) MESSAGE frame of a numbered message, byte-exact")
    func plainPositioned() {
        let numbered = Self.message(body: "").positioned(StreamPosition(epoch: "e1", sequence: 7))
        let bytes = numbered.encodeFrame(subscription: "0", ack: nil, escape: false, allocator: ByteBufferAllocator())
        #expect(
            String(buffer: bytes)
                == "MESSAGE\ndestination:/topic/a:b\nmessage-id:m-1\ncontent-type:text/plain\nx:a b:c\nx-position:e1:7\ncontent-length:0\nsubscription:0\n\n\u{0}")
    }

    @Test("the encoded frame decodes back to the same headers and body", arguments: [true, false])
    func decodesBack(_ escape: Bool) throws {
        var body = ByteBuffer()
        body.writeBytes([0x00, 0xC3, 0x28, 0x00])  // NULs and invalid UTF-8
        let m = PublishedMessage(destination: "/topic/bin", messageID: "id-9", headers: ["k": "v"], body: body)
        #expect(!m.bodyIsUTF8)
        var bytes = m.encodeFrame(subscription: "7", ack: nil, escape: escape, allocator: ByteBufferAllocator())
        var decoder = STOMPFrameDecoder(escapeHeaders: escape)
        let frame = try #require(try decoder.decodeFrame(&bytes))
        #expect(frame.command == .message)
        #expect(frame.headers.map { "\($0.name)=\($0.value)" } == ["destination=/topic/bin", "message-id=id-9", "k=v", "content-length=4", "subscription=7"])
        #expect(frame.body == body)
        #expect(bytes.readableBytes == 0)
    }

    @Test("UTF-8 detection of the body")
    func utf8Detection() {
        #expect(PublishedMessage(destination: "/t", messageID: "1", headers: [:], body: ByteBuffer(string: "héllo ✓")).bodyIsUTF8)
        #expect(PublishedMessage(destination: "/t", messageID: "1", headers: [:], body: ByteBuffer()).bodyIsUTF8)
        var bad = ByteBuffer()
        bad.writeBytes([0xFF, 0xFE])
        #expect(!PublishedMessage(destination: "/t", messageID: "1", headers: [:], body: bad).bodyIsUTF8)
    }

    @Test("message ids are unique and prefixed by the instance")
    func messageIDs() {
        let gen = MessageIDGenerator(instanceID: "inst")
        let ids = (0..<100).map { _ in gen.next() }
        #expect(Set(ids).count == 100)
        #expect(ids.allSatisfy { $0.hasPrefix("inst-") })
        #expect(ids.first == "inst-1")
    }

    @Test("a numbered copy has the frames of a message encoded with its position, byte for byte")
    func positionedSplicesTheSameBytes() {
        let values = ["plain", "a:b", "back\\slash", "new\nline", "carriage\rreturn", "", "é𝄞"]
        let bodies = [ByteBuffer(string: "hi"), ByteBuffer(string: ""), ByteBuffer(bytes: [0xFF, 0x00, 0x41]), ByteBuffer(string: String(repeating: "x", count: 1000))]
        var checked = 0
        for (i, value) in values.enumerated() {
            for body in bodies {
                let headers = STOMPHeaders([("content-type", "text/plain"), ("x-\(i)", value), ("y", values[(i + 3) % values.count])])
                let destination = i % 2 == 0 ? "/topic/a:\(value)" : "/user/u1/queue/q"
                let message = PublishedMessage(destination: destination, messageID: "m-\(i)", headers: headers, body: body)
                let position = StreamPosition(epoch: "0000abcd00001", sequence: UInt64(i * 1000 + 7))
                let spliced = message.positioned(position)
                let encoded = PublishedMessage(destination: destination, messageID: "m-\(i)", headers: headers, body: body, position: position)
                #expect(spliced.position == position && spliced.headers == encoded.headers && spliced.bodyIsUTF8 == encoded.bodyIsUTF8)
                for (escape, escapeCR) in [(true, true), (true, false), (false, true)] {
                    for ack in [nil, "ack:1"] {
                        let a = spliced.encodeWebSocketFrame(subscription: "s:0", ack: ack, escape: escape, escapeCarriageReturn: escapeCR, allocator: ByteBufferAllocator())
                        let b = encoded.encodeWebSocketFrame(subscription: "s:0", ack: ack, escape: escape, escapeCarriageReturn: escapeCR, allocator: ByteBufferAllocator())
                        #expect(a == b, "\(value) escape \(escape) cr \(escapeCR)")
                        checked += 1
                    }
                }
                // numbering again (a copy that already has a position) encodes from scratch
                let renumbered = spliced.positioned(StreamPosition(epoch: "e", sequence: 1))
                #expect(String(buffer: renumbered.encodeFrame(subscription: "s", ack: nil, escape: false, allocator: ByteBufferAllocator())).contains("x-position:e:1\n"))
            }
        }
        #expect(checked == 7 * 4 * 6)
    }
}
