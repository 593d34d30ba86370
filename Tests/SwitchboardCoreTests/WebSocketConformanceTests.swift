import NIOCore
import NIOWebSocket
import STOMPCodec
import SwitchboardCore
import SwitchboardRoutes
import SwitchboardWire
import Testing

extension TestClient {
    /// Sends raw bytes as one masked WebSocket frame.
    func sendBytes(_ bytes: [UInt8], opcode: WebSocketOpcode = .text, fin: Bool = true) throws {
        try sendWS(Self.wsFrame(ByteBuffer(bytes: bytes), opcode: opcode, fin: fin))
    }

    /// Requires the output to be exactly one close frame with `code` and `reason` (no STOMP
    /// ERROR), and the connection closed.
    func expectCloseOnly(_ code: UInt16, _ reason: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let out = try read()
        try #require(out.count == 1, "\(out)", sourceLocation: sourceLocation)
        guard case .close(let got, let gotReason) = out[0] else {
            Issue.record("expected a close frame, got \(out)", sourceLocation: sourceLocation)
            return
        }
        #expect(got == code, sourceLocation: sourceLocation)
        #expect(gotReason == reason, sourceLocation: sourceLocation)
        #expect(!isActive, sourceLocation: sourceLocation)
    }
}

private let sendHead = Array("SEND\ndestination:/topic/u\nreceipt:r\n\n".utf8)

/// Holds every write (a socket that takes nothing more) until the channel closes.
private final class WriteStaller: ChannelOutboundHandler, @unchecked Sendable {
    typealias OutboundIn = Any
    var held: [EventLoopPromise<Void>] = []
    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if let promise { held.append(promise) }
    }
    func flush(context: ChannelHandlerContext) {}
    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        for promise in held { promise.fail(ChannelError.ioOnClosedChannel) }
        held.removeAll()
        context.close(mode: mode, promise: promise)
    }
}
private let invalidUTF8 = "text message is not valid UTF-8"

/// Runs `body` with a client that has CONNECTed to a fresh gateway.
private func connected(_ body: (TestClient) throws -> Void) throws {
    let gw = TestGateway()
    defer { gw.shutdown() }
    let c = try gw.client()
    try c.connect()
    try body(c)
}

@Suite("WebSocket conformance: UTF-8, close frames, protocol errors")
struct WebSocketConformanceTests {
    @Test("a text message that is not UTF-8 closes 1007 before its frames are handled")
    func invalidTextMessage() throws {
        try connected { c in
            try c.subscribe("/topic/u")
            try c.sendBytes(sendHead + [0xFF, 0xFE] + [0])
            try c.expectCloseOnly(1007, invalidUTF8)
        }
    }

    @Test("invalid UTF-8 in a continuation frame closes 1007")
    func invalidContinuation() throws {
        try connected { c in
            try c.sendBytes(sendHead + [0xE2, 0x82], fin: false)
            #expect(try c.read().isEmpty)
            try c.sendBytes([0x28, 0], opcode: .continuation)
            try c.expectCloseOnly(1007, invalidUTF8)
        }
    }

    @Test("a text message ending inside a code point closes 1007")
    func truncatedAtEnd() throws {
        try connected { c in
            // The message is checked before any of it is decoded: the complete SEND is not handled.
            try c.sendBytes(sendHead + [0x41, 0] + [0xE2, 0x82])
            try c.expectCloseOnly(1007, invalidUTF8)
        }
    }

    @Test("a code point split across fragments is valid")
    func splitCodePoint() throws {
        try connected { c in
            try c.subscribe("/topic/u")
            let euro = Array("\u{20AC}".utf8)
            try c.sendBytes(sendHead + euro[..<1], fin: false)
            try c.sendBytes(Array(euro[1..<2]), opcode: .continuation, fin: false)
            try c.sendBytes(Array(euro[2...]) + [0], opcode: .continuation)
            let frames = try c.frames()
            // The RECEIPT first: the MESSAGE was caused by the SEND.
            #expect(frames.map(\.command) == [.receipt, .message])
            #expect(frames.last?.bodyString == "\u{20AC}")
            // The next message starts with a fresh state.
            try c.sendBytes(sendHead + Array("\u{1F600}".utf8) + [0])
            #expect(try c.frames().map(\.command) == [.receipt, .message])
            #expect(c.isActive)
        }
    }

