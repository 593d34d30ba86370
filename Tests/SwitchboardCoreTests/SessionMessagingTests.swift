import NIOCore
import NIOWebSocket
import STOMPCodec
import SwitchboardCore
import SwitchboardWire
import Testing

@Suite("Session: SUBSCRIBE, SEND, ACK")
struct SessionMessagingTests {
    @Test("SUBSCRIBE + SEND to a topic delivers a MESSAGE with the right headers")
    func subscribeAndSend() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.subscribe("/topic/chat", id: "sub-1", receipt: "s1")
        #expect(try c.frames().map { $0.headers["receipt-id"] } == ["s1"])
        try c.send(
            .send,
            [
                "destination": "/topic/chat", "content-type": "text/plain", "x-user": "a:b", "x-user": "dup",
                "message-id": "forged", "receipt": "p1",
            ], body: "hello")
        let out = try c.read()
        try #require(out.count == 2, "\(out)")
        // The in-memory engine delivers at once, but the RECEIPT goes first: the MESSAGE was
        // caused by the SEND.
        #expect(out[0].frame?.command == .receipt)
        #expect(out[0].frame?.headers["receipt-id"] == "p1")
        guard case .frame(let msg, let opcode) = out[1] else { Issue.record("\(out)"); return }
        #expect(opcode == .text)
        #expect(msg.command == .message)
        #expect(msg.headers["destination"] == "/topic/chat")
        #expect(msg.headers["subscription"] == "sub-1")
        #expect(msg.headers["message-id"]?.hasPrefix("t-") == true)
        #expect(msg.headers["message-id"] != "forged")
        #expect(msg.headers["content-type"] == "text/plain")
        #expect(msg.headers["x-user"] == "a:b")
        #expect(msg.headers["content-length"] == "5")
        #expect(msg.headers["ack"] == nil)
        #expect(msg.headers["receipt"] == nil)
        #expect(msg.bodyString == "hello")
    }

    @Test("each message gets a new message-id; binary bodies go as binary frames")
    func messageIDsAndBinary() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.subscribe("/topic/b")
        var body = ByteBuffer(string: "SEND\ndestination:/topic/b\ncontent-length:3\n\n")
        body.writeBytes([0xFF, 0x00, 0xFE, 0x00])
        try c.sendWS(TestClient.wsFrame(body, opcode: .binary))
        try c.send(.send, ["destination": "/topic/b"], body: "text")
        let out = try c.read()
        try #require(out.count == 2, "\(out)")
        guard case .frame(let first, let op1) = out[0], case .frame(let second, let op2) = out[1] else { Issue.record("\(out)"); return }
        #expect(op1 == .binary && op2 == .text)
        #expect(Array(first.body.readableBytesView) == [0xFF, 0x00, 0xFE])
        #expect(first.headers["message-id"] != second.headers["message-id"])
    }

    @Test(
        "ack header present for client modes, absent for auto",
        arguments: [
            ("client", true), ("client-individual", true), ("auto", false),
        ])
    func ackHeader(_ mode: String, _ present: Bool) throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.subscribe("/topic/a", id: "7", ack: mode)
        try c.send(.send, ["destination": "/topic/a"], body: "x")
        let msg = try #require(try c.frames().first)
        if present {
            let id = try #require(msg.headers["message-id"])
            #expect(msg.headers["ack"] == id + ".7")
        } else {
            #expect(msg.headers["ack"] == nil)
        }
    }

    @Test("an invalid ack mode is an ERROR (client-individual is not 1.0)")
    func invalidAckMode() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect(acceptVersion: "1.0")
        try c.subscribe("/topic/a", ack: "client-individual", escape: false)
        let error = try expectErrorThenClose(try c.read())
        #expect(error.headers["message"] == "invalid ack mode 'client-individual' for STOMP 1.0")
    }

    @Test("a bad frame with a receipt gets an ERROR with receipt-id")
    func errorWithReceiptID() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.send(.send, ["receipt": "r-77"], body: "no destination")
        let error = try expectErrorThenClose(try c.read())
        #expect(error.headers["receipt-id"] == "r-77")
        #expect(error.headers["message"] == "SEND requires a destination header")
        #expect(error.headers["content-type"] == "text/plain")
        #expect(!c.isActive)
    }

    @Test("SUBSCRIBE without id is an ERROR in 1.1 and 1.2", arguments: ["1.1", "1.2"])
    func subscribeNeedsID(_ version: String) throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect(acceptVersion: version)
        try c.subscribe("/topic/a", id: nil)
        let error = try expectErrorThenClose(try c.read())
        #expect(error.headers["message"] == "SUBSCRIBE requires an id header in STOMP \(version)")
        #expect(!gw.hub.hasSubscribers(for: "/topic/a"))
    }

    @Test("STOMP 1.0: SUBSCRIBE without id uses the destination; headers are not escaped")
    func stomp10Subscribe() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect(acceptVersion: nil)
        try c.subscribe("/topic/a.b", id: nil, escape: false)
        // In 1.0 a backslash is literal: "\c" is not a colon and not an error.
        try c.send(.send, ["destination": "/topic/a.b", "x": "1\\c2:3"], body: "ten", escape: false)
        let msg = try #require(try c.frames().first)
        #expect(msg.headers["subscription"] == "/topic/a.b")
        #expect(msg.headers["x"] == "1\\c2:3")
        try c.send(.unsubscribe, ["destination": "/topic/a.b", "receipt": "u"], escape: false)
        #expect(try c.frames().map(\.command) == [.receipt])
        #expect(!gw.hub.hasSubscribers(for: "/topic/a.b"))
    }

    /// STOMP 1.0's UNSUBSCRIBE by destination named only a subscription made without id: one
    /// made with an id went on receiving, after a RECEIPT that said it was gone.
    @Test("STOMP 1.0: UNSUBSCRIBE by destination ends its subscriptions, with an id or without")
    func stomp10UnsubscribeByDestination() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect(acceptVersion: "1.0")
        try c.subscribe("/topic/a", id: "s1", escape: false)
        try c.subscribe("/topic/a", id: nil, escape: false)
        try c.subscribe("/topic/b", id: "s2", escape: false)
        try c.send(.unsubscribe, ["destination": "/topic/a", "receipt": "u"], escape: false)
        #expect(try c.frames().map(\.command) == [.receipt])
        #expect(!gw.hub.hasSubscribers(for: "/topic/a"))
        #expect(gw.hub.hasSubscribers(for: "/topic/b"))
        // Both names are free again.
        try c.subscribe("/topic/a", id: "s1", escape: false)
        try c.subscribe("/topic/a", id: nil, escape: false)
        try c.send(.send, ["destination": "/topic/a"], body: "x", escape: false)
        #expect(try c.frames().map { $0.headers["subscription"] ?? "" }.sorted() == ["/topic/a", "s1"])
    }

    @Test("NACK in STOMP 1.0 is an ERROR")
    func nack10() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect(acceptVersion: "1.0")
        try c.send(.nack, ["message-id": "m", "receipt": "n"], escape: false)
        let error = try expectErrorThenClose(try c.read())
        #expect(error.headers["message"] == "NACK is not supported in STOMP 1.0")
        #expect(error.headers["receipt-id"] == "n")
    }

    @Test(
        "ACK/NACK header rules per version",
        arguments: [
            ("1.2", STOMPCommand.ack, ["id": "x"], true),
            ("1.2", .nack, ["id": "x"], true),
            ("1.2", .ack, ["message-id": "m", "subscription": "s"], false),
            ("1.1", .ack, ["message-id": "m", "subscription": "s"], true),
            ("1.1", .nack, ["message-id": "m", "subscription": "s"], true),
            ("1.1", .ack, ["message-id": "m"], false),
            ("1.1", .ack, ["id": "x"], false),
            ("1.0", .ack, ["message-id": "m"], true),
            ("1.0", .ack, ["id": "x"], false),
        ] as [(String, STOMPCommand, STOMPHeaders, Bool)])
    func ackRules(_ version: String, _ command: STOMPCommand, _ headers: STOMPHeaders, _ ok: Bool) throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect(acceptVersion: version)
        var h = headers
        h.add("receipt", "a1")
        try c.send(command, h, escape: version != "1.0")
        let out = try c.read()
        if ok {
            #expect(out.count == 1 && out[0].frame?.command == .receipt && out[0].frame?.headers["receipt-id"] == "a1", "\(out)")
            #expect(c.isActive)
        } else {
            let error = try expectErrorThenClose(out)
            #expect(error.headers["message"]?.contains("requires") == true)
        }
    }

    @Test("SEND to /app with no route is an ERROR naming the destination")
    func appWithoutRoute() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.send(.send, ["destination": "/app/greet"], body: "x")
        let error = try expectErrorThenClose(try c.read())
        #expect(error.headers["message"] == "no route for application destination /app/greet")
    }

    @Test(
        "SEND or SUBSCRIBE outside the allowed prefixes is an ERROR",
        arguments: [
            (STOMPCommand.send, "/queue/x", "destination /queue/x is not allowed: SEND to /topic/, /app/"),
            (.subscribe, "/queue/x", "destination /queue/x is not allowed: SUBSCRIBE to /topic/"),
            (.subscribe, "/app/x", "cannot SUBSCRIBE to application destination /app/x"),
            (.send, "/topic/*", "cannot SEND to wildcard destination /topic/*"),
            (.subscribe, "/topic/a*", "invalid wildcard in '/topic/a*': '*' and '**' must be whole segments and '**' must be last"),
            // A CR (escaped as \r in 1.2) would reach subscribers changed (a space).
            (.send, "/topic/a\rb", "SEND destination must not contain control characters"),
            (.subscribe, "/topic/a\u{1}b", "SUBSCRIBE destination must not contain control characters"),
            (.send, "/topic/" + String(repeating: "x", count: 1018), "SEND destination must be at most 1024 bytes"),
            (.subscribe, "/topic/" + String(repeating: "é", count: 509), "SUBSCRIBE destination must be at most 1024 bytes"),
        ] as [(STOMPCommand, String, String)])
    func disallowedDestinations(_ command: STOMPCommand, _ destination: String, _ message: String) throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.send(command, ["destination": destination, "id": "1"])
        let error = try expectErrorThenClose(try c.read())
        #expect(error.headers["message"] == message)
    }

    @Test("wildcard subscriptions receive matching topics; UNSUBSCRIBE stops delivery")
    func wildcardAndUnsubscribe() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.subscribe("/topic/stock.*", id: "w")
        try c.subscribe("/topic/stock.AAPL", id: "e")
        try c.send(.send, ["destination": "/topic/stock.AAPL"], body: "1")
        try c.send(.send, ["destination": "/topic/stock.US.AAPL"], body: "2")
        let got = try c.frames()
        #expect(Set(got.compactMap { $0.headers["subscription"] }) == ["w", "e"])
        #expect(got.count == 2)
        try c.send(.unsubscribe, ["id": "w"])
        try c.send(.send, ["destination": "/topic/stock.AAPL"], body: "3")
        #expect(try c.frames().map { $0.headers["subscription"] } == ["e"])
    }

    @Test("a duplicate subscription id is an ERROR")
    func duplicateSubscriptionID() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.subscribe("/topic/a", id: "1")
        try c.subscribe("/topic/b", id: "1")
        let error = try expectErrorThenClose(try c.read())
        #expect(error.headers["message"] == "subscription id '1' is already in use")
    }

    @Test("STOMP 1.0: a second SUBSCRIBE to a destination without id names the destination, not an id never sent")
    func duplicateSubscriptionWithoutIDInStomp10() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect(acceptVersion: "1.0")
        try c.send(.subscribe, ["destination": "/topic/a"])
        try c.send(.subscribe, ["destination": "/topic/a"])
        let error = try expectErrorThenClose(try c.read())
        #expect(error.headers["message"] == "already subscribed to /topic/a (a subscription without id is named by its destination)")
    }

    @Test("two sessions: one fails, the other still receives")
    func isolation() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let a = try gw.client(), b = try gw.client()
        try a.connect()
        try b.connect()
        try a.subscribe("/topic/room", id: "a")
        try b.subscribe("/topic/room", id: "b")
        try a.sendRaw("SEND\nbad\\q:1\n\n\u{0}")
        try expectErrorThenClose(try a.read())
        #expect(!a.isActive)
        try b.send(.send, ["destination": "/topic/room"], body: "still here")
        let got = try b.frames()
        #expect(got.map(\.bodyString) == ["still here"])
        #expect(got.first?.headers["subscription"] == "b")
        #expect(try a.read().isEmpty)
        #expect(gw.services.stats.sessionsConnected.load() == 1)
    }

    @Test("a message fans out to every subscribed session")
    func fanOut() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let clients = try (0..<3).map { _ in try gw.client() }
        for (i, c) in clients.enumerated() {
            try c.connect()
            try c.subscribe(i == 2 ? "/topic/**" : "/topic/news", id: "s\(i)")
        }
        try clients[0].send(.send, ["destination": "/topic/news"], body: "flash")
        for (i, c) in clients.enumerated() {
            let got = try c.frames()
            #expect(got.map(\.bodyString) == ["flash"], "client \(i)")
            #expect(got.first?.headers["subscription"] == "s\(i)")
        }
    }

    /// Raw buffers the server wrote to `c` since the last read, each parsed into STOMP frames.
    func rawWrites(_ c: TestClient) throws -> [[STOMPFrame]] {
        c.loop.run()
        var writes: [[STOMPFrame]] = []
        while var bytes = try c.channel.readOutbound(as: ByteBuffer.self) {
            var frames: [STOMPFrame] = []
            while bytes.readableBytes > 0 {
                _ = bytes.readInteger(as: UInt8.self)
                let second = bytes.readInteger(as: UInt8.self)
                let length = Int(try #require(second))
                #expect(length < 126, "short frames in this test")
                let slice = bytes.readSlice(length: length)
                var payload = try #require(slice)
                let frame = try c.decoder.decodeFrame(&payload)
                frames.append(try #require(frame))
            }
            writes.append(frames)
        }
        return writes
    }

    @Test("several messages in one pass reach a subscriber as one write, in order")
    func messagesOfOnePassAreOneWrite() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let sub = try gw.client()
        let pub = try gw.client()
        try sub.connect()
        try pub.connect()
        try sub.subscribe("/topic/x", id: "a")
        let three = (1...3).map { STOMPFrameEncoder.encode(STOMPFrame(.send, headers: ["destination": "/topic/x"], body: "m\($0)"), escapeHeaders: true) }
        var one = ByteBuffer()
        for var f in three { one.writeBuffer(&f) }
        try pub.sendWS(TestClient.wsFrame(one))
        let writes = try rawWrites(sub)
        #expect(writes.count == 1, "one write for the pass: \(writes.map { $0.map(\.bodyString) })")
        #expect(writes.flatMap { $0 }.map(\.bodyString) == ["m1", "m2", "m3"])
    }

    @Test("a control frame after deliveries of the same pass goes out after them")
    func controlFramesKeepTheirPlaceAfterDeliveries() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.subscribe("/topic/x", id: "a")
        var batch = ByteBuffer()
        for frame in [
            STOMPFrame(.send, headers: ["destination": "/topic/x"], body: "m1"),
            STOMPFrame(.send, headers: ["destination": "/topic/x"], body: "m2"),
            STOMPFrame(.unsubscribe, headers: ["id": "a", "receipt": "r"]),
        ] {
            var bytes = STOMPFrameEncoder.encode(frame, escapeHeaders: true)
            batch.writeBuffer(&bytes)
        }
        try c.sendWS(TestClient.wsFrame(batch))
        let frames = try rawWrites(c).flatMap { $0 }
        #expect(frames.map(\.command) == [.message, .message, .receipt])
        #expect(frames.prefix(2).map(\.bodyString) == ["m1", "m2"])
    }
}
