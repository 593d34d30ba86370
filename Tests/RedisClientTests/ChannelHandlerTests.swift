import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Testing

@testable import Redis

/// An `EmbeddedChannel` with the decoder and ``RedisChannelHandler`` installed.
final class EmbeddedRedis {
    let channel = EmbeddedChannel()
    let handshake: EventLoopPromise<Int>
    let messages = NIOLockedValueBox<[RedisPubSubMessage]>([])

    init(configuration: RedisConfiguration = RedisConfiguration()) throws {
        self.handshake = self.channel.eventLoop.makePromise()
        let messages = self.messages
        try self.channel.pipeline.syncOperations.addHandlers([
            ByteToMessageHandler(RESPTokenDecoder()),
            RedisChannelHandler(
                configuration: configuration,
                handshakePromise: self.handshake,
                pushHandler: { message in messages.withLockedValue { $0.append(message) } },
                logger: Logger(label: "test")
            ),
        ])
        try self.channel.connect(to: .init(ipAddress: "127.0.0.1", port: 6379)).wait()
    }

    /// All bytes written so far, as a string.
    func outbound() throws -> String {
        var result = ""
        while let buffer = try self.channel.readOutbound(as: ByteBuffer.self) { result += String(buffer: buffer) }
        return result
    }

    func feed(_ s: String) throws {
        try self.channel.writeInbound(ByteBuffer(string: s))
    }

    func send(_ command: some RedisCommand) -> EventLoopFuture<RESPToken> {
        var encoder = RESPCommandEncoder()
        command.encode(into: &encoder)
        let promise = self.channel.eventLoop.makePromise(of: RESPToken.self)
        let kind: RedisConnectionStateMachine<EventLoopPromise<RESPToken>>.PendingKind = command.replicaWait.map { .replicatedWrite($0) } ?? .command
        self.channel.writeAndFlush(RedisOutboundCommand(bytes: encoder.buffer, kind: kind, promise: promise, blockingTimeout: command.blockingTimeout))
            .whenFailure { promise.fail($0) }
        return promise.futureResult
    }

    func ready() throws {
        #expect(try self.outbound() == resp("HELLO", "3"))
        try self.feed("%1\r\n+proto\r\n:3\r\n")
        #expect(try self.handshake.futureResult.wait() == 3)
    }
}

@Suite("Channel handler (EmbeddedChannel)")
struct ChannelHandlerTests {
    @Test func handshakeThenPipelinedCommands() throws {
        let redis = try EmbeddedRedis()
        try redis.ready()
        let get = redis.send(GET("k"))
        let ping = redis.send(PING())
        #expect(try redis.outbound() == resp("GET", "k") + resp("PING"))
        // Reply bytes split awkwardly across reads.
        try redis.feed("$3\r\nv")
        #expect(!get.isCompleteForTest)
        try redis.feed("al\r\n+PO")
        #expect(try ByteBuffer(fromRESP: get.wait()) == ByteBuffer(string: "val"))
        #expect(!ping.isCompleteForTest)
        try redis.feed("NG\r\n")
        #expect(try String(fromRESP: ping.wait()) == "PONG")
        _ = try redis.channel.finish()
    }

    @Test func helloWithAuthFallsBackToAuthAndSelect() throws {
        let redis = try EmbeddedRedis(configuration: RedisConfiguration(username: "u", password: "p", database: 4))
        #expect(try redis.outbound() == resp("HELLO", "3", "AUTH", "u", "p"))
        try redis.feed("-ERR unknown command 'HELLO'\r\n")
        #expect(try redis.outbound() == resp("AUTH", "u", "p"))
        try redis.feed("+OK\r\n")
        #expect(try redis.outbound() == resp("SELECT", "4"))
        try redis.feed("+OK\r\n")
        #expect(try redis.handshake.futureResult.wait() == 2)
        _ = try redis.channel.finish()
    }

    @Test func wrongPasswordFailsConnect() throws {
        let redis = try EmbeddedRedis(configuration: RedisConfiguration(password: "bad"))
        _ = try redis.outbound()
        try redis.feed("-WRONGPASS invalid username-password pair or user is disabled.\r\n")
        #expect(throws: RedisServerError.self) { try redis.handshake.futureResult.wait() }
        #expect(!redis.channel.isActive)
    }

    @Test func serverErrorFailsOnlyThatCommand() throws {
        let redis = try EmbeddedRedis()
        try redis.ready()
        let first = redis.send(XGROUPCREATE(key: "s", group: "g"))
        let second = redis.send(PING())
        try redis.feed("-BUSYGROUP Consumer Group name already exists\r\n+PONG\r\n")
        #expect(throws: RedisServerError(message: "BUSYGROUP Consumer Group name already exists")) { try first.wait() }
        #expect(try String(fromRESP: second.wait()) == "PONG")
        _ = try redis.channel.finish()
    }

    @Test func closeFailsPendingCommands() throws {
        let redis = try EmbeddedRedis()
        try redis.ready()
        let pending = (0..<3).map { _ in redis.send(PING()) }
        try redis.channel.close().wait()
        for future in pending {
            #expect(throws: RedisClientError.connectionClosed) { try future.wait() }
        }
        // Writes after close fail too.
        let late = redis.send(PING())
        #expect(throws: (any Error).self) { try late.wait() }
    }

