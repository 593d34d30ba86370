import NIOCore
import STOMPCodec
import SwitchboardCore
import SwitchboardRoutes
import SwitchboardWire
import Testing

/// The session's protocol rules, driven without a channel: events in, actions out.
@Suite struct SessionStateMachineTests {
    typealias Machine = STOMPSessionStateMachine

    /// A route that never runs here: the machine only asks whether it keeps order.
    struct StubRoute: AppRoute {
        var keepsOrderWhenPipelined: Bool
        var description: String { "stub" }
        func handle(_ message: AppMessage, on eventLoop: any EventLoop) -> EventLoopFuture<[RouteReply]> {
            eventLoop.makeSucceededFuture([])
        }
    }

    /// What the actions did, in a form that is easy to compare.
    enum Out: Equatable {
        case execute(String, step: UInt64)
        case receipt(String)
        case answered(UInt64, receipt: String?)
        case connected(heartBeat: String, receipt: String?)
        case unsubscribe(String)
        case error(String, receiptID: String?)
        case disconnect(receipt: String?)
        case resumeReads
    }

    static func describe(_ c: Machine.Command) -> String {
        switch c {
        case .connect(let token): return "connect(\(token ?? "-"))"
        case .subscribe(let s): return "subscribe(\(s.id) \(s.destination))"
        case .publish(let d, _): return "publish(\(d))"
        case .route(let d, _, _): return "route(\(d))"
        }
    }

    static func machine(_ configure: (inout SessionConfiguration) -> Void = { _ in }) -> Machine {
        var config = SessionConfiguration()
        config.maxFramesPerSecond = 0
        configure(&config)
        var routes = RouteTable()
        routes.add(try! DestinationPattern("/app/serial"), StubRoute(keepsOrderWhenPipelined: false))
        routes.add(try! DestinationPattern("/app/stream"), StubRoute(keepsOrderWhenPipelined: true))
        return Machine(policy: SessionPolicy(configuration: config, routes: routes), sessionID: "s-1", openedAt: 0, tickMs: 100)
    }

    /// Pulls every action.
    static func drain(_ m: inout Machine) -> [Out] {
        var out: [Out] = []
        while let action = m.nextAction() {
            switch action {
            case .execute(let c, let step): out.append(.execute(describe(c), step: step))
            case .sendReceipt(let r): out.append(.receipt(r))
            case .stepAnswered(let step, let r): out.append(.answered(step, receipt: r))
            case .connected(let c): out.append(.connected(heartBeat: c.frame.headers["heart-beat"] ?? "", receipt: c.receipt))
            case .unsubscribe(let ids, let r):
                out.append(contentsOf: ids.map { .unsubscribe($0) })
                if let r { out.append(.receipt(r)) }
            case .close(let close):
                if let f = close.failure {
                    out.append(.error(f.message, receiptID: f.receiptID))
                } else {
                    out.append(.disconnect(receipt: close.receipt))
                }
            case .resumeReads: out.append(.resumeReads)
            }
        }
        return out
    }

    static func frame(_ command: STOMPCommand, _ headers: [(String, String)]) -> STOMPFrame {
        var h = STOMPHeaders()
        for (n, v) in headers { h.add(n, v) }
        return STOMPFrame(command, headers: h)
    }

    static func send(_ destination: String, receipt: String? = nil, tx: String? = nil) -> STOMPFrame {
        var h: [(String, String)] = [("destination", destination)]
        if let receipt { h.append(("receipt", receipt)) }
        if let tx { h.append(("transaction", tx)) }
        return frame(.send, h)
    }

    /// A connected machine (CONNECT step answered).
    static func connected(_ configure: (inout SessionConfiguration) -> Void = { _ in }) -> Machine {
        var m = machine(configure)
        m.frameReceived(frame(.connect, [("accept-version", "1.2")]), now: .now())
        #expect(drain(&m) == [.execute("connect(-)", step: 1)])
        m.stepCompleted(1, .connected(nil))
        _ = drain(&m)
        #expect(m.phase == .connected)
        return m
    }

