import NIOCore
import NIOEmbedded
import NIOWebSocket
import STOMPCodec
import SwitchboardCore
import Testing

/// Before its `CONNECT` frame a connection may send `limits.max-header-bytes` plus a margin:
/// the frame decoders held up to a whole frame of `limits.max-frame-bytes` (and the WebSocket
/// decoder as much again) for the connect timeout, from a client that had proven nothing.
@Suite("Input before CONNECT")
struct PreConnectInputLimitTests {
    /// A client's WebSocket frame as it comes off the socket: masked, minimal length encoding.
    static func clientFrame(_ payload: ByteBuffer, opcode: UInt8 = 0x1, fin: Bool = true) -> ByteBuffer {
        var out = ByteBuffer()
        out.writeInteger((fin ? 0x80 : 0) | opcode, as: UInt8.self)
        let length = payload.readableBytes
        if length < 126 {
            out.writeInteger(0x80 | UInt8(length), as: UInt8.self)
        } else if length <= 0xFFFF {
            out.writeInteger(0x80 | 126, as: UInt8.self)
            out.writeInteger(UInt16(length), as: UInt16.self)
        } else {
            out.writeInteger(0x80 | 127, as: UInt8.self)
            out.writeInteger(UInt64(length), as: UInt64.self)
        }
        let key: [UInt8] = [0x11, 0x22, 0x33, 0x44]
        out.writeBytes(key)
        for (index, byte) in payload.readableBytesView.enumerated() { out.writeInteger(byte ^ key[index % 4], as: UInt8.self) }
        return out
    }

    static func stomp(_ command: STOMPCommand, _ headers: STOMPHeaders, body: String = "") -> ByteBuffer {
        STOMPFrameEncoder.encode(STOMPFrame(command, headers: headers, body: body), escapeHeaders: true)
    }

    /// A connection as the listener sets it up after the upgrade, reading raw bytes.
    struct Connection {
        let gateway = TestGateway()
        let client: TestClient
        let limit: PreConnectInputLimit

        init() throws {
            client = try gateway.client()
            limit = PreConnectInputLimit(maxHeaderBytes: gateway.services.configuration.decoderLimits.maxHeaderBytes)
            let sync = client.channel.pipeline.syncOperations
            try sync.addHandler(limit, position: .first)
            try sync.addHandler(ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1 << 20)), position: .after(limit))
        }

        func write(_ bytes: ByteBuffer) throws {
            try client.channel.writeInbound(bytes)
            client.loop.run()
        }

        var limitInPipeline: Bool { (try? client.channel.pipeline.syncOperations.context(handler: limit)) != nil }
    }

    @Test func aFrameThatDoesNotEndBeforeCONNECTIsCutAtTheBudget() throws {
        let connection = try Connection()
        defer { connection.gateway.shutdown() }
        // A SEND with no end, in WebSocket frames of 8 KiB: without the limit, nothing was
        // answered until the frame reached limits.max-frame-bytes (256 KiB).
        let head = Self.stomp(.send, ["destination": "/topic/a"], body: "")
        var piece = ByteBuffer(repeating: 0x61, count: 8 * 1_024)
        var first = head
        first.moveWriterIndex(to: first.writerIndex - 1)  // no NUL
        try connection.write(Self.clientFrame(first, fin: false))
        var sent = first.readableBytes
        while connection.client.channel.isActive, sent < 200 * 1_024 {
            try connection.write(Self.clientFrame(piece, opcode: 0x0, fin: false))
            sent += piece.readableBytes
        }
        let error = try expectErrorThenClose(try connection.client.read(), code: 1008)
        #expect(error.headers["message"] == PreConnectInputExceeded(limit: connection.limit.budget).description)
        #expect(sent <= connection.limit.budget + piece.readableBytes + 64, "cut within one read of the budget: \(sent)")
        // What the client sends after it is dropped unread.
        try connection.write(Self.clientFrame(piece, opcode: 0x0, fin: false))
        piece.clear()
    }

    @Test func afterCONNECTTheLimitLeavesAndFramesUpToTheSessionsLimitsPass() throws {
        let connection = try Connection()
        defer { connection.gateway.shutdown() }
        // CONNECT and a SEND larger than the budget in one read.
        var bytes = Self.clientFrame(Self.stomp(.connect, ["accept-version": "1.2", "host": "localhost"]))
        var subscribe = Self.clientFrame(Self.stomp(.subscribe, ["destination": "/topic/a", "id": "0", "receipt": "s"]))
        bytes.writeBuffer(&subscribe)
        var send = Self.clientFrame(Self.stomp(.send, ["destination": "/topic/a"], body: String(repeating: "b", count: 100 * 1_024)))
        bytes.writeBuffer(&send)
        try connection.write(bytes)
        #expect(!connection.limitInPipeline)
        let frames = try connection.client.frames()
        #expect(frames.map(\.command) == [.connected, .receipt, .message])
        #expect(frames.last?.body.readableBytes == 100 * 1_024)
    }

    @Test func aCONNECTInPiecesWithinTheBudgetIsRead() throws {
        let connection = try Connection()
        defer { connection.gateway.shutdown() }
        var headers: STOMPHeaders = ["accept-version": "1.2", "host": "localhost"]
        for index in 0..<7 { headers.add("padding-\(index)", String(repeating: "p", count: 7_000)) }
        let connect = Self.stomp(.connect, headers)
        var rest = connect
        var opcode: UInt8 = 0x1
        while rest.readableBytes > 0 {
            let piece = rest.readSlice(length: min(1_000, rest.readableBytes))!
            try connection.write(Self.clientFrame(piece, opcode: opcode, fin: rest.readableBytes == 0))
            opcode = 0x0
        }
        #expect(try connection.client.frames().map(\.command) == [.connected])
        #expect(!connection.limitInPipeline)
    }
}
