import Foundation
import NIOCore
import NIOHTTP1
import STOMPCodec
import SwitchboardAPIModel
import SwitchboardRoutes
import SwitchboardWire
import Testing

@testable import SwitchboardServer

@Suite struct PublishBytesBudgetTests {
    @Test func reservesUpToTheLimitAndAlwaysTakesOneWhenEmpty() {
        let budget = PublishBytesBudget(limit: 1000)
        #expect(budget.reserve(600))
        #expect(budget.reserve(400), "exactly at the limit")
        #expect(!budget.reserve(1), "past it")
        #expect(budget.refusedCount == 1)
        budget.release(600)
        budget.release(400)
        #expect(budget.inFlight == 0)
        #expect(budget.reserve(5000), "with nothing in flight one is taken, whatever its size")
        #expect(!budget.reserve(1))
        budget.release(5000)
        let unbounded = PublishBytesBudget(limit: 0)
        #expect(unbounded.reserve(1 << 40) && unbounded.reserve(1 << 40))
    }

    @Test func theCostCountsBodyDestinationAndHeaders() {
        var headers = STOMPHeaders()
        headers.add("k", "vv")
        let message = PublishedMessage(destination: "/topic/a", messageID: "m-1", headers: headers, body: ByteBuffer(repeating: 0x61, count: 1000))
        #expect(PublishBytesBudget.cost(of: message) == 256 + 1000 + 8 + 1 + 2 + 32)
    }

    /// Publishes waiting for the engine (Redis reconnecting, a fan-out backlog) held their bodies
    /// with no bound across connections. Past `http.max-publish-bytes` a publish is now answered
    /// 503 at once and not published; once those in flight are answered, publishes are taken again.
    @Test func publishesPastTheBoundAreRefusedAndNotPublished() throws {
        let engine = HeldEngine()
        let body = String(repeating: "x", count: 900)
        // Each costs 256 + 900 + its destination and headers (about 1,200 bytes): two fit, three do not.
        let budget = PublishBytesBudget(limit: 2_500)
        let first = try PublishHandlerHarness(engine: engine, maxBodyBytes: 4096, publishBytes: budget)
        let second = try PublishHandlerHarness(engine: engine, maxBodyBytes: 4096, publishBytes: budget)
        try first.publish("/topic/a", body)
        try second.publish("/topic/a", body)
        try #require(engine.pending.count == 2)
        #expect(try first.responses().isEmpty && second.responses().isEmpty)
        // A third, on either connection, is past the bound: refused at once, never handed on.
        try second.publish("/topic/a", body)
        try #require(engine.pending.count == 2)
        #expect(budget.refusedCount == 1)
        // It waits for the answer ahead of it on its connection, then is a 503.
        engine.pending[1].1.succeed(())
        second.channel.embeddedEventLoop.run()
        let answers = try second.responses()
        #expect(answers.map(\.status) == [200, 503])
        #expect(answers[1].body.contains("http.max-publish-bytes"), "\(answers[1].body)")
        // The answered one left the bound: the next is taken.
        try second.publish("/topic/a", body)
        try #require(engine.pending.count == 3)
        engine.pending[0].1.succeed(())
        engine.pending[2].1.fail(RouteError(.redisUnavailable, "redis unavailable"))
        first.channel.embeddedEventLoop.run()
        second.channel.embeddedEventLoop.run()
        #expect(try first.responses().map(\.status) == [200])
        #expect(try second.responses().map(\.status) == [503])
        #expect(budget.inFlight == 0, "a failed publish leaves the bound too")
    }

    /// A batch is taken or refused whole: one item refused between two published ones put
    /// the topic out of order once the client retried it.
    @Test func aBatchPastTheBoundIsRefusedWhole() throws {
        let engine = HeldEngine()
        // Each item costs about 320 bytes.
        let budget = PublishBytesBudget(limit: 700)
        let h = try PublishHandlerHarness(engine: engine, publishBytes: budget)
        let batch = #"[{"topic":"/topic/a","message":"1"},{"topic":"/topic/a","message":"2"},{"topic":"/topic/a","message":"3"}]"#
        // With nothing in flight the batch is taken, whatever its size.
        try h.request(.POST, "/api/notifications", body: batch)
        try #require(engine.pending.count == 3)
        // Behind it, a second one is refused whole, nothing of it handed on.
        try h.request(.POST, "/api/notifications", body: batch)
        #expect(engine.pending.count == 3)
        for (_, promise) in engine.pending { promise.succeed(()) }
        h.channel.embeddedEventLoop.run()
        let answers = try h.responses()
        #expect(answers.map(\.status) == [200, 207])
        let refused = try JSONDecoder().decode(BatchAnswer.self, from: Data(answers[1].body.utf8))
        #expect(refused.published == 0 && refused.failed == 3)
        #expect(answers[1].body.contains("http.max-publish-bytes"))
        #expect(budget.inFlight == 0)
    }
}