    @Test func connectAnswersConnectedThenReceipt() {
        var m = Self.machine()
        m.frameReceived(Self.frame(.connect, [("accept-version", "1.1,1.2"), ("receipt", "c"), ("heart-beat", "1000,2000")]), now: .now())
        #expect(Self.drain(&m) == [.execute("connect(-)", step: 1)])
        #expect(m.phase == .awaitingConnect)
        m.stepCompleted(1, .connected(nil))
        #expect(Self.drain(&m) == [.connected(heartBeat: "10000,10000", receipt: "c")])
        #expect(m.version == .v1_2)
    }

    @Test func connectedHeartBeatIsWhatIsInForce() {
        for (client, expected) in [("0,0", "0,0"), ("0,20000", "20000,0"), ("30000,0", "0,30000"), ("5000,5000", "10000,10000")] {
            var m = Self.machine()
            m.frameReceived(Self.frame(.connect, [("accept-version", "1.2"), ("heart-beat", client)]), now: .now())
            _ = Self.drain(&m)
            m.stepCompleted(1, .connected(nil))
            #expect(Self.drain(&m) == [.connected(heartBeat: expected, receipt: nil)], "client \(client)")
        }
    }

    /// A client may ask for any interval up to `Int.max`: the timeout saturates instead of
    /// trapping (a `CONNECT` with `heart-beat: 4611686018427387904,0` crashed the process), and
    /// CONNECTED states the clamped interval in force.
    @Test(arguments: [(2.0, "9223372036854775807,9223372036854775807"), (2.0, "4611686018427387904,0"), (.infinity, "2147483648,2147483648")])
    func absurdHeartBeatsAreClampedNotATrap(tolerance: Double, client: String) {
        var m = Self.machine { $0.heartBeatTolerance = tolerance }
        m.frameReceived(Self.frame(.connect, [("accept-version", "1.2"), ("heart-beat", client)]), now: .now())
        _ = Self.drain(&m)
        m.stepCompleted(1, .connected(nil))
        let beats = client.split(separator: ",").map { Int($0)! }
        let expected = "\(beats[1] > 0 ? "2147483647" : "0"),\(beats[0] > 0 ? "2147483647" : "0")"
        #expect(Self.drain(&m) == [.connected(heartBeat: expected, receipt: nil)])
        m.read(at: 0)
        m.wrote(at: 0)
        // 100 ms ticks: the clamped interval is 21,474,837 ticks; the timeout is tolerance times it.
        #expect(m.tick(1_000, now: .now()) != .closed)
        #expect(m.tick(21_474_837, now: .now()) != .closed)
        let late = m.tick(2 * 21_474_837 + 2, now: .now())
        #expect(tolerance.isFinite ? late == .closed : late != .closed, "an infinite tolerance saturates: never late")
    }

    @Test func framesBeforeConnectAreRefused() {
        var m = Self.machine()
        m.frameReceived(Self.send("/topic/a", receipt: "r"), now: .now())
        #expect(Self.drain(&m) == [.error("expected CONNECT or STOMP frame, got SEND", receiptID: "r")])
        #expect(m.phase == .closed)
        m.frameReceived(Self.frame(.connect, []), now: .now())
        #expect(Self.drain(&m) == [])
    }

    @Test func pipelinedReceiptsGoOutInFrameOrder() {
        var m = Self.connected()
        for r in ["r1", "r2", "r3"] { m.frameReceived(Self.send("/topic/a", receipt: r), now: .now()) }
        #expect(Self.drain(&m) == [.execute("publish(/topic/a)", step: 2), .execute("publish(/topic/a)", step: 3), .execute("publish(/topic/a)", step: 4)])
        m.stepCompleted(4, .success)
        #expect(Self.drain(&m) == [])
        m.stepCompleted(2, .success)
        #expect(Self.drain(&m) == [.answered(2, receipt: "r1")])
        m.stepCompleted(3, .success)
        #expect(Self.drain(&m) == [.answered(3, receipt: "r2"), .answered(4, receipt: "r3")])
        #expect(!m.isBusy)
    }

    @Test func errorComesAfterEarlierReceipts() {
        var m = Self.connected()
        for r in ["r1", "r2", "r3"] { m.frameReceived(Self.send("/app/stream", receipt: r), now: .now()) }
        _ = Self.drain(&m)
        m.stepCompleted(3, .failure(SessionFailure("route for /app/stream failed: boom", kind: .route)))
        m.stepCompleted(4, .success)
        #expect(Self.drain(&m) == [])
        m.stepCompleted(2, .success)
        #expect(Self.drain(&m) == [.answered(2, receipt: "r1"), .error("route for /app/stream failed: boom", receiptID: "r2")])
        #expect(m.phase == .closed)
        m.stepCompleted(4, .success)
        #expect(Self.drain(&m) == [])
    }

