import NIOCore
import NIOWebSocket
import STOMPCodec
import SwitchboardCore
import SwitchboardWire
import Testing

@Suite("Session: WebSocket transport and framing")
struct SessionTransportTests {
    @Test("a STOMP frame split over three WebSocket frames (text + continuations)")
    func splitFrame() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.subscribe("/topic/s")
        try c.sendRaw("SEND\ndesti", opcode: .text, fin: false)
        #expect(try c.read().isEmpty)
        try c.sendRaw("nation:/topic/s\nreceipt:r\n\nhel", opcode: .continuation, fin: false)
        #expect(try c.read().isEmpty)
        try c.sendRaw("lo\u{0}", opcode: .continuation, fin: true)
        let out = try c.frames()
        // The RECEIPT comes before the message the SEND caused (causality).
        #expect(out.map(\.command) == [.receipt, .message])
        #expect(out.last?.bodyString == "hello")
    }

    @Test("three STOMP frames in one WebSocket frame are all handled, in order")
    func threeInOne() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.sendRaw("CONNECT\naccept-version:1.2\nhost:h\n\n\u{0}\nSUBSCRIBE\nid:1\ndestination:/topic/x\nreceipt:s\n\n\u{0}SEND\ndestination:/topic/x\n\nm\u{0}")
        let out = try c.frames()
        #expect(out.map(\.command) == [.connected, .receipt, .message])
        #expect(out.last?.bodyString == "m")
    }

    @Test("STOMP 1.0 frames behind a CONNECT that completes later are decoded as 1.0 (no header escaping)")
    func v10BehindAsynchronousConnect() throws {
        let (gw, auth) = DeferredAuthenticator.gateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        c.decoder.escapeHeaders = false
        // A 1.0 header may hold a backslash: `\t` is an undefined escape in 1.1 and 1.2.
        try c.sendRaw(
            "CONNECT\npasscode:tok\n\n\u{0}SUBSCRIBE\ndestination:/topic/v10\nid:0\n\n\u{0}"
                + "SEND\ndestination:/topic/v10\nx-h:a\\tb\nreceipt:r\n\nm\u{0}")
        #expect(try c.read().isEmpty)
        try #require(auth.promises.count == 1)
        auth.promises[0].succeed(SessionIdentity(user: "u"))
        let out = try c.frames()
        #expect(out.map(\.command) == [.connected, .receipt, .message], "\(out)")
        #expect(out.last?.headers["x-h"] == "a\\tb")
        #expect(c.isActive)
    }

    @Test("STOMP 1.2 frames behind a CONNECT that completes later keep their order and escaping")
    func v12BehindAsynchronousConnect() throws {
        let (gw, auth) = DeferredAuthenticator.gateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.sendRaw(
            "CONNECT\naccept-version:1.2\npasscode:tok\n\n\u{0}SUBSCRIBE\ndestination:/topic/v12\nid:0\n\n\u{0}"
                + "SEND\ndestination:/topic/v12\nx-h:a\\cb\n\n1\u{0}SEND\ndestination:/topic/v12\n\n2\u{0}")
        #expect(try c.read().isEmpty)
        try c.sendRaw("SEND\ndestination:/topic/v12\nreceipt:r\n\n3\u{0}")
        try #require(auth.promises.count == 1)
        auth.promises[0].succeed(SessionIdentity(user: "u"))
        let out = try c.frames()
        #expect(out.map(\.command) == [.connected, .message, .message, .receipt, .message], "\(out)")
        #expect(out.filter { $0.command == .message }.map(\.bodyString) == ["1", "2", "3"])
        #expect(out[1].headers["x-h"] == "a:b")
    }

    @Test("heart-beat EOLs on their own produce nothing")
    func heartBeatsOnly() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.sendRaw("\n")
        try c.sendRaw("\r\n\n")
        #expect(try c.read().isEmpty)
        #expect(c.isActive)
    }

    @Test("an unmasked client frame closes the connection with 1002")
    func unmasked() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.sendRaw("CONNECT\naccept-version:1.2\n\n\u{0}", masked: false)
        let out = try c.read()
        try #require(out.count == 1, "\(out)")
        guard case .close(let code, let reason) = out[0] else { Issue.record("\(out)"); return }
        #expect(code == 1002)
        #expect(reason == "client frames must be masked")
        #expect(!c.isActive)
    }

    @Test("a decode error becomes an ERROR naming the escape, then close")
    func undefinedEscape() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.sendRaw("SEND\ndestination:/topic/a\\tb\n\n\u{0}")
        let error = try expectErrorThenClose(try c.read())
        #expect(error.headers["message"] == "undefined escape sequence '\\t' in header")
        #expect(error.bodyString.contains("\\t"))
        #expect(!c.isActive)
    }

    @Test("decoder limits from the configuration apply")
    func limits() throws {
        var config = SessionConfiguration()
        config.decoderLimits = STOMPDecoderLimits(maxFrameBytes: 200, maxHeaders: 4, maxHeaderLineBytes: 100)
        let gw = TestGateway(configuration: config)
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.send(.send, ["destination": "/topic/a"], body: String(repeating: "z", count: 500))
        // 1009: message too big (RFC 6455 §7.4.1).
        let error = try expectErrorThenClose(try c.read(), code: 1009)
        #expect(error.headers["message"] == "frame too large (limit 200 bytes)")
    }

    @Test("after negotiating 1.0 the inbound decoder stops unescaping")
    func escapingSwitchedOff() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect(acceptVersion: "1.0")
        try c.sendRaw("SUBSCRIBE\ndestination:/topic/e\n\n\u{0}")
        try c.sendRaw("SEND\ndestination:/topic/e\nh:\\t\n\nx\u{0}")  // "\t" would be fatal in 1.1+
        let msg = try #require(try c.frames().first)
        #expect(msg.headers["h"] == "\\t")
    }

    @Test("1.1+ sessions get escaped header values in MESSAGE frames")
    func escapedOutbound() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect(acceptVersion: "1.1")
        try c.subscribe("/topic/e")
        try c.sendRaw("SEND\ndestination:/topic/e\nh:a\\cb\\nc\\\\\n\nx\u{0}")
        let raw = try c.readWebSocketFrames().last
        let text = String(buffer: try #require(raw).data)
        #expect(text.contains("\nh:a\\cb\\nc\\\\\n"), "\(text)")
    }
}

