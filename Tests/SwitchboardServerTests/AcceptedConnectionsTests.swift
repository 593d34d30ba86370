import Logging
import NIOCore
import NIOEmbedded
import Testing

@testable import SwitchboardServer

/// The listener's record of accepted connections: quiesce, completion once all closed, the
/// race with the listening socket's close, and closing what is left at the deadline.
@Suite struct AcceptedConnectionsTests {
    /// Counts the quiesce events a connection gets.
    final class QuiesceCounter: ChannelInboundHandler {
        typealias InboundIn = Never
        var events = 0
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if event is ChannelShouldQuiesceEvent { events += 1 }
            context.fireUserInboundEventTriggered(event)
        }
    }

    static func connection() throws -> (EmbeddedChannel, QuiesceCounter) {
        let counter = QuiesceCounter()
        let channel = EmbeddedChannel(handler: counter)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 9)).wait()
        return (channel, counter)
    }

    @Test func quiesceTellsEveryConnectionAndCompletesWhenTheLastCloses() throws {
        let connections = AcceptedConnections()
        let listening = EmbeddedChannel(handler: connections.makeHandler())
        let (a, countA) = try Self.connection()
        let (b, countB) = try Self.connection()
        try listening.writeInbound(a as any Channel)
        try listening.writeInbound(b as any Channel)
        // Handed on to NIO's accept handler (here, the end of the pipeline).
        #expect(try listening.readInbound(as: (any Channel).self) != nil)
        #expect(connections.count == 2)

        let done = connections.quiesce(listeningSocket: listening)
        #expect(!listening.isActive)
        a.embeddedEventLoop.run()
        b.embeddedEventLoop.run()
        #expect(countA.events == 1 && countB.events == 1)
        var completed = false
        done.whenSuccess { completed = true }
        _ = try a.finish()
        #expect(!completed && connections.count == 1)
        _ = try b.finish()
        #expect(completed && connections.count == 0)
    }

    @Test func withNoConnectionTheQuiesceIsDoneAtOnce() throws {
        let connections = AcceptedConnections()
        let listening = EmbeddedChannel(handler: connections.makeHandler())
        var completed = false
        connections.quiesce(listeningSocket: listening).whenSuccess { completed = true }
        #expect(completed)
    }

    @Test func aConnectionAcceptedOnceTheQuiesceBeganIsRefused() throws {
        let connections = AcceptedConnections()
        let listening = EmbeddedChannel(handler: connections.makeHandler())
        _ = connections.quiesce(listeningSocket: listening)
        let (late, _) = try Self.connection()
        #expect(!connections.accepted(late))
        #expect(connections.count == 0)
    }

    @Test func closeRemainingClosesWhatIsStillOpen() throws {
        let connections = AcceptedConnections()
        let listening = EmbeddedChannel(handler: connections.makeHandler())
        let (stuck, _) = try Self.connection()
        try listening.writeInbound(stuck as any Channel)
        var completed = false
        connections.quiesce(listeningSocket: listening).whenSuccess { completed = true }
        stuck.embeddedEventLoop.run()
        // It ignored the quiesce: still open.
        #expect(stuck.isActive && !completed)
        #expect(connections.closeRemaining(logger: Logger(label: "test")) == 1)
        stuck.embeddedEventLoop.run()
        #expect(!stuck.isActive && completed && connections.count == 0)
    }

    @Test func handlerTypesAreReadFromThePipelineDescription() throws {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(QuiesceCounter())
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineDecoder()))
        #expect(AcceptedConnections.handlerTypes(channel.pipeline.debugDescription) == ["QuiesceCounter", "ByteToMessageHandler<LineDecoder>"])
        #expect(AcceptedConnections.handlerTypes(EmbeddedChannel().pipeline.debugDescription) == [])
    }

    struct LineDecoder: ByteToMessageDecoder {
        typealias InboundOut = ByteBuffer
        func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState { .needMoreData }
    }
}