    @Test func serialStepHoldsUpLaterFrames() {
        var m = Self.connected()
        m.frameReceived(Self.send("/app/serial", receipt: "w"), now: .now())
        m.frameReceived(Self.send("/topic/a", receipt: "t"), now: .now())
        #expect(Self.drain(&m) == [.execute("route(/app/serial)", step: 2)])
        #expect(m.readsPaused)
        let read = m.readRequested()
        #expect(read == false)
        m.stepCompleted(2, .success)
        #expect(Self.drain(&m) == [.answered(2, receipt: "w"), .execute("publish(/topic/a)", step: 3), .resumeReads])
    }

    /// Frames the client sent while reads were held back (a serial step of 5 s here) are read
    /// at once: the frame-rate limit allows them at the rate over that time. They were counted
    /// all at the moment of the read, and a client within the limit was cut off after any
    /// pause longer than the burst. More than the rate allows is still refused.
    @Test func framesSentWhileReadsWereHeldCountAtTheRateOverThatTime() {
        let t0 = NIODeadline.now()
        for (count, refused) in [(60, false), (80, true)] {
            var m = Self.connected { $0.maxFramesPerSecond = 10 }
            m.frameReceived(Self.send("/app/serial", receipt: "w"), now: t0)
            #expect(Self.drain(&m) == [.execute("route(/app/serial)", step: 2)])
            #expect(m.readRequested(now: t0) == false)
            m.stepCompleted(2, .success)
            #expect(Self.drain(&m) == [.answered(2, receipt: "w"), .resumeReads])
            let resumed = t0 + .seconds(5)
            m.readsResumed(now: resumed)
            // The burst (20: refilled by then) + 10 a second for the 5 s held: 70 frames.
            for i in 0..<count { m.frameReceived(Self.frame(.ack, [("id", "\(i)")]), now: resumed) }
            let out = Self.drain(&m)
            #expect(out.contains { if case .error(let text, _) = $0 { text.hasPrefix("rate limit exceeded") } else { false } } == refused, "\(count): \(out)")
        }
    }

    @Test func nonPipelinableFrameWaitsForThePipeline() {
        var m = Self.connected()
        m.frameReceived(Self.send("/topic/a", receipt: "s"), now: .now())
        m.frameReceived(Self.frame(.subscribe, [("destination", "/topic/b"), ("id", "1"), ("receipt", "sub")]), now: .now())
        m.frameReceived(Self.send("/topic/a", receipt: "s2"), now: .now())
        #expect(Self.drain(&m) == [.execute("publish(/topic/a)", step: 2)])
        m.stepCompleted(2, .success)
        #expect(Self.drain(&m) == [.answered(2, receipt: "s"), .execute("subscribe(1 /topic/b)", step: 3)])
        m.stepCompleted(3, .success)
        #expect(Self.drain(&m) == [.answered(3, receipt: "sub"), .execute("publish(/topic/a)", step: 4)])
    }

    @Test func refusedSendIsAnsweredAfterThePipeline() {
        var m = Self.connected()
        m.frameReceived(Self.send("/topic/a", receipt: "ok"), now: .now())
        m.frameReceived(Self.send("/topic/*", receipt: "bad"), now: .now())
        #expect(Self.drain(&m) == [.execute("publish(/topic/a)", step: 2)])
        m.stepCompleted(2, .success)
        #expect(Self.drain(&m) == [.answered(2, receipt: "ok"), .error("cannot SEND to wildcard destination /topic/*", receiptID: "bad")])
    }

    @Test func disconnectReceiptIsLast() {
        var m = Self.connected()
        m.frameReceived(Self.send("/topic/a", receipt: "s"), now: .now())
        m.frameReceived(Self.frame(.disconnect, [("receipt", "bye")]), now: .now())
        #expect(Self.drain(&m) == [.execute("publish(/topic/a)", step: 2)])
        m.stepCompleted(2, .success)
        #expect(Self.drain(&m) == [.answered(2, receipt: "s"), .disconnect(receipt: "bye")])
        #expect(m.phase == .closed)
    }

