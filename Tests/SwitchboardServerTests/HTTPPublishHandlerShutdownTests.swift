import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOHTTPTypes
import SwitchboardCore
import Testing

@testable import SwitchboardServer

/// ``HTTPPublishHandler`` at a graceful shutdown (`ChannelShouldQuiesceEvent`): the answers
/// owed are written, no new request is taken, and the connection closes.
@Suite struct HTTPPublishHandlerShutdownTests {
    @Test func shutdownClosesAnIdleConnectionAtOnce() throws {
        let h = try PublishHandlerHarness(idleTimeout: .seconds(10))
        try h.publish("/topic/a", "1")
        #expect(try h.responses().map(\.status) == [200])
        h.channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        h.channel.embeddedEventLoop.run()
        #expect(!h.channel.isActive)
    }

    @Test func shutdownClosesAtTheGraceWhenAnAnswerIsStillOwed() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine, idleTimeout: .seconds(60), shutdownGrace: .seconds(5))
        try h.publish("/topic/a", "1")  // its answer waits for the engine, which never answers
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        h.channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(4))
        #expect(h.channel.isActive)
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(!h.channel.isActive)
    }

    /// A request read after a graceful shutdown began is not taken: a client pipelining on kept
    /// the connection busy until the grace cut it, its publishes made and their answers never
    /// written (a retry on another instance delivered them twice). The answers owed are
    /// written, the last with `Connection: close`, and the connection closes.
    @Test func shutdownTakesNoNewRequest() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine, idleTimeout: .seconds(60), shutdownGrace: .seconds(5))
        try h.publish("/topic/a", "1")
        h.channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        try h.publish("/topic/a", "2")  // after the shutdown began
        h.channel.embeddedEventLoop.run()
        #expect(engine.pending.count == 1, "the second publish was not made")
        engine.pending[0].1.succeed(())
        h.channel.embeddedEventLoop.run()
        let answers = try h.responses()
        #expect(answers.map(\.status) == [200])
        #expect(answers.first?.head.headers["connection"] == ["close"])
        #expect(!h.channel.isActive)
    }

    @Test func shutdownKeepsAnIdleTimeoutShorterThanTheGrace() throws {
        let h = try PublishHandlerHarness(idleTimeout: .seconds(2), shutdownGrace: .seconds(60))
        try h.request(.POST, "/api/notification", body: "{", end: false)  // the rest never comes
        h.channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(h.channel.isActive)
        h.channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(!h.channel.isActive)
    }

    @Test func shutdownWaitsForTheAnswersOwedOnBothPaths() throws {
        let engine = HeldEngine()
        let h = try PublishHandlerHarness(engine: engine)
        try h.publish("/topic/a", "1")
        try h.request(.GET, "/health")  // forwarded once the publish is answered
        h.channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        h.channel.embeddedEventLoop.run()
        #expect(h.channel.isActive)
        engine.pending[0].1.succeed(())
        h.channel.embeddedEventLoop.run()
        #expect(h.channel.isActive)  // the router's answer is still owed
        #expect(h.recorder.paths == ["/health"])
        h.recorder.respond(.ok)
        h.channel.embeddedEventLoop.run()
        #expect(try h.responses().map(\.status) == [200, 200])
        #expect(!h.channel.isActive)
    }
}