    @Test("a binary message is bytes: invalid UTF-8 is carried")
    func binaryIsBytes() throws {
        try connected { c in
            try c.subscribe("/topic/u")
            try c.sendBytes(sendHead + [0xFF, 0xC0, 0xAF, 0], opcode: .binary)
            let out = try c.read()
            #expect(out.map(\.frame?.command) == [.receipt, .message], "\(out)")
            if case .frame(let message, let opcode) = out.last {
                #expect(Array(message.body.readableBytesView) == [0xFF, 0xC0, 0xAF])
                #expect(opcode == .binary)
            }
            #expect(c.isActive)
        }
    }

    @Test("a close frame whose reason is not UTF-8 is answered 1007")
    func invalidCloseReason() throws {
        try connected { c in
            try c.sendBytes([0x03, 0xE8, 0x62, 0xFF], opcode: .connectionClose)
            try c.expectCloseOnly(1007, "close reason is not valid UTF-8")
        }
    }

    @Test("a close frame with a UTF-8 reason is echoed")
    func validCloseReason() throws {
        try connected { c in
            try c.sendBytes([0x03, 0xE8] + Array("bye \u{20AC}".utf8), opcode: .connectionClose)
            try c.expectCloseOnly(1000, "")
        }
    }

    /// A client that sends its close frame and reads nothing more (the echo waits behind
    /// unsent messages): the connection stayed open for good, its subscriptions still in the
    /// shard, its unsent bytes no longer counted.
    @Test("a client's close frame ends the session at once, and the connection within the grace")
    func closeEchoHasADeadline() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.send(.subscribe, ["id": "0", "destination": "/topic/a", "receipt": "s"])
        _ = try c.read()
        let shard = gw.hub.shard(for: gw.loop)
        #expect(shard.subscriptionCount == 1)
        try c.channel.pipeline.syncOperations.addHandler(WriteStaller(), position: .first)
        try c.sendBytes([0x03, 0xE8], opcode: .connectionClose)
        #expect(shard.subscriptionCount == 0, "the session's subscriptions left at once")
        #expect(c.channel.isActive)
        gw.loop.advanceTime(by: .seconds(2) + .milliseconds(1))  // the grace (WebSocketSTOMPTransport.closeGrace)
        #expect(!c.channel.isActive, "closed at the grace")
    }

    /// A malformed frame behind a SEND in flight: its ERROR waits for the SEND's turn, and a
    /// close frame the client sent meanwhile was ignored (no echo until the step ended, then a
    /// 2 s linger for a close that had come).
    @Test("a close frame after a decoding failure is echoed at once")
    func closeAfterAFailureIsEchoed() throws {
        try withSendInFlight { route, _, c in
            try c.sendBytes(Array("FOO\n\n\u{0}".utf8))
            #expect(try c.read().isEmpty, "the ERROR waits behind the SEND")
            try c.sendBytes([0x03, 0xE8], opcode: .connectionClose)
            let out = try c.read()
            #expect(out.contains { if case .close(1000, _) = $0 { true } else { false } }, "\(out)")
            route.calls[0].promise.fail(RouteError(.abandoned, "test over"))
        }
    }

    /// `limits.max-frame-bytes` above 2 × `limits.bytes-per-second`: a frame larger than the
    /// byte rate's burst was refused as a rate limit whatever the connection's rate.
    @Test("a frame within limits.max-frame-bytes passes the byte rate on a quiet connection")
    func aLargeFramePassesTheByteRate() throws {
        var configuration = SessionConfiguration()
        configuration.maxBytesPerSecond = 1_000
        configuration.decoderLimits.maxFrameBytes = 16_384
        configuration.decoderLimits.maxBodyBytes = 16_384
        let gw = TestGateway(configuration: configuration)
        defer { gw.shutdown() }
        let c = try gw.client(rateLimited: true)
        try c.connect()
        try c.send(.send, ["destination": "/topic/big", "receipt": "r"], body: String(repeating: "x", count: 12_000))
        let out = try c.frames()
        #expect(out.map(\.command) == [.receipt], "\(out.map { $0.headers["message"] ?? "" })")
        // The rate still holds: more than a burst's worth at once is refused.
        try c.send(.send, ["destination": "/topic/big"], body: String(repeating: "y", count: 12_000))
        let refused = try c.read().compactMap(\.frame)
        #expect(refused.first?.headers["message"] == "rate limit exceeded: more than 1000 bytes per second")
    }

    @Test("close codes that must not be sent are answered 1002", arguments: [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] as [UInt16])
    func invalidCloseCode(_ code: UInt16) throws {
        try connected { c in
            try c.sendBytes([UInt8(code >> 8), UInt8(code & 0xFF)], opcode: .connectionClose)
            try c.expectCloseOnly(1002, "invalid close code \(code)")
        }
    }

    @Test(
        "close codes of RFC 6455, the IANA registry and applications are echoed",
        arguments: [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999] as [UInt16])
    func validCloseCode(_ code: UInt16) throws {
        try connected { c in
            try c.sendBytes([UInt8(code >> 8), UInt8(code & 0xFF)], opcode: .connectionClose)
            try c.expectCloseOnly(code, "")
        }
    }

    /// The client's bytes go through NIO's real frame decoder, as in the gateway.
    private func withFrameDecoder(_ body: (TestClient) throws -> Void) throws {
        try connected { c in
            try c.channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1024)), position: .first)
            try body(c)
        }
    }

    @Test(
        "NIO decoder errors: close 1002 with a plain reason, no STOMP ERROR, no internal names",
        arguments: [
            ([0x89, 0xFE, 0x00, 0x7E] + [UInt8](repeating: 0, count: 4 + 126), "control frame longer than 125 bytes"),  // 126-byte ping
            ([0x09, 0x81, 0, 0, 0, 0, 0x78], "fragmented control frame"),  // ping with FIN clear
        ] as [([UInt8], String)])
    func decoderProtocolErrors(_ wire: [UInt8], _ reason: String) throws {
        try withFrameDecoder { c in
            try c.channel.writeInbound(ByteBuffer(bytes: wire))
            c.loop.run()
            try c.expectCloseOnly(1002, reason)
        }
    }

    @Test("a WebSocket frame over the size limit is a STOMP limit error: ERROR, then 1009")
    func frameOverLimit() throws {
        try withFrameDecoder { c in
            try c.channel.writeInbound(ByteBuffer(bytes: [0x81, 0xFE, 0x08, 0x00]))  // 2048-byte text frame
            c.loop.run()
            let error = try expectErrorThenClose(try c.read(), code: 1009)
            #expect(error.headers["message"] == "frame too large (limit \(SessionConfiguration().decoderLimits.maxFrameBytes) bytes)")
        }
    }

    @Test("a stray NUL between frames is skipped; a control byte before a command is quoted as \\xNN")
    func strayNul() throws {
        try connected { c in
            try c.sendRaw("SUBSCRIBE\ndestination:/topic/u\nid:1\n\n\u{0}\u{0}SEND\ndestination:/topic/u\nreceipt:r\n\nhi\u{0}\u{0}\n")
            #expect(try c.frames().map(\.command) == [.receipt, .message])
            try c.sendRaw("\u{1}SEND\n\n\u{0}")
            let error = try expectErrorThenClose(try c.read())
            #expect(error.headers["message"] == "unknown command '\\x01SEND'")
        }
    }
}