    @Test func transactionReplaysWithReceiptsAtCommit() {
        var m = Self.connected()
        m.frameReceived(Self.frame(.begin, [("transaction", "t"), ("receipt", "b")]), now: .now())
        m.frameReceived(Self.send("/topic/a", receipt: "s1", tx: "t"), now: .now())
        m.frameReceived(Self.frame(.ack, [("id", "m1"), ("transaction", "t"), ("receipt", "a1")]), now: .now())
        m.frameReceived(Self.send("/topic/b", receipt: "s2", tx: "t"), now: .now())
        // Nothing of the transaction is answered before COMMIT.
        #expect(Self.drain(&m) == [.receipt("b")])
        m.frameReceived(Self.frame(.commit, [("transaction", "t"), ("receipt", "c")]), now: .now())
        #expect(Self.drain(&m) == [.execute("publish(/topic/a)", step: 2)])
        m.stepCompleted(2, .success)
        #expect(Self.drain(&m) == [.answered(2, receipt: "s1"), .receipt("a1"), .execute("publish(/topic/b)", step: 3)])
        m.stepCompleted(3, .success)
        #expect(Self.drain(&m) == [.answered(3, receipt: "s2"), .receipt("c")])
    }

    /// A frame replayed at COMMIT that fails without a receipt of its own: the ERROR echoes the
    /// COMMIT's (the client waits for that one; it had no receipt-id at all).
    @Test func aFailureInACommittedTransactionEchoesTheCommitsReceipt() {
        var m = Self.connected()
        m.frameReceived(Self.frame(.begin, [("transaction", "t")]), now: .now())
        m.frameReceived(Self.send("/topic/a", receipt: "s1", tx: "t"), now: .now())
        m.frameReceived(Self.send("/topic/b", tx: "t"), now: .now())
        m.frameReceived(Self.frame(.commit, [("transaction", "t"), ("receipt", "c1")]), now: .now())
        #expect(Self.drain(&m) == [.execute("publish(/topic/a)", step: 2), .execute("publish(/topic/b)", step: 3)])
        m.stepCompleted(2, .success)
        #expect(Self.drain(&m) == [.answered(2, receipt: "s1")])
        m.stepCompleted(3, .failure(SessionFailure("publish failed", kind: .route)))
        #expect(Self.drain(&m) == [.error("publish failed", receiptID: "c1")])
        // One with its own receipt echoes that one.
        var n = Self.connected()
        n.frameReceived(Self.frame(.begin, [("transaction", "t")]), now: .now())
        n.frameReceived(Self.send("/topic/a", receipt: "s1", tx: "t"), now: .now())
        n.frameReceived(Self.frame(.commit, [("transaction", "t"), ("receipt", "c1")]), now: .now())
        _ = Self.drain(&n)
        n.stepCompleted(2, .failure(SessionFailure("publish failed", kind: .route)))
        #expect(Self.drain(&n) == [.error("publish failed", receiptID: "s1")])
    }

    @Test func abortedTransactionSendsNoReceiptsOfItsFrames() {
        var m = Self.connected()
        m.frameReceived(Self.frame(.begin, [("transaction", "t")]), now: .now())
        m.frameReceived(Self.send("/topic/a", receipt: "s1", tx: "t"), now: .now())
        m.frameReceived(Self.frame(.abort, [("transaction", "t"), ("receipt", "ab")]), now: .now())
        #expect(Self.drain(&m) == [.receipt("ab")])
        m.frameReceived(Self.frame(.commit, [("transaction", "t")]), now: .now())
        #expect(Self.drain(&m) == [.error("unknown transaction 't'", receiptID: nil)])
    }