@Suite("Session: transactions")
struct SessionTransactionTests {
    @Test("BEGIN / SEND(tx) / COMMIT delivers in order on COMMIT")
    func commit() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.subscribe("/topic/t")
        try c.send(.begin, ["transaction": "tx1", "receipt": "b"])
        for i in 1...3 {
            try c.send(.send, ["destination": "/topic/t", "transaction": "tx1", "receipt": "s\(i)"], body: "m\(i)")
        }
        let before = try c.frames()
        // Nothing delivered before COMMIT, and the SENDs' receipts wait for it too.
        #expect(before.map(\.command) == [.receipt])
        #expect(before.map { $0.headers["receipt-id"] } == ["b"])
        try c.send(.commit, ["transaction": "tx1", "receipt": "c"])
        let after = try c.frames()
        // Each SEND's receipt once it ran, before the message it caused; the COMMIT's last.
        #expect(after.map(\.command) == [.receipt, .message, .receipt, .message, .receipt, .message, .receipt])
        #expect(after.filter { $0.command == .message }.map(\.bodyString) == ["m1", "m2", "m3"])
        #expect(after.filter { $0.command == .message }.allSatisfy { $0.headers["transaction"] == nil })
        #expect(after.filter { $0.command == .receipt }.map { $0.headers["receipt-id"] } == ["s1", "s2", "s3", "c"])
    }

    @Test("ABORT drops the buffered frames")
    func abort() throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        try c.subscribe("/topic/t")
        try c.send(.begin, ["transaction": "tx"])
        try c.send(.send, ["destination": "/topic/t", "transaction": "tx"], body: "dropped")
        try c.send(.abort, ["transaction": "tx", "receipt": "a"])
        #expect(try c.frames().map(\.command) == [.receipt])
        try c.send(.send, ["destination": "/topic/t"], body: "live")
        #expect(try c.frames().map(\.bodyString) == ["live"])
        // The transaction is gone.
        try c.send(.commit, ["transaction": "tx"])
        let error = try expectErrorThenClose(try c.read())
        #expect(error.headers["message"] == "unknown transaction 'tx'")
    }

    @Test(
        "transaction errors",
        arguments: [
            ([(STOMPCommand.begin, STOMPHeaders([("transaction", "x")])), (.begin, STOMPHeaders([("transaction", "x")]))], "transaction 'x' is already open"),
            ([(.send, STOMPHeaders([("destination", "/topic/a"), ("transaction", "nope")]))], "unknown transaction 'nope'"),
            ([(.begin, STOMPHeaders())], "BEGIN requires a transaction header"),
            ([(.commit, STOMPHeaders())], "COMMIT requires a transaction header"),
            ([(.abort, STOMPHeaders([("transaction", "zz")]))], "unknown transaction 'zz'"),
        ] as [([(STOMPCommand, STOMPHeaders)], String)])
    func errors(_ frames: [(STOMPCommand, STOMPHeaders)], _ message: String) throws {
        let gw = TestGateway()
        defer { gw.shutdown() }
        let c = try gw.client()
        try c.connect()
        for (command, headers) in frames { try c.send(command, headers) }
        let error = try expectErrorThenClose(try c.read())
        #expect(error.headers["message"] == message)
    }
}

/// Authenticates when the test says so: each CONNECT's promise waits in ``promises``.
final class DeferredAuthenticator: SessionAuthenticator, @unchecked Sendable {
    /// Confined to the embedded loop's (the test's) thread.
    var promises: [EventLoopPromise<SessionIdentity>] = []

    /// A gateway whose sessions authenticate with a new ``DeferredAuthenticator``.
    static func gateway() -> (TestGateway, DeferredAuthenticator) {
        let auth = DeferredAuthenticator()
        var config = SessionConfiguration()
        config.authenticator = auth
        return (TestGateway(configuration: config), auth)
    }

    func authenticate(token: String, on eventLoop: any EventLoop) -> EventLoopFuture<SessionIdentity> {
        let promise = eventLoop.makePromise(of: SessionIdentity.self)
        promises.append(promise)
        return promise.futureResult
    }
}
