import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Testing

@testable import Redis

/// Counts the `read()` calls that reach the socket (it sits at the head of the pipeline).
final class ReadCounter: ChannelOutboundHandler, @unchecked Sendable {
    typealias OutboundIn = ByteBuffer
    var reads = 0

    func read(context: ChannelHandlerContext) {
        self.reads += 1
        context.read()
    }
}

/// A subscriber connection's read pause (``RedisChannelHandler/setReadsPaused(_:)``): while
/// paused, reads are held only while no reply is owed, so the connection still reads the
/// replies to its own commands (a `SUBSCRIBE` during a pause, which timed out when the pause
/// turned `autoRead` off).
@Suite("Channel handler: read pause (EmbeddedChannel)")
struct ReadGatingTests {
    let channel = EmbeddedChannel()
    let counter = ReadCounter()
    let handler: RedisChannelHandler

    init() throws {
        let handshake = self.channel.eventLoop.makePromise(of: Int.self)
        self.handler = RedisChannelHandler(
            configuration: RedisConfiguration(), handshakePromise: handshake, pushHandler: { _ in }, logger: Logger(label: "test"))
        try self.channel.pipeline.syncOperations.addHandlers([self.counter, ByteToMessageHandler(RESPTokenDecoder()), self.handler])
        try self.channel.connect(to: .init(ipAddress: "127.0.0.1", port: 6379)).wait()
        #expect(try self.outbound() == resp("HELLO", "3"))
        try self.channel.writeInbound(ByteBuffer(string: "%1\r\n+proto\r\n:3\r\n"))
        #expect(try handshake.futureResult.wait() == 3)
    }

    func outbound() throws -> String {
        var result = ""
        while let buffer = try self.channel.readOutbound(as: ByteBuffer.self) { result += String(buffer: buffer) }
        return result
    }

    func send(_ command: some RedisCommand) -> EventLoopFuture<RESPToken> {
        var encoder = RESPCommandEncoder()
        command.encode(into: &encoder)
        let promise = self.channel.eventLoop.makePromise(of: RESPToken.self)
        self.channel.writeAndFlush(RedisOutboundCommand(bytes: encoder.buffer, kind: .command, promise: promise), promise: nil)
        return promise.futureResult
    }

    @Test func readsPassWhileNotPaused() throws {
        let before = self.counter.reads
        self.channel.read()
        self.channel.read()
        #expect(self.counter.reads == before + 2)
        _ = try self.channel.finish()
    }

    @Test func pausedIdleConnectionHoldsItsReadUntilResumed() throws {
        #expect(self.handler.setReadsPaused(true))
        #expect(!self.handler.setReadsPaused(true), "no change the second time")
        let before = self.counter.reads
        self.channel.read()
        #expect(self.counter.reads == before, "held: no reply is owed")
        #expect(self.handler.setReadsPaused(false))
        #expect(self.counter.reads == before + 1, "the held read goes on at resume")
        self.channel.read()
        #expect(self.counter.reads == before + 2)
        _ = try self.channel.finish()
    }

    @Test func pausedConnectionStillReadsTheReplyToItsOwnCommand() throws {
        #expect(self.handler.setReadsPaused(true))
        let before = self.counter.reads
        self.channel.read()
        #expect(self.counter.reads == before)
        // A command written releases the held read: its reply must come in.
        let ping = self.send(PING())
        #expect(try self.outbound() == resp("PING"))
        #expect(self.counter.reads == before + 1)
        // While the reply is owed, reads pass.
        self.channel.read()
        #expect(self.counter.reads == before + 2)
        try self.channel.writeInbound(ByteBuffer(string: "+PONG\r\n"))
        #expect(try String(fromRESP: ping.wait()) == "PONG")
        // Nothing owed any more: held again.
        self.channel.read()
        #expect(self.counter.reads == before + 2)
        // Resuming releases exactly the one held read; without one held, nothing.
        #expect(self.handler.setReadsPaused(false))
        #expect(self.counter.reads == before + 3)
        #expect(self.handler.setReadsPaused(true))
        #expect(self.handler.setReadsPaused(false))
        #expect(self.counter.reads == before + 3)
        _ = try self.channel.finish()
    }
}