    /// A SEND in a transaction is checked when it arrives: before, it was refused only at
    /// COMMIT, after the transaction's earlier SENDs had run (half a transaction applied).
    @Test(arguments: [
        ("/topic/*", "cannot SEND to wildcard destination /topic/*"),
        ("/app/unrouted", "no route for application destination /app/unrouted"),
        ("/queue/x", nil),
    ])
    func aSendThatCannotRunIsRefusedWhenItArrivesInATransaction(destination: String, message: String?) {
        var m = Self.connected()
        m.frameReceived(Self.frame(.begin, [("transaction", "t")]), now: .now())
        m.frameReceived(Self.send("/topic/a", receipt: "s1", tx: "t"), now: .now())
        m.frameReceived(Self.send(destination, receipt: "s2", tx: "t"), now: .now())
        let out = Self.drain(&m)
        #expect(out.count == 1, "\(out)")
        guard case .error(let text, let receiptID) = out.first else {
            Issue.record("expected an ERROR, got \(out)")
            return
        }
        if let message { #expect(text == message) }
        #expect(receiptID == "s2")
        #expect(m.phase == .closed)
        m.frameReceived(Self.frame(.commit, [("transaction", "t")]), now: .now())
        #expect(Self.drain(&m) == [], "nothing of the transaction runs")
    }

    @Test func transactionsHoldAtMostTheirByteLimit() {
        var body = STOMPFrame(.send, headers: ["destination": "/topic/a", "transaction": "t"])
        body.body = ByteBuffer(repeating: 0x61, count: 400)
        // The body's storage + 320 per frame + 32 per header (their texts are short: inline).
        let size = STOMPSessionStateMachine.heldSize(body)
        #expect(size == body.body.storageCapacity + 320 + 2 * 32)
        var m = Self.connected { $0.maxTransactionBytes = 2 * size + 10 }
        m.frameReceived(Self.frame(.begin, [("transaction", "t")]), now: .now())
        m.frameReceived(Self.frame(.begin, [("transaction", "u")]), now: .now())
        m.frameReceived(body, now: .now())
        #expect(Self.drain(&m) == [])
        #expect(m.heldTransactionBytes == size)
        m.frameReceived(Self.frame(.abort, [("transaction", "t")]), now: .now())
        // Aborting gave its bytes back: two more of them fit, in another transaction.
        body.headers.set("transaction", "u")
        m.frameReceived(body, now: .now())
        m.frameReceived(body, now: .now())
        #expect(Self.drain(&m) == [])
        m.frameReceived(body, now: .now())
        #expect(
            Self.drain(&m) == [
                .error("transactions hold too many bytes (limit \(2 * size + 10) bytes per session, open transactions together)", receiptID: nil)
            ])
    }

    /// What a held frame counts is what it keeps alive: the whole buffer its body is a slice
    /// of, and per header its strings (a frame of 62 one-letter headers held about 2 KB and
    /// counted 270 bytes). Frames padded so, held in open transactions, grew a session's memory
    /// far past `limits.max-transaction-bytes`.
    @Test func aHeldFrameCountsWhatItKeepsAlive() {
        var input = ByteBuffer(repeating: 0x61, count: 4_000)
        var padded = STOMPFrame(.send, headers: ["destination": "/topic/a"])
        padded.body = input.readSlice(length: 10)!
        #expect(STOMPSessionStateMachine.heldSize(padded) >= 4_000)
        var many = STOMPFrame(.ack, headers: ["id": "1"])
        for i in 0..<62 { many.headers.add("h\(i)", "") }
        #expect(STOMPSessionStateMachine.heldSize(many) >= 62 * 32)
        let long = String(repeating: "v", count: 100)
        let withLong = STOMPFrame(.ack, headers: ["id": long])
        #expect(STOMPSessionStateMachine.heldSize(withLong) >= 100 + 32 + 32)
    }

    /// Client bytes quoted in an ERROR show their control characters as `\xNN`.
    @Test func controlCharactersQuotedInAnErrorAreShownEscaped() {
        var m = Self.connected()
        m.frameReceived(Self.frame(.commit, [("transaction", "t\u{1}\u{7f}x")]), now: .now())
        #expect(Self.drain(&m) == [.error("unknown transaction 't\\x01\\x7fx'", receiptID: nil)])
    }

    @Test func commitWithoutTransactionHeaderIsAnError() {
        var m = Self.connected()
        m.frameReceived(Self.frame(.commit, [("receipt", "c")]), now: .now())
        #expect(Self.drain(&m) == [.error("COMMIT requires a transaction header", receiptID: "c")])
    }