    /// A reply that cannot be parsed closes the connection; the commands sent fail as lost
    /// (outcome unknown: Redis may have run them), the parse error in the detail.
    @Test func malformedReplyFailsPendingAsConnectionClosedAndCloses() throws {
        let redis = try EmbeddedRedis()
        try redis.ready()
        let pending = redis.send(PING())
        try? redis.feed("?garbage\r\n")
        #expect(throws: RedisClientError.connectionClosed) { try pending.wait() }
        let failure: (any Error)? = {
            do {
                _ = try pending.wait()
                return nil
            } catch { return error }
        }()
        #expect(failure.map { "\($0)" }?.contains("RESPParsingError") == true, "\(String(describing: failure))")
        #expect(!redis.channel.isActive)
    }

    /// Any error that ends the connection after commands went out fails them as lost, outcome
    /// unknown: here the TLS layer's unclean shutdown (a server gone without `close_notify`),
    /// which NIOSSL fires before the channel goes inactive. They failed with the error itself,
    /// which callers took for "not run" (a 503 that a backend retries: a duplicate).
    @Test func anUncleanTLSShutdownFailsPendingAsConnectionClosed() throws {
        struct UncleanShutdown: Error {}
        let redis = try EmbeddedRedis()
        try redis.ready()
        let pending = (0..<2).map { _ in redis.send(PING()) }
        redis.channel.pipeline.fireErrorCaught(UncleanShutdown())
        for future in pending {
            #expect(throws: RedisClientError.connectionClosed) { try future.wait() }
        }
        #expect(!redis.channel.isActive)
    }

    /// During the handshake the error itself fails the connect (its cause is described there).
    @Test func aHandshakeEndedByAnErrorFailsWithIt() throws {
        struct HandshakeBroke: Error {}
        let redis = try EmbeddedRedis()
        _ = try redis.outbound()
        redis.channel.pipeline.fireErrorCaught(HandshakeBroke())
        #expect(throws: HandshakeBroke.self) { try redis.handshake.futureResult.wait() }
    }

    /// A reset connection (the server died mid-command) reads as a lost connection, outcome
    /// unknown, whatever the socket error.
    @Test func socketErrorFailsPendingAsConnectionClosed() throws {
        let redis = try EmbeddedRedis()
        try redis.ready()
        let pending = redis.send(PING())
        redis.channel.pipeline.fireErrorCaught(IOError(errnoCode: ECONNRESET, reason: "read(descriptor:pointer:size:)"))
        #expect(throws: RedisClientError.connectionClosed) { try pending.wait() }
        do {
            _ = try pending.wait()
        } catch let error as RedisClientError {
            #expect(error.detail?.contains("Connection reset by peer") == true, "\(error)")
        }
        #expect(!redis.channel.isActive)
    }

    @Test func commandTimeoutClosesConnection() throws {
        var configuration = RedisConfiguration()
        configuration.commandTimeout = .milliseconds(100)
        let redis = try EmbeddedRedis(configuration: configuration)
        try redis.ready()
        let slow = redis.send(PING())
        let blocking = redis.send(XREAD(blockMilliseconds: 0, streams: [("s", "$")]))
        redis.channel.embeddedEventLoop.advanceTime(by: .milliseconds(50))
        #expect(!slow.isCompleteForTest)
        redis.channel.embeddedEventLoop.advanceTime(by: .milliseconds(60))
        #expect(throws: RedisClientError.commandTimeout) { try slow.wait() }
        #expect(throws: RedisClientError.commandTimeout) { try blocking.wait() }
        #expect(!redis.channel.isActive)
    }

    @Test func subscriptionMessagesGoToPushHandler() throws {
        let redis = try EmbeddedRedis()
        try redis.ready()
        var encoder = RESPCommandEncoder()
        let command = SUBSCRIBE("a", "b")
        command.encode(into: &encoder)
        let promise = redis.channel.eventLoop.makePromise(of: RESPToken.self)
        redis.channel.writeAndFlush(
            RedisOutboundCommand(bytes: encoder.buffer, kind: .subscription(confirmation: "subscribe", names: ["a", "b"]), promise: promise),
            promise: nil
        )
        #expect(try redis.outbound() == resp("SUBSCRIBE", "a", "b"))
        try redis.feed(">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n")
        #expect(!promise.futureResult.isCompleteForTest)
        try redis.feed(">3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n>3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$3\r\nxyz\r\n")
        _ = try promise.futureResult.wait()
        #expect(redis.messages.withLockedValue { $0 } == [RedisPubSubMessage(kind: .channel, channel: "b", payload: ByteBuffer(string: "xyz"))])
        _ = try redis.channel.finish()
    }
}

extension EventLoopFuture {
    /// Whether the future has completed (only meaningful on an `EmbeddedEventLoop`, where callbacks run inline).
    var isCompleteForTest: Bool {
        let done = NIOLockedValueBox(false)
        self.whenComplete { _ in done.withLockedValue { $0 = true } }
        return done.withLockedValue { $0 }
    }
}
