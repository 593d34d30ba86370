import NIOCore
import NIOEmbedded
import STOMPCodec
import SwitchboardCore
import SwitchboardWire
import Testing

/// Stands in for a socket and NIO's write buffer water marks: what the session writes stays
/// queued until ``drain()`` (the peer read it), and the channel is unwritable while more than
/// `high` bytes are queued.
final class SlowSocket: ChannelOutboundHandler {
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let high: Int
    private var context: ChannelHandlerContext?
    private var queued: [(bytes: ByteBuffer, promise: EventLoopPromise<Void>?)] = []
    private(set) var queuedBytes = 0
    /// The most bytes queued at once.
    private(set) var mostQueued = 0
    /// The largest single write.
    private(set) var largestWrite = 0

    init(high: Int) { self.high = high }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let bytes = unwrapOutboundIn(data)
        queued.append((bytes, promise))  // done when the peer read it
        queuedBytes += bytes.readableBytes
        largestWrite = max(largestWrite, bytes.readableBytes)
        mostQueued = max(mostQueued, queuedBytes)
        if queuedBytes > high, let channel = context.channel as? EmbeddedChannel, channel.isWritable {
            channel.isWritable = false
            context.fireChannelWritabilityChanged()
        }
    }

    func flush(context: ChannelHandlerContext) {}

    /// The peer read the oldest queued write only: it goes on to the channel; the channel is
    /// writable again once less than half of `high` is queued (NIO's low water mark here).
    func drainOne() {
        guard let context, let channel = context.channel as? EmbeddedChannel, !queued.isEmpty else { return }
        let write = queued.removeFirst()
        queuedBytes -= write.bytes.readableBytes
        context.writeAndFlush(wrapOutboundOut(write.bytes), promise: write.promise)
        if !channel.isWritable, queuedBytes < high / 2 {
            channel.isWritable = true
            context.fireChannelWritabilityChanged()
        }
    }

    /// The peer read everything queued: it goes on to the channel, which is writable again.
    /// Returns whether anything was queued.
    @discardableResult
    func drain() -> Bool {
        guard let context, let channel = context.channel as? EmbeddedChannel else { return false }
        let had = !queued.isEmpty
        let writes = queued
        queued = []
        for write in writes { context.write(wrapOutboundOut(write.bytes), promise: write.promise) }
        context.flush()
        queuedBytes = 0
        if !channel.isWritable {
            channel.isWritable = true
            context.fireChannelWritabilityChanged()
        }
        return had
    }
}

/// A replay far larger than `limits.max-pending-bytes` goes out as fast as the connection takes
/// it. Before, it was handed to NIO at once: the channel became unwritable and the session
/// ended as a slow consumer on every resume (the client reconnected and resumed again).
@Suite struct ReplayPacingTests {
    static let limit = 4096

    /// A gateway with a 4 KiB pending limit on the pending engine (registered at e1:40), a
    /// client behind a slow socket, subscribed with `x-resume-from: e1:0`.
    static func resuming(
        stallTimeout: TimeAmount = .seconds(10), socketHigh: Int = limit, before: (any ChannelHandler)? = nil
    ) throws -> (TestGateway, PendingReplayEngine, TestClient, SlowSocket) {
        let box = EngineBox()
        var configuration = SessionConfiguration()
        configuration.maxPendingOutboundBytes = limit
        configuration.replayStallTimeout = stallTimeout
        let gateway = TestGateway(configuration: configuration) { hub in
            let engine = PendingReplayEngine(hub: hub, through: StreamPosition(epoch: "e1", sequence: 40))
            box.value = engine
            return engine
        }
        let client = try gateway.client()
        let socket = SlowSocket(high: socketHigh)
        try client.channel.pipeline.syncOperations.addHandler(socket, position: .first)
        if let before { try client.channel.pipeline.syncOperations.addHandler(before, position: .after(socket)) }
        try client.send(.connect, ["host": "localhost", "accept-version": "1.2"])
        socket.drain()
        try #require(try client.frames().map(\.command) == [.connected])
        try client.send(.subscribe, ["destination": "/topic/h", "id": "1", "receipt": "r", "x-resume-from": "e1:0"])
        return (gateway, box.value!, client, socket)
    }

    static func message(_ n: UInt64, size: Int = 1_000) -> PublishedMessage {
        let body = "e1:\(n)" + String(repeating: "x", count: size)
        return PublishedMessage(
            destination: "/topic/h", messageID: "e1-\(n)", headers: [:], body: ByteBuffer(string: body),
            position: StreamPosition(epoch: "e1", sequence: n))
    }

    /// The replay (e1:1…40, 1 KB each) comes back from the engine.
    static func replayArrives(_ engine: PendingReplayEngine, _ gateway: TestGateway) {
        engine.replay!.succeed(
            HistoryReplay(messages: (UInt64(1)...40).map { message($0) }, recovered: true, position: StreamPosition(epoch: "e1", sequence: 40)))
        gateway.loop.run()
    }