    /// A SEND that will be refused is not pipelined: its ERROR comes after the receipts of the
    /// SENDs before it, whatever the check it fails.
    @Test(arguments: [
        ("/topic/cafe\u{301}", [("receipt", "bad")]), ("/topic/" + String(repeating: "x", count: 1100), [("receipt", "bad")]),
        ("/topic/a", [("receipt", "bad"), ("idempotency-key", "")]),
    ])
    func aSendThatWillBeRefusedWaitsForTheReceiptsBeforeIt(destination: String, headers: [(String, String)]) {
        var m = Self.connected()
        m.frameReceived(Self.send("/app/stream", receipt: "1"), now: .now())
        #expect(Self.drain(&m) == [.execute("route(/app/stream)", step: 2)])
        m.frameReceived(Self.frame(.send, [("destination", destination)] + headers), now: .now())
        #expect(Self.drain(&m) == [], "not handled while the SEND before it runs")
        m.stepCompleted(2, .success)
        let out = Self.drain(&m)
        #expect(out.first == .answered(2, receipt: "1"))
        #expect(out.count == 2 && { if case .error(_, "bad") = out[1] { true } else { false } }(), "\(out)")
    }

    /// With a broker prefix `/`, a SEND to a user destination was taken for a broker one by
    /// the pipelining check (``SessionPolicy/isPipelinable(_:identity:)`` tried the broker
    /// prefixes first), and its ERROR came before the receipts of the SENDs before it.
    @Test func aSendToAUserDestinationUnderABrokerPrefixSlashIsNotPipelined() {
        var m = Self.connected { $0.brokerPrefixes = ["/"] }
        m.frameReceived(Self.send("/topic/a", receipt: "1"), now: .now())
        #expect(Self.drain(&m) == [.execute("publish(/topic/a)", step: 2)])
        m.frameReceived(Self.frame(.send, [("destination", "/user/queue/x"), ("receipt", "bad")]), now: .now())
        #expect(Self.drain(&m) == [], "not handled while the SEND before it runs")
        m.stepCompleted(2, .success)
        let out = Self.drain(&m)
        #expect(out.first == .answered(2, receipt: "1"))
        #expect(out.count == 2 && { if case .error(_, "bad") = out[1] { true } else { false } }(), "\(out)")
    }

    /// Bytes that cannot be decoded after frames that could (one WebSocket message holding a
    /// SEND and then garbage): the ERROR went out at once, and the SEND in flight lost its
    /// receipt although its backend may have acted. Now it comes after the receipts, in turn.
    @Test func aDecodingErrorComesAfterTheReceiptsOfTheFramesBeforeIt() {
        var m = Self.connected()
        m.frameReceived(Self.send("/app/stream", receipt: "1"), now: .now())
        m.frameReceived(Self.send("/topic/a", receipt: "2"), now: .now())
        #expect(Self.drain(&m) == [.execute("route(/app/stream)", step: 2), .execute("publish(/topic/a)", step: 3)])
        m.decodingFailed(SessionFailure("unknown command 'BAD'"))
        #expect(Self.drain(&m) == [], "waits for the steps before it")
        m.stepCompleted(3, .success)
        #expect(Self.drain(&m) == [])
        m.stepCompleted(2, .success)
        #expect(Self.drain(&m) == [.answered(2, receipt: "1"), .answered(3, receipt: "2"), .error("unknown command 'BAD'", receiptID: nil)])
        // With nothing before it: at once.
        var idle = Self.connected()
        idle.decodingFailed(SessionFailure("unknown command 'BAD'"))
        #expect(Self.drain(&idle) == [.error("unknown command 'BAD'", receiptID: nil)])
    }

    @Test func fatalErrorDropsPendingWork() {
        var m = Self.connected()
        m.frameReceived(Self.send("/topic/a", receipt: "s"), now: .now())
        _ = Self.drain(&m)
        m.errorOccurred(SessionFailure("malformed frame"))
        #expect(Self.drain(&m) == [.error("malformed frame", receiptID: nil)])
        m.stepCompleted(2, .success)
        #expect(Self.drain(&m) == [])
    }

