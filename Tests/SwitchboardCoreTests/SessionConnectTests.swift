import NIOCore
import NIOWebSocket
import STOMPCodec
import SwitchboardCore
import SwitchboardWire
import Testing

@Suite("Session: CONNECT and lifecycle")
struct SessionConnectTests {
    @Test(
        "CONNECT gets CONNECTED with version, server, session and heart-beat",
        arguments: [
            ("1.2", "1.2"), ("1.0,1.1", "1.1"), ("1.1,1.2", "1.2"), (nil, "1.0"), ("1.0", "1.0"),
        ] as [(String?, String)])
    func connected(_ accept: String?, _ version: String) throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        let frame = try c.connect(acceptVersion: accept)
        #expect(frame.headers["version"] == version)
        #expect(frame.headers["server"] == "switchboard/0.1")
        #expect(frame.headers["session"] == c.session.sessionID)
        #expect(frame.headers["session"]?.hasPrefix("t-s-") == true)
        // The client asked for no heart-beats: none are in force either way.
        #expect(frame.headers["heart-beat"] == "0,0")
        #expect(c.session.version.rawValue == version)
        #expect(c.isActive)
    }

    @Test("STOMP is accepted like CONNECT and the configured heart-beat is announced")
    func stompCommand() throws {
        var config = SessionConfiguration()
        config.heartBeat = STOMPHeartBeat(send: 0, receive: 2_500)
        config.serverName = "test-server/9"
        let gw = TestGateway(configuration: config)
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.send(.stomp, ["accept-version": "1.2", "host": "h", "heart-beat": "1000,1000", "receipt": "c1"])
        let out = try c.frames()
        #expect(out.map(\.command) == [.connected, .receipt])
        #expect(out.first?.headers["heart-beat"] == "0,2500")
        #expect(out.first?.headers["server"] == "test-server/9")
        #expect(out.last?.headers["receipt-id"] == "c1")
    }

    @Test("two sessions get different session ids")
    func distinctSessions() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let a = try gw.client(), b = try gw.client()
        let ca = try a.connect(), cb = try b.connect()
        #expect(ca.headers["session"] != cb.headers["session"])
    }

    @Test("no common version: ERROR with a version header, then close")
    func noCommonVersion() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.send(.connect, ["accept-version": "2.0,3.1", "host": "h", "receipt": "r-9"])
        let error = try expectErrorThenClose(try c.read())
        #expect(error.headers["version"] == "1.0,1.1,1.2")
        #expect(error.headers["receipt-id"] == "r-9")
        #expect(error.headers["message"]?.contains("2.0,3.1") == true)
        #expect(!c.isActive)
    }

    @Test("a restricted version set is announced in the ERROR")
    func restrictedVersions() throws {
        var config = SessionConfiguration()
        config.supportedVersions = [.v1_2]
        let gw = TestGateway(configuration: config)
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.send(.connect, ["host": "h"])  // no accept-version: 1.0 only
        let error = try expectErrorThenClose(try c.read())
        #expect(error.headers["version"] == "1.2")
    }

    @Test("a malformed heart-beat header is an ERROR")
    func badHeartBeat() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.send(.connect, ["accept-version": "1.2", "heart-beat": "fast"])
        let error = try expectErrorThenClose(try c.read())
        #expect(error.headers["message"]?.contains("heart-beat") == true)
    }

    /// A STOMP 1.0 client (no accept-version) whose CONNECT fails gets its ERROR unescaped, as
    /// 1.0 headers are (before, `\c` for the colon in the message, shown literally by 1.0
    /// clients); a 1.2 client gets it escaped.
    @Test("a failed CONNECT's ERROR is escaped as the agreed version's headers", arguments: [nil, "1.2"] as [String?])
    func failedConnectErrorEscaping(_ acceptVersion: String?) throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        var headers: STOMPHeaders = ["host": "h", "heart-beat": "x"]
        if let acceptVersion { headers.add("accept-version", acceptVersion) }
        try c.send(.connect, headers, escape: false)
        let raw = try c.readWebSocketFrames().compactMap { String(buffer: $0.data) }.joined()
        let expected = "message:malformed heart-beat header 'x'" + (acceptVersion == nil ? ":" : "\\c") + " expected"
        #expect(raw.hasPrefix("ERROR\n"), "\(raw)")
        #expect(raw.contains(expected), "\(raw)")
    }

    @Test("a frame before CONNECT is an ERROR")
    func frameBeforeConnect() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.send(.send, ["destination": "/topic/a", "receipt": "x"])
        let error = try expectErrorThenClose(try c.read())
        #expect(error.headers["message"] == "expected CONNECT or STOMP frame, got SEND")
        #expect(error.headers["receipt-id"] == "x")
    }

    @Test("a second CONNECT and a server frame from the client are errors", arguments: [STOMPCommand.connect, .message, .connected])
    func illegalAfterConnect(_ command: STOMPCommand) throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.send(command, ["accept-version": "1.2"])
        let error = try expectErrorThenClose(try c.read())
        #expect(error.headers["message"]?.isEmpty == false)
    }

    @Test("DISCONNECT with receipt: RECEIPT, then a close frame")
    func disconnect() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.subscribe("/topic/a")
        #expect(gw.hub.hasSubscribers(for: "/topic/a"))
        try c.send(.disconnect, ["receipt": "bye"])
        let out = try c.read()
        try #require(out.count == 2, "\(out)")
        #expect(out[0].frame?.command == .receipt)
        #expect(out[0].frame?.headers["receipt-id"] == "bye")
        #expect(out[1].closeCode == 1000)
        #expect(!c.isActive)
        #expect(!gw.hub.hasSubscribers(for: "/topic/a"), "subscriptions are dropped on close")
    }

    @Test("the client's close frame is echoed and the channel closed")
    func clientClose() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        var data = ByteBuffer()
        data.writeInteger(UInt16(1001))
        try c.sendWS(TestClient.wsFrame(data, opcode: .connectionClose))
        let out = try c.read()
        #expect(out.map(\.closeCode) == [1001])
        #expect(!c.isActive)
    }

    @Test("a ping is answered with a pong carrying the same data")
    func ping() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.sendWS(TestClient.wsFrame(ByteBuffer(string: "abc"), opcode: .ping))
        let out = try c.read()
        try #require(out.count == 1)
        guard case .other(let pong) = out[0] else { Issue.record("\(out)"); return }
        #expect(pong.opcode == .pong)
        #expect(String(buffer: pong.data) == "abc")
    }

    /// A read full of pings is answered with one pong, for the latest (RFC 6455 §5.5.3): each
    /// was answered with a flush of its own, a system call per 6-byte ping.
    @Test("the pings of one read get one pong, the latest's")
    func pingsOfOneReadGetOnePong() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        for i in 0..<100 {
            c.channel.pipeline.fireChannelRead(NIOAny(TestClient.wsFrame(ByteBuffer(string: "p\(i)"), opcode: .ping)))
        }
        c.channel.pipeline.fireChannelReadComplete()
        let out = try c.read()
        try #require(out.count == 1, "\(out.count) frames")
        guard case .other(let pong) = out[0] else { Issue.record("\(out)"); return }
        #expect(pong.opcode == .pong)
        #expect(String(buffer: pong.data) == "p99")
    }
}