    /// Live messages of `size` bytes at positions `positions`.
    static func live(_ positions: ClosedRange<UInt64>, size: Int, _ gateway: TestGateway) {
        for n in positions { gateway.hub.deliver(message(n, size: size)) }
        gateway.loop.run()
    }

    /// 40 KB of replay behind a 4 KiB limit: everything arrives, in order, then the live messages.
    @Test func aReplayTenTimesTheLimitArrivesWholeThenTheLiveMessages() throws {
        let (gateway, engine, client, socket) = try Self.resuming()
        defer { gateway.shutdown() }
        Self.replayArrives(engine, gateway)
        Self.live(41...43, size: 10, gateway)  // while the replay is being written: they follow it
        var frames: [STOMPFrame] = []
        var drains = 0
        while socket.drain() {
            drains += 1
            gateway.loop.run()
            frames += try client.frames()
        }
        Self.live(44...44, size: 10, gateway)
        #expect(socket.queuedBytes > 0, "after the replay, live messages go straight to the connection")
        socket.drain()
        frames += try client.frames()
        #expect(frames.first?.command == .receipt)
        #expect(frames.first?.headers["x-recovered"] == "true")
        #expect(!frames.contains { $0.command == .error }, "\(frames.filter { $0.command == .error })")
        let bodies = frames.filter { $0.command == .message }.map { String($0.bodyString.prefix { $0 != "x" }) }
        #expect(bodies == (1...44).map { "e1:\($0)" })
        #expect(drains > 5, "written as the socket drained, not at once")
        // The connection's buffer held at most the limit, one chunk (a quarter of it here) and one message.
        #expect(socket.mostQueued <= Self.limit + Self.limit / 4 + 1_200, "\(socket.mostQueued)")
        #expect(client.isActive)
    }

    /// A client that stops reading mid-replay: the live messages wait behind the replay, and
    /// past the limit the session ends as a slow consumer, with nothing out of order before it.
    @Test func liveMessagesPastTheLimitBehindAPausedReplayEndTheSession() throws {
        let (gateway, engine, client, socket) = try Self.resuming()
        defer { gateway.shutdown() }
        Self.replayArrives(engine, gateway)
        Self.live(41...50, size: 1_000, gateway)
        socket.drain()
        let out = try client.read()
        let frames = out.compactMap(\.frame)
        #expect(out.last?.closeCode != nil, "the close follows the ERROR: \(out.last.map { "\($0)" } ?? "nothing")")
        #expect(frames.last?.command == .error)
        #expect(frames.last?.headers["message"]?.hasPrefix("slow consumer") == true, "\(frames.last.map { "\($0.headers)" } ?? "")")
        let bodies = frames.filter { $0.command == .message }.map { String($0.bodyString.prefix { $0 != "x" }) }
        #expect(!bodies.isEmpty && bodies.count < 40)
        #expect(bodies == (1...bodies.count).map { "e1:\($0)" }, "a prefix of the replay, then the ERROR")
    }

    /// Frames the client sends while a replay is being written wait for it, as behind a step:
    /// an UNSUBSCRIBE handled at once was answered before the messages already held for the
    /// subscription, which came after its RECEIPT (and a SUBSCRIBE reusing the id got them on
    /// the new subscription, repeating positions).
    @Test func framesSentDuringAPacedReplayWaitForIt() throws {
        let (gateway, engine, client, socket) = try Self.resuming()
        defer { gateway.shutdown() }
        Self.replayArrives(engine, gateway)
        Self.live(41...41, size: 10, gateway)  // held behind the replay
        try client.send(.unsubscribe, ["id": "1", "receipt": "u"])
        try client.send(.subscribe, ["destination": "/topic/other/*", "id": "1", "receipt": "s"])  // the id again
        var frames: [STOMPFrame] = []
        while socket.drain() {
            gateway.loop.run()
            frames += try client.frames()
        }
        gateway.hub.deliver(PublishedMessage(destination: "/topic/other/a", messageID: "o-1", headers: [:], body: ByteBuffer(string: "other")))
        gateway.loop.run()
        socket.drain()
        frames += try client.frames()
        let order = frames.map { frame in
            frame.command == .message ? String(frame.bodyString.prefix { $0 != "x" }) : "\(frame.command.rawValue):\(frame.headers["receipt-id"] ?? "")"
        }
        #expect(order == ["RECEIPT:r"] + (1...41).map { "e1:\($0)" } + ["RECEIPT:u", "RECEIPT:s", "other"], "\(order)")
        #expect(client.isActive)
    }

