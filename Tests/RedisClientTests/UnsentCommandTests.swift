import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Testing

@testable import Redis

/// Stands for the socket under ``RedisChannelHandler``: holds writes until a flush, and like
/// NIO's socket channel, fails the writes it still holds when it closes. Once `dead`, a flush
/// fails them (`EPIPE`) and closes the channel.
private final class DyingSocket: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = ByteBuffer
    var dead = false
    /// Holds a close back, as TLS does while it waits for the server's `close_notify`.
    var lingers = false
    private var held: [(NIOAny, EventLoopPromise<Void>?)] = []

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        self.held.append((data, promise))
    }

    func flush(context: ChannelHandlerContext) {
        guard !self.dead else {
            self.close(context: context, mode: .all, promise: nil)
            return
        }
        for (data, promise) in self.held { context.write(data, promise: promise) }
        self.held = []
        context.flush()
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if self.lingers { return }
        let held = self.held
        self.held = []
        for (_, promise) in held { promise?.fail(IOError(errnoCode: EPIPE, reason: "writev(descriptor:iovecs:)")) }
        context.close(mode: mode, promise: promise)
    }
}

/// The commands a connection handed over; those still not completed fail when it goes (a
/// promise left uncompleted is a leak NIO traps on).
private final class Taken: Sendable {
    let commands = NIOLockedValueBox<[RedisOutboundCommand]>([])

    func withLockedValue<T>(_ body: (inout [RedisOutboundCommand]) -> T) -> T { self.commands.withLockedValue(body) }

    deinit {
        for command in self.commands.withLockedValue({ $0 }) { command.promise.fail(RedisClientError.shutdown) }
    }
}

/// A ``RedisConnection`` over an `EmbeddedChannel`, after the handshake.
private struct EmbeddedConnection {
    let channel: EmbeddedChannel
    let socket: DyingSocket
    let connection: RedisConnection

    init(configuration: RedisConfiguration = RedisConfiguration()) throws {
        let channel = EmbeddedChannel()
        let socket = DyingSocket()
        let handshake = channel.eventLoop.makePromise(of: Int.self)
        let acceptance = CommandAcceptance()
        try channel.pipeline.syncOperations.addHandlers([
            socket,
            ByteToMessageHandler(RESPTokenDecoder()),
            RedisChannelHandler(
                configuration: configuration, handshakePromise: handshake, pushHandler: nil, acceptance: acceptance, logger: Logger(label: "test")),
        ])
        try channel.connect(to: .init(ipAddress: "127.0.0.1", port: 6379)).wait()
        channel.embeddedEventLoop.run()
        self.channel = channel
        self.socket = socket
        self.connection = RedisConnection(channel: channel, protocolVersion: 3, configuration: configuration, acceptance: acceptance)
        #expect(try self.outbound() == resp("HELLO", "3"))
        try channel.writeInbound(ByteBuffer(string: "%1\r\n+proto\r\n:3\r\n"))
        #expect(try handshake.futureResult.wait() == 3)
    }

    /// Takes every command the connection hands over (``RedisConnection/onUnsent(_:)``).
    func takeUnsent() -> Taken {
        let taken = Taken()
        self.connection.onUnsent { command in
            taken.commands.withLockedValue { $0.append(command) }
            return true
        }
        return taken
    }

    func outbound() throws -> String {
        var result = ""
        while let buffer = try self.channel.readOutbound(as: ByteBuffer.self) { result += String(buffer: buffer) }
        return result
    }
}

/// Commands a connection could not write at all (Redis never got them) are handed to
/// ``RedisConnection/onUnsent(_:)`` (``RedisClient`` sends them again once a connection is back),
/// or fail as not sent; commands Redis may have got still fail with `connectionClosed`.
@Suite("Unsent commands")
struct UnsentCommandTests {
    /// `EPIPE` on the write: the command written before fails as outcome unknown, the two that
    /// were not are handed over in order, and complete when sent again on another connection.
    @Test func commandsWhoseWriteFailedAreHandedOverInOrder() throws {
        let dying = try EmbeddedConnection()
        let taken = dying.takeUnsent()
        let written = dying.connection.sendRaw(PING())
        dying.channel.embeddedEventLoop.run()
        #expect(try dying.outbound() == resp("PING"))
        dying.socket.dead = true
        let first = dying.connection.sendRaw(RawCommand("SET", "k", "1"))
        let second = dying.connection.sendRaw(RawCommand("SET", "k", "2"))
        dying.channel.embeddedEventLoop.run()
        #expect(!dying.channel.isActive)
        #expect(throws: RedisClientError.connectionClosed) { try written.wait() }
        let commands = taken.withLockedValue { $0 }
        #expect(commands.map { String(buffer: $0.bytes) } == [resp("SET", "k", "1"), resp("SET", "k", "2")])
        #expect(!first.isCompleteForTest && !second.isCompleteForTest)

        let other = try EmbeddedConnection()
        for command in commands { _ = other.connection.resend(command) }
        other.channel.embeddedEventLoop.run()
        #expect(try other.outbound() == resp("SET", "k", "1") + resp("SET", "k", "2"))
        try other.channel.writeInbound(ByteBuffer(string: "+OK\r\n+OK\r\n"))
        #expect(try String(fromRESP: first.wait()) == "OK")
        #expect(try String(fromRESP: second.wait()) == "OK")
    }