    @Test func pipelineWindowPausesReads() {
        var m = Self.connected { $0.maxPipelinedSends = 2 }
        for r in ["1", "2", "3"] { m.frameReceived(Self.send("/topic/a", receipt: r), now: .now()) }
        #expect(Self.drain(&m) == [.execute("publish(/topic/a)", step: 2), .execute("publish(/topic/a)", step: 3)])
        #expect(m.readsPaused)
        let read = m.readRequested()
        #expect(!read)
        m.stepCompleted(2, .success)
        #expect(Self.drain(&m) == [.answered(2, receipt: "1"), .execute("publish(/topic/a)", step: 4)])
        m.stepCompleted(3, .success)
        #expect(Self.drain(&m) == [.answered(3, receipt: "2"), .resumeReads])
    }

    @Test func queueLimitFailsTheSession() {
        var m = Self.connected { $0.maxQueuedFrames = 2 }
        m.frameReceived(Self.send("/app/serial"), now: .now())
        _ = Self.drain(&m)
        m.frameReceived(Self.send("/topic/a"), now: .now())
        m.frameReceived(Self.send("/topic/a"), now: .now())
        m.frameReceived(Self.send("/topic/a"), now: .now())
        #expect(Self.drain(&m) == [.error("too many frames queued behind an unfinished SEND (limit 2)", receiptID: nil)])
    }

    @Test func subscribeRules() {
        var m = Self.connected { $0.maxSubscriptionsPerSession = 1 }
        m.frameReceived(Self.frame(.subscribe, [("destination", "/topic/a"), ("id", "1")]), now: .now())
        #expect(Self.drain(&m) == [.execute("subscribe(1 /topic/a)", step: 2)])
        m.stepCompleted(2, .success)
        _ = Self.drain(&m)
        m.frameReceived(Self.frame(.subscribe, [("destination", "/topic/b"), ("id", "2"), ("receipt", "x")]), now: .now())
        #expect(Self.drain(&m) == [.error("too many subscriptions (limit 1)", receiptID: "x")])

        var n = Self.connected()
        n.frameReceived(Self.frame(.subscribe, [("destination", "/app/serial"), ("id", "1")]), now: .now())
        #expect(Self.drain(&n) == [.error("cannot SUBSCRIBE to application destination /app/serial", receiptID: nil)])

        var u = Self.connected()
        u.frameReceived(Self.frame(.subscribe, [("destination", "/topic/a"), ("id", "1")]), now: .now())
        _ = Self.drain(&u)
        u.stepCompleted(2, .success)
        _ = Self.drain(&u)
        u.frameReceived(Self.frame(.unsubscribe, [("id", "1"), ("receipt", "u")]), now: .now())
        u.frameReceived(Self.frame(.subscribe, [("destination", "/topic/a"), ("id", "1")]), now: .now())
        #expect(Self.drain(&u) == [.unsubscribe("1"), .receipt("u"), .execute("subscribe(1 /topic/a)", step: 3)])
    }

    /// Connected with client heart-beats 1000,1000 (server 10 s both ways), last read at tick 0.
    static func connectedWithHeartBeats() -> Machine {
        var m = machine()
        m.frameReceived(frame(.connect, [("accept-version", "1.2"), ("heart-beat", "1000,1000")]), now: .now())
        _ = drain(&m)
        m.stepCompleted(1, .connected(nil))
        _ = drain(&m)
        m.read(at: 0)
        return m
    }

