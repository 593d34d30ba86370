import NIOCore
import NIOEmbedded
import NIOWebSocket
import STOMPCodec
import SwitchboardCore
import SwitchboardWire
import Testing

@Suite("WebSocketServerFrame")
struct WebSocketServerFrameTests {
    /// Decodes `bytes` with NIO's own frame decoder (a third-party check of our writer).
    static func decodeWithNIO(_ bytes: ByteBuffer) throws -> [WebSocketFrame] {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1 << 20)))
        defer { _ = try? channel.finish() }
        try channel.writeInbound(bytes)
        var out: [WebSocketFrame] = []
        while let f = try channel.readInbound(as: WebSocketFrame.self) { out.append(f) }
        return out
    }

    @Test("headers are byte-exact at the length-encoding boundaries", arguments: [0, 1, 125, 126, 127, 65535, 65536, 70000])
    func lengthBoundaries(length: Int) throws {
        let payload = ByteBuffer(repeating: UInt8(ascii: "a"), count: length)
        let frame = WebSocketServerFrame.make(opcode: .binary, payload: payload, allocator: ByteBufferAllocator())
        var expected: [UInt8] = [0x82]
        if length <= 125 {
            expected.append(UInt8(length))
        } else if length <= 65535 {
            expected += [126, UInt8(length >> 8), UInt8(length & 0xFF)]
        } else {
            expected += [127] + (0..<8).reversed().map { UInt8((length >> ($0 * 8)) & 0xFF) }
        }
        #expect(Array(frame.readableBytesView.prefix(expected.count)) == expected)
        #expect(frame.readableBytes == expected.count + length)
        let decoded = try Self.decodeWithNIO(frame)
        try #require(decoded.count == 1)
        #expect(decoded[0].fin && decoded[0].opcode == .binary && decoded[0].maskKey == nil)
        #expect(decoded[0].data == payload)
    }

    @Test("close frames carry the code and reason")
    func close() throws {
        let frame = WebSocketServerFrame.close(code: .protocolError, reason: "bad", allocator: ByteBufferAllocator())
        #expect(Array(frame.readableBytesView) == [0x88, 5, 0x03, 0xEA] + Array("bad".utf8))
        let noCode = WebSocketServerFrame.close(code: nil, allocator: ByteBufferAllocator())
        #expect(Array(noCode.readableBytesView) == [0x88, 0])
    }

    @Test("a MESSAGE in a WebSocket frame is the STOMP frame behind a header; binary bodies use binary frames")
    func messageFrame() throws {
        let text = PublishedMessage(destination: "/topic/a", messageID: "m-1", headers: [:], body: ByteBuffer(string: "héllo"))
        let framed = text.encodeWebSocketFrame(subscription: "0", ack: nil, escape: true, allocator: ByteBufferAllocator())
        let plain = text.encodeFrame(subscription: "0", ack: nil, escape: true, allocator: ByteBufferAllocator())
        let decoded = try Self.decodeWithNIO(framed)
        try #require(decoded.count == 1)
        #expect(decoded[0].opcode == .text)
        #expect(decoded[0].data == plain)

        let binary = PublishedMessage(destination: "/topic/a", messageID: "m-2", headers: [:], body: ByteBuffer(bytes: [0xFF, 0x00, 0xFE]))
        let b = try Self.decodeWithNIO(binary.encodeWebSocketFrame(subscription: "0", ack: nil, escape: true, allocator: ByteBufferAllocator()))
        #expect(b.first?.opcode == .binary)
    }
}

@Suite("MessageFrameCache")
struct MessageFrameCacheTests {
    let allocator = ByteBufferAllocator()

    /// Whether two buffers share storage (the cache hands out the same bytes, not a copy).
    static func sameStorage(_ a: ByteBuffer, _ b: ByteBuffer) -> Bool {
        a.withUnsafeReadableBytes { x in b.withUnsafeReadableBytes { y in x.baseAddress == y.baseAddress } }
    }

    @Test("subscribers with the same id and escaping share one buffer; others get their own bytes")
    func sharing() throws {
        let m = PublishedMessage(destination: "/topic/a", messageID: "m-1", headers: [:], body: ByteBuffer(string: "x"))
        var cache = MessageFrameCache()
        let a = cache.frame(m, subscription: "0", ack: false, escape: true, escapeCR: true, allocator: allocator)
        let b = cache.frame(m, subscription: "0", ack: false, escape: true, escapeCR: true, allocator: allocator)
        #expect(Self.sameStorage(a, b))
        let other = cache.frame(m, subscription: "1", ack: false, escape: true, escapeCR: true, allocator: allocator)
        #expect(!Self.sameStorage(a, other))
        #expect(String(buffer: other).contains("subscription:1\n"))
        let acked = cache.frame(m, subscription: "0", ack: true, escape: true, escapeCR: true, allocator: allocator)
        #expect(String(buffer: acked).contains("ack:m-1.0\n"))
        #expect(!String(buffer: a).contains("ack:"))
        let v10 = cache.frame(m, subscription: "0", ack: false, escape: false, escapeCR: false, allocator: allocator)
        #expect(!Self.sameStorage(a, v10))
    }

    @Test("a new message never gets the previous message's frames")
    func newMessage() {
        var cache = MessageFrameCache()
        let m1 = PublishedMessage(destination: "/topic/a", messageID: "m-1", headers: [:], body: ByteBuffer(string: "one"))
        let m2 = PublishedMessage(destination: "/topic/a", messageID: "m-2", headers: [:], body: ByteBuffer(string: "two"))
        _ = cache.frame(m1, subscription: "0", ack: false, escape: true, escapeCR: true, allocator: allocator)
        let second = cache.frame(m2, subscription: "0", ack: false, escape: true, escapeCR: true, allocator: allocator)
        #expect(String(buffer: second).contains("message-id:m-2\n"))
        #expect(String(buffer: second).hasSuffix("two\u{0}"))
    }

    @Test("beyond its capacity the cache still encodes correct frames")
    func overflow() {
        var cache = MessageFrameCache()
        let m = PublishedMessage(destination: "/topic/a", messageID: "m-1", headers: [:], body: ByteBuffer(string: "x"))
        for i in 0..<(MessageFrameCache.capacity * 2) {
            let f = cache.frame(m, subscription: "s\(i)", ack: false, escape: true, escapeCR: true, allocator: allocator)
            #expect(String(buffer: f).contains("subscription:s\(i)\n"))
        }
    }
}