    /// Without a handler an unwritten command fails as not sent (`notConnected`: a publish
    /// answers "not published"), not as outcome unknown.
    @Test func withoutAHandlerAnUnwrittenCommandFailsAsNotSent() throws {
        let dying = try EmbeddedConnection()
        dying.socket.dead = true
        let command = dying.connection.sendRaw(PING())
        dying.channel.embeddedEventLoop.run()
        #expect(throws: RedisClientError.notConnected) { try command.wait() }
        do {
            _ = try command.wait()
        } catch let error as RedisClientError {
            #expect(error.detail?.contains("not sent") == true, "\(error)")
        }
        // Sent after the close: refused by the handler, not sent either.
        let late = dying.connection.sendRaw(PING())
        dying.channel.embeddedEventLoop.run()
        #expect(throws: RedisClientError.notConnected) { try late.wait() }
    }

    /// A socket error (`ECONNRESET` on a read) closes the channel before failing what is
    /// pending, so the writes it still held are handed over, not failed as outcome unknown.
    @Test func aSocketErrorHandsOverTheWritesStillHeld() throws {
        let dying = try EmbeddedConnection()
        let taken = dying.takeUnsent()
        let written = dying.connection.sendRaw(PING())
        dying.channel.embeddedEventLoop.run()
        let held = dying.connection.sendRaw(RawCommand("SET", "k", "1"))  // not flushed yet
        dying.channel.pipeline.fireErrorCaught(IOError(errnoCode: ECONNRESET, reason: "read(descriptor:pointer:size:)"))
        #expect(!dying.channel.isActive)
        #expect(throws: RedisClientError.connectionClosed) { try written.wait() }
        do {
            _ = try written.wait()
        } catch let error as RedisClientError {
            #expect(error.detail?.contains("Connection reset by peer") == true, "\(error)")
        }
        #expect(taken.withLockedValue { $0.map { String(buffer: $0.bytes) } } == [resp("SET", "k", "1")])
        #expect(!held.isCompleteForTest)
    }

    /// With TLS one encrypted buffer carries a whole flush, and part of it may have reached
    /// Redis before the write failed: nothing is handed over, the commands fail as outcome
    /// unknown (`connectionClosed`), never "not sent".
    @Test func withTLSAFailedWriteIsOutcomeUnknown() throws {
        var configuration = RedisConfiguration()
        configuration.tls = RedisTLSConfiguration()
        let dying = try EmbeddedConnection(configuration: configuration)
        let taken = dying.takeUnsent()
        dying.socket.dead = true
        let command = dying.connection.sendRaw(RawCommand("INCR", "k"))
        dying.channel.embeddedEventLoop.run()
        #expect(throws: RedisClientError.connectionClosed) { try command.wait() }
        #expect(taken.withLockedValue { $0.isEmpty })
    }

    /// A connection whose handler is closing (after a timeout or a protocol error) takes no more
    /// commands, even while its channel is still open (TLS waits for `close_notify`): it is not
    /// active any more, so nothing is sent (or drained) onto it, and what reaches it is refused
    /// unsent and handed over.
    @Test func aClosingConnectionIsNotActiveAndRefusesCommandsUnsent() throws {
        let dying = try EmbeddedConnection()
        let taken = dying.takeUnsent()
        dying.socket.lingers = true
        #expect(dying.connection.isActive)
        dying.channel.pipeline.fireErrorCaught(RedisClientError.protocolViolation)
        #expect(dying.channel.isActive)
        #expect(!dying.connection.isActive)
        let late = dying.connection.sendRaw(PING())
        dying.channel.embeddedEventLoop.run()
        #expect(taken.withLockedValue { $0.map { String(buffer: $0.bytes) } } == [resp("PING")])
        #expect(!late.isCompleteForTest)
    }

    /// A close asked for (a failover, ``RedisConnection/close()``) stops the connection taking
    /// commands at once, even while TLS keeps the channel open for `close_notify`.
    @Test func aCloseAskedForRefusesCommandsUnsentAtOnce() throws {
        let dying = try EmbeddedConnection()
        let taken = dying.takeUnsent()
        dying.socket.lingers = true
        dying.channel.close(promise: nil)
        #expect(dying.channel.isActive)
        #expect(!dying.connection.isActive)
        _ = dying.connection.sendRaw(PING())
        dying.channel.embeddedEventLoop.run()
        #expect(taken.withLockedValue { $0.map { String(buffer: $0.bytes) } } == [resp("PING")])
    }
}