    @Test func heartBeatsAndTimeout() {
        // Server 10 s both ways, client 1 s both ways, 100 ms ticks: send every 100 ticks,
        // close after 2 × 10 s (tolerance 2) without a read.
        var m = Self.connectedWithHeartBeats()
        m.wrote(at: 0)
        do { let t = m.tick(1, now: .now()); #expect(t == .wait(next: 100)) }
        do { let t = m.tick(100, now: .now()); #expect(t == .sendHeartbeat(next: 200)) }
        m.read(at: 150)
        do { let t = m.tick(200, now: .now()); #expect(t == .sendHeartbeat(next: 300)) }
        do { let t = m.tick(352, now: .now()); #expect(t == .closed) }
        #expect(Self.drain(&m) == [.error("heart-beat timeout: nothing received from the client in time", receiptID: nil)])
    }

    @Test func busySessionIsNotTimedOut() {
        var m = Self.connectedWithHeartBeats()
        m.frameReceived(Self.send("/app/serial"), now: .now())
        _ = Self.drain(&m)
        do { let t = m.tick(1000, now: .now()); #expect(t == .sendHeartbeat(next: 1001)) }
    }

    @Test func connectDeadline() {
        var m = Self.machine { $0.connectTimeout = .milliseconds(500) }
        do { let t = m.tick(1, now: .now()); #expect(t == .wait(next: 6)) }
        do { let t = m.tick(6, now: .now()); #expect(t == .closed) }
        #expect(Self.drain(&m) == [.error("no CONNECT frame within 500 ms", receiptID: nil)])
    }

    @Test func expiredTokenClosesTheSession() {
        var m = Self.machine()
        m.frameReceived(Self.frame(.connect, [("accept-version", "1.2")]), now: .now())
        _ = Self.drain(&m)
        m.stepCompleted(1, .connected(SessionIdentity(user: "u", expiresAt: .now() + .seconds(1))))
        _ = Self.drain(&m)
        do { let t = m.tick(1, now: .now()); #expect(t == .wait(next: 11)) }
        do { let t = m.tick(11, now: .now() + .seconds(2)); #expect(t == .closed) }
        #expect(Self.drain(&m) == [.error("authentication expired: the token's exp has passed", receiptID: nil)])
    }

    @Test func writeStallIsASlowConsumer() {
        var m = Self.connected()
        m.writabilityChanged(isWritable: true)
        #expect(Self.drain(&m) == [])
        m.writabilityChanged(isWritable: false)
        #expect(Self.drain(&m) == [.error("slow consumer: more than 4194304 bytes pending delivery", receiptID: nil)])
    }
}

/// A replay being written as fast as the connection takes it (``STOMPSessionStateMachine/replayPacing(_:at:)``).
@Suite struct ReplayPacingMachineTests {
    typealias Tests = SessionStateMachineTests

    /// The client's frames wait for the replay, as behind a step; reading pauses and resumes.
    @Test func framesWaitWhileAReplayIsWritten() {
        var m = Tests.connected()
        m.replayPacing(true, at: 10)
        m.frameReceived(Tests.frame(.unsubscribe, [("id", "1"), ("receipt", "u")]), now: .now())
        m.frameReceived(Tests.send("/topic/a", receipt: "s"), now: .now())
        #expect(Tests.drain(&m).isEmpty)
        #expect(m.readsPaused)
        let read = m.readRequested()
        #expect(read == false)
        m.replayPacing(false, at: 20)
        #expect(Tests.drain(&m) == [.unsubscribe("1"), .receipt("u"), .execute("publish(/topic/a)", step: 2), .resumeReads])
        m.stepCompleted(2, .success)
        #expect(Tests.drain(&m) == [.answered(2, receipt: "s")])
    }

    /// No heart-beat is expected while nothing is read; the timeout counts again from the end.
    @Test func noHeartBeatTimeoutWhileAReplayIsWritten() {
        var m = Tests.connectedWithHeartBeats()  // the client must be heard from every 20 s (200 ticks)
        m.replayPacing(true, at: 0)
        do { let t = m.tick(1000, now: .now()); #expect(t == .sendHeartbeat(next: 1001)) }
        m.replayPacing(false, at: 1000)
        do { let t = m.tick(1150, now: .now()); #expect(t == .sendHeartbeat(next: 1202)) }
        do { let t = m.tick(1202, now: .now()); #expect(t == .closed) }
    }

    /// A replay the connection takes nothing of is a slow consumer once the stall timeout passed
    /// since the last progress.
    @Test func aStalledReplayIsASlowConsumer() {
        var m = Tests.connected { $0.replayStallTimeout = .seconds(1) }  // 10 ticks of 100 ms
        m.replayPacing(true, at: 0)
        let stalled = m.replayStalled(at: 5)
        let again = m.replayStalled(at: 8)
        #expect(stalled && !again, "stalled since 5 already")
        do { let t = m.tick(10, now: .now()); #expect(t == .wait(next: 16)) }
        let progressed = m.replayProgressed()
        let stalledAgain = m.replayStalled(at: 12)
        #expect(progressed && stalledAgain)
        do { let t = m.tick(16, now: .now()); #expect(t == .wait(next: 23)) }
        do { let t = m.tick(23, now: .now()); #expect(t == .closed) }
        #expect(Tests.drain(&m) == [.error("slow consumer: the connection took nothing of a replay in 1000 ms", receiptID: nil)])
    }
}