    /// A client that reads nothing of a paused replay (and gets no live message) is a slow
    /// consumer after `replayStallTimeout`: the replay is held in memory meanwhile. Before
    /// the deadline, each drain of the socket starts it again.
    @Test func aReplayTheConnectionTakesNothingOfEndsTheSession() throws {
        let (gateway, engine, client, socket) = try Self.resuming(stallTimeout: .milliseconds(1_000))
        defer { gateway.shutdown() }
        Self.replayArrives(engine, gateway)
        var frames: [STOMPFrame] = []
        for _ in 0..<4 {  // 4 × 750 ms, drained in between: taking it slowly is fine
            gateway.loop.advanceTime(by: .milliseconds(750))
            socket.drain()
            gateway.loop.run()
            frames += try client.frames()
        }
        #expect(!frames.contains { $0.command == .error })
        #expect(socket.queuedBytes > 0, "the replay is not over yet")
        gateway.loop.advanceTime(by: .milliseconds(1_600))  // nothing drained
        socket.drain()
        let out = try client.read()
        let error = out.compactMap(\.frame).last
        #expect(error?.command == .error)
        #expect(error?.headers["message"] == "slow consumer: the connection took nothing of a replay in 1000 ms", "\(out)")
        #expect(out.last?.closeCode != nil)
    }

    /// A client reading slowly but steadily: each chunk the socket takes starts the stall
    /// deadline again. Before, only the channel becoming writable did (half the limit drained),
    /// so such a client was cut off as if it read nothing, without an ERROR it could read.
    @Test func aClientReadingSlowlyButSteadilyIsNotStalled() throws {
        let (gateway, engine, client, socket) = try Self.resuming(stallTimeout: .milliseconds(1_000))
        defer { gateway.shutdown() }
        Self.replayArrives(engine, gateway)
        for _ in 0..<12 {  // one write taken every 600 ms: 7.2 s in all, never 1 s without progress
            gateway.loop.advanceTime(by: .milliseconds(600))
            socket.drainOne()
            gateway.loop.run()
        }
        var frames: [STOMPFrame] = []
        while socket.drain() {
            gateway.loop.run()
            frames += try client.frames()
        }
        #expect(!frames.contains { $0.command == .error }, "\(frames.filter { $0.command == .error }.map(\.headers))")
        #expect(frames.filter { $0.command == .message }.count == 40)
        #expect(client.isActive)
    }

    /// The live messages held behind a replay (merged into one buffer per step, up to the
    /// limit) went out as one write, whose completion alone counted as progress: a client
    /// reading steadily but slowly took longer than the stall deadline and was cut off. They go
    /// out a chunk at a time, as the replay does.
    @Test func liveMessagesHeldBehindAReplayGoOutAChunkAtATime() throws {
        let (gateway, engine, client, socket) = try Self.resuming()
        defer { gateway.shutdown() }
        Self.replayArrives(engine, gateway)
        Self.live(41...43, size: 1_000, gateway)  // about 3 KB held, in one buffer
        var frames: [STOMPFrame] = []
        while socket.drain() {
            gateway.loop.run()
            frames += try client.frames()
        }
        #expect(!frames.contains { $0.command == .error })
        let bodies = frames.filter { $0.command == .message }.map { String($0.bodyString.prefix { $0 != "x" }) }
        #expect(bodies == (1...43).map { "e1:\($0)" })
        // A chunk (a quarter of the limit here) and one message at most.
        #expect(socket.largestWrite <= Self.limit / 4 + 1_200, "\(socket.largestWrite)")
    }

    /// A peer gone while its replay is written: the flush of a chunk fails (EPIPE) and closes
    /// the channel inside it, which cleans the session up. The pump went on with the backlog
    /// the close had cleared, and the process trapped.
    @Test func aPeerGoneDuringAReplayFlushEndsTheSessionCleanly() throws {
        let closer = FlushCloses()
        let (gateway, engine, client, _) = try Self.resuming(socketHigh: 1 << 20, before: closer)
        defer { gateway.shutdown() }
        closer.armed = true
        Self.replayArrives(engine, gateway)
        #expect(closer.closed)
        #expect(!client.isActive)
    }

    /// A client that stops reading once the replay is written, its connection's buffer still
    /// under the high water mark (writable): the pacing waited for the socket to take the
    /// writes, and without a stall deadline (armed only while unwritable) the session and the
    /// client's waiting frames stayed so for good. The deadline holds while writes are pending.
    @Test func writesPendingWithTheChannelWritableStillHaveAStallDeadline() throws {
        let (gateway, engine, client, socket) = try Self.resuming(stallTimeout: .milliseconds(1_000), socketHigh: 1 << 20)
        defer { gateway.shutdown() }
        Self.replayArrives(engine, gateway)
        #expect(socket.queuedBytes > 40_000, "the whole replay is written, not taken")
        gateway.loop.advanceTime(by: .milliseconds(1_600))
        socket.drain()
        let out = try client.read()
        let error = out.compactMap(\.frame).last
        #expect(error?.command == .error)
        #expect(error?.headers["message"] == "slow consumer: the connection took nothing of a replay in 1000 ms", "\(out)")
    }
}

/// Closes the channel at the first flush once armed, as a write to a peer gone does (NIO
/// closes the socket inside the flush).
final class FlushCloses: ChannelOutboundHandler {
    typealias OutboundIn = ByteBuffer
    var armed = false
    private(set) var closed = false

    func flush(context: ChannelHandlerContext) {
        guard armed else { return context.flush() }
        armed = false
        closed = true
        context.close(promise: nil)
    }
}
