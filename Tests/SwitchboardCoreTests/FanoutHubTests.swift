import Dispatch
import NIOCore
import NIOEmbedded
import NIOPosix
import STOMPCodec
import SwitchboardCore
import SwitchboardWire
import Testing

/// Records what a shard hands to a session.
final class RecordingSink: SubscriptionSink {
    var deliveries: [(messageID: String, subscription: String, destination: String)] = []
    var flushes = 0
    /// Deliveries seen at each flush.
    var deliveredAtFlush: [Int] = []

    func deliver(_ message: PublishedMessage, to subscription: LocalSubscription, batch: inout DeliveryBatch) {
        deliveries.append((message.messageID, subscription.id, message.destination))
    }

    func flushDeliveries() {
        flushes += 1
        deliveredAtFlush.append(deliveries.count)
    }
}

/// A session that records the messages addressed to it in `sink`'s deliveries.
final class RecordingSession: SessionDeliveryTarget {
    let sessionID: String
    let sink: RecordingSink
    init(sessionID: String, sink: RecordingSink) {
        self.sessionID = sessionID
        self.sink = sink
    }
    func deliverToOwnSubscriptions(_ message: PublishedMessage) {
        sink.deliveries.append((message.messageID, sessionID, message.destination))
    }
}

final class RecordingObserver: InterestObserver, @unchecked Sendable {
    var events: [String] = []
    var generations: [UInt64] = []
    func interestActivated(_ pattern: DestinationPattern, generation: UInt64) {
        events.append("+\(pattern.text)")
        generations.append(generation)
    }
    func interestDeactivated(_ pattern: DestinationPattern) { events.append("-\(pattern.text)") }
}

func message(_ destination: String, _ id: String = "m") -> PublishedMessage {
    PublishedMessage(destination: destination, messageID: id, headers: [:], body: ByteBuffer(string: id))
}

/// A hub with one embedded loop, created on the test's own thread (EmbeddedEventLoop is
/// bound to the thread that made it).
struct HubFixture {
    let loop = EmbeddedEventLoop()
    var hub = FanoutHub()
    var shard: LoopShard { hub.shard(for: loop) }

    func subscribe(_ sink: RecordingSink, _ id: String, _ pattern: String, ack: AckMode = .auto) throws -> LocalSubscription {
        let sub = LocalSubscription(id: id, pattern: try DestinationPattern(pattern), ackMode: ack, sink: sink)
        shard.add(sub)
        return sub
    }

}

@Suite("FanoutHub and LoopShard")
struct FanoutHubTests {
    @Test("the shard of a loop is created once")
    func shardPerLoop() {
        let f = HubFixture(), loop = f.loop, hub = f.hub, shard = f.shard
        #expect(hub.shard(for: loop) === shard)
        let other = EmbeddedEventLoop()
        #expect(hub.shard(for: other) !== shard)
        #expect(hub.shards.count == 2)
    }

    @Test("three sinks each get one message and one flush")
    func threeSinks() throws {
        let f = HubFixture(), loop = f.loop, hub = f.hub, shard = f.shard
        let sinks = [RecordingSink(), RecordingSink(), RecordingSink()]
        var subs: [LocalSubscription] = []
        for (i, sink) in sinks.enumerated() { subs.append(try f.subscribe(sink, "s\(i)", "/topic/a")) }
        #expect(shard.subscriptionCount == 3)
        hub.deliver(message("/topic/a", "m1"))
        #expect(sinks.allSatisfy { $0.flushes == 0 }, "flush happens at the end of the batch")
        loop.run()
        for (i, sink) in sinks.enumerated() {
            #expect(sink.deliveries.map(\.messageID) == ["m1"])
            #expect(sink.deliveries.map(\.subscription) == ["s\(i)"])
            #expect(sink.flushes == 1)
        }
        _ = subs
    }

    @Test("a burst of five messages costs one flush per sink")
    func burstOneFlush() throws {
        let f = HubFixture(), loop = f.loop, hub = f.hub
        let sinks = [RecordingSink(), RecordingSink(), RecordingSink()]
        for (i, sink) in sinks.enumerated() { _ = try f.subscribe(sink, "s\(i)", "/topic/a") }
        // The second sink also has a wildcard subscription: still one flush.
        _ = try f.subscribe(sinks[1], "w", "/topic/*")
        for i in 1...5 { hub.deliver(message("/topic/a", "m\(i)")) }
        loop.run()
        #expect(sinks[0].deliveries.map(\.messageID) == ["m1", "m2", "m3", "m4", "m5"])
        #expect(sinks[1].deliveries.count == 10)
        #expect(sinks.map(\.flushes) == [1, 1, 1])
        #expect(sinks[1].deliveredAtFlush == [10])
        // A later batch flushes again.
        hub.deliver(message("/topic/a", "m6"))
        loop.run()
        #expect(sinks.map(\.flushes) == [2, 2, 2])
    }

    @Test("messages go only to matching subscriptions; nothing is flushed for no match")
    func routing() throws {
        let f = HubFixture(), loop = f.loop, hub = f.hub
        let a = RecordingSink(), b = RecordingSink(), c = RecordingSink()
        _ = try f.subscribe(a, "1", "/topic/a")
        _ = try f.subscribe(b, "2", "/topic/**")
        _ = try f.subscribe(c, "3", "/topic/b.*")
        hub.deliver(message("/topic/b.x", "bx"))
        hub.deliver(message("/topic/a", "a"))
        hub.deliver(message("/queue/a", "q"))
        loop.run()
        #expect(a.deliveries.map(\.messageID) == ["a"])
        #expect(b.deliveries.map(\.messageID) == ["bx", "a"])
        #expect(c.deliveries.map(\.messageID) == ["bx"])
        #expect(hub.hasSubscribers(for: "/topic/zzz"))
        #expect(!hub.hasSubscribers(for: "/queue/a"))
        let before = a.flushes
        hub.deliver(message("/queue/a"))
        loop.run()
        #expect(a.flushes == before)
    }

    @Test("removed subscriptions get nothing; others in the bucket still do")
    func removal() throws {
        let f = HubFixture(), loop = f.loop, hub = f.hub, shard = f.shard
        let sinks = [RecordingSink(), RecordingSink(), RecordingSink()]
        let subs = try sinks.enumerated().map { try f.subscribe($0.element, "s\($0.offset)", "/topic/a") }
        shard.remove(subs[0])
        shard.remove(subs[0])  // twice is harmless
        #expect(shard.subscriptionCount == 2)
        hub.deliver(message("/topic/a", "m1"))
        loop.run()
        #expect(sinks.map(\.deliveries.count) == [0, 1, 1])
        shard.remove(subs[2])
        shard.remove(subs[1])
        #expect(shard.subscriptionCount == 0)
        #expect(!hub.hasSubscribers(for: "/topic/a"))
        #expect(hub.activeDestinationCount == 0)
        hub.deliver(message("/topic/a", "m2"))
        loop.run()
        #expect(sinks.map(\.deliveries.count) == [0, 1, 1])
    }

    @Test("the interest observer hears first and last subscriber once (exact and wildcard)")
    func interestObserver() throws {
        let f = HubFixture(), hub = f.hub, shard = f.shard
        let observer = RecordingObserver()
        hub.setInterestObserver(observer)
        let x = RecordingSink(), y = RecordingSink()
        let e1 = try f.subscribe(x, "1", "/topic/a")
        let e2 = try f.subscribe(y, "2", "/topic/a")
        let w1 = try f.subscribe(x, "3", "/topic/**")
        let w2 = try f.subscribe(y, "4", "/topic/**")
        #expect(observer.events == ["+/topic/a", "+/topic/**"])
        #expect(hub.activeDestinationCount == 2)
        shard.remove(e1)
        shard.remove(w2)
        #expect(observer.events == ["+/topic/a", "+/topic/**"])
        shard.remove(e2)
        #expect(observer.events == ["+/topic/a", "+/topic/**", "-/topic/a"])
        shard.remove(w1)
        #expect(observer.events == ["+/topic/a", "+/topic/**", "-/topic/a", "-/topic/**"])
        // Interest comes back on a new first subscriber.
        _ = try f.subscribe(x, "5", "/topic/a")
        #expect(observer.events.last == "+/topic/a")
        #expect(observer.events.count == 5)
    }

    @Test("interest is per destination across shards: one activation for two loops")
    func interestAcrossShards() throws {
        let f = HubFixture(), loop = f.loop, hub = f.hub, shard = f.shard
        let observer = RecordingObserver()
        hub.setInterestObserver(observer)
        let otherLoop = EmbeddedEventLoop()
        let other = hub.shard(for: otherLoop)
        let x = RecordingSink(), y = RecordingSink()
        let a = try f.subscribe(x, "1", "/topic/a")
        let b = LocalSubscription(id: "2", pattern: try DestinationPattern("/topic/a"), ackMode: .auto, sink: y)
        other.add(b)
        #expect(observer.events == ["+/topic/a"])
        hub.deliver(message("/topic/a", "m"))
        loop.run()
        otherLoop.run()
        #expect(x.deliveries.count == 1 && y.deliveries.count == 1)
        shard.remove(a)
        #expect(observer.events == ["+/topic/a"])
        other.remove(b)
        #expect(observer.events == ["+/topic/a", "-/topic/a"])
    }

    /// A copy the Redis engine handed over for a destination's activation, still queued for a
    /// loop when the last subscriber left and a new one came (a new activation: its own Redis
    /// subscription and position), reached the new subscriber: for a destination with history
    /// it cut a resume's replay short (the messages between it and the new position were lost).
    @Test("a copy of an earlier activation of a destination does not reach a later one's subscribers")
    func staleActivationCopies() throws {
        let f = HubFixture(), loop = f.loop, hub = f.hub, shard = f.shard
        let observer = RecordingObserver()
        hub.setInterestObserver(observer)
        let x = RecordingSink(), y = RecordingSink(), w = RecordingSink()
        let a = try f.subscribe(x, "1", "/topic/a")
        _ = try f.subscribe(w, "9", "/topic/*")
        let first = try #require(observer.generations.first)
        hub.deliver(message("/topic/a", "m1"), scope: .exact, generation: first)
        shard.remove(a)
        _ = try f.subscribe(y, "2", "/topic/a")
        let second = try #require(observer.generations.last)
        #expect(observer.generations.count == 3 && second != first)
        hub.deliver(message("/topic/a", "stale"), scope: .exact, generation: first)
        hub.deliver(message("/topic/a", "m2"), scope: .exact, generation: second)
        hub.deliver(message("/topic/a", "all"))
        loop.run()
        #expect(x.deliveries.map(\.messageID) == ["m1"])
        #expect(y.deliveries.map(\.messageID) == ["m2", "all"])
        #expect(w.deliveries.map(\.messageID) == ["all"])
    }

    /// A backlog handed over while the loop was busy was delivered in one task: every
    /// subscriber's buffer took all of it before a single flush (at the backlog limit, 64 MiB
    /// each). Now a task delivers a chunk, and the flushes it scheduled go before the next.
    @Test("a backlog is delivered in chunks, each flushed before the next", arguments: [TimeAmount.zero, .milliseconds(50)])
    func backlogInChunks(writeCoalescing: TimeAmount) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        // With write coalescing (as in busy mode), a pass is due only after the interval.
        let hub = FanoutHub(writeCoalescing: writeCoalescing)
        let sink = RecordingSink()
        let subscription = LocalSubscription(id: "s", pattern: try DestinationPattern("/topic/a"), ackMode: .auto, sink: sink)
        try await loop.submit { hub.shard(for: loop).add(subscription) }.get()
        // The loop is held while the backlog is handed over from this thread.
        let release = DispatchSemaphore(value: 0)
        loop.execute { release.wait() }
        let count = 10_000
        for i in 0..<count { hub.deliver(message("/topic/a", "m\(i)")) }
        release.signal()
        let deadline = ContinuousClock.now + .seconds(30)
        while try await loop.submit({ sink.deliveries.count }).get() < count, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        let (ids, flushedAt) = try await loop.submit { (sink.deliveries.map(\.messageID), sink.deliveredAtFlush) }.get()
        #expect(ids == (0..<count).map { "m\($0)" }, "in order")
        let chunks = zip(flushedAt, [0] + flushedAt).map { $0 - $1 }
        #expect(flushedAt.count > 1 && chunks.max()! <= LoopShard.drainChunkBytes / 256, "\(chunks)")
        try await group.shutdownGracefully()
        _ = subscription
    }

    /// A message addressed to one session (a reply to its sender) was a task of its own on the
    /// session's loop: it overtook a backlog drained in chunks (each next chunk is a task queued
    /// behind it), and counted in no backlog. It now joins the inbox.
    @Test("a message addressed to a session keeps its place behind a backlog, and counts in it")
    func sessionMessagesJoinTheInbox() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let hub = FanoutHub(maxBacklogBytes: 100 * 1024)
        let sink = RecordingSink()
        let session = RecordingSession(sessionID: "own", sink: sink)
        let subscription = LocalSubscription(id: "s", pattern: try DestinationPattern("/topic/a"), ackMode: .auto, sink: sink)
        try await loop.submit {
            hub.shard(for: loop).add(subscription)
            hub.shard(for: loop).registerSession(session)
        }.get()
        let release = DispatchSemaphore(value: 0)
        loop.execute { release.wait() }
        let body = ByteBuffer(repeating: 0x61, count: 1_024)
        let count = 300  // about 384 KiB: more than one chunk
        for i in 0..<count { hub.deliver(PublishedMessage(destination: "/topic/a", messageID: "m\(i)", headers: [:], body: body)) }
        #expect(hub.deliver(message("/topic/a", "own"), toSession: "own"))
        release.signal()
        let deadline = ContinuousClock.now + .seconds(30)
        while try await loop.submit({ sink.deliveries.count }).get() < count + 1, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        let ids = try await loop.submit { sink.deliveries.map(\.messageID) }.get()
        #expect(ids == (0..<count).map { "m\($0)" } + ["own"])

        // Addressed to the session only, the backlog still counts it.
        loop.execute { release.wait() }
        for i in 0..<200 { hub.deliver(PublishedMessage(destination: "/topic/a", messageID: "r\(i)", headers: [:], body: body), toSession: "own") }
        #expect(hub.isBacklogged)
        release.signal()
        while try await loop.submit({ sink.deliveries.count }).get() < count + 201, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(!hub.isBacklogged)
        try await group.shutdownGracefully()
        _ = subscription
    }

    /// Each chunk flushed at once left its pass task behind; firing, it cleared the flag while
    /// the real pass was pending, and under steady traffic those extra passes kept replacing
    /// themselves: coalescing was defeated until the traffic paused.
    @Test("after a backlog, write coalescing spaces passes out again")
    func coalescingAfterABacklog() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let hub = FanoutHub(writeCoalescing: .milliseconds(50))
        let sink = RecordingSink()
        let subscription = LocalSubscription(id: "s", pattern: try DestinationPattern("/topic/a"), ackMode: .auto, sink: sink)
        try await loop.submit { hub.shard(for: loop).add(subscription) }.get()
        let release = DispatchSemaphore(value: 0)
        loop.execute { release.wait() }
        for i in 0..<10_000 { hub.deliver(message("/topic/a", "m\(i)")) }
        release.signal()
        let deadline = ContinuousClock.now + .seconds(30)
        while try await loop.submit({ sink.deliveries.count }).get() < 10_000, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        // Steady traffic on the loop, one message a millisecond for 300 ms.
        let before = try await loop.submit { sink.flushes }.get()
        let started = NIODeadline.now()
        let ticks = try await loop.submit {
            var n = 0
            let promise = loop.makePromise(of: Int.self)
            loop.scheduleRepeatedTask(initialDelay: .milliseconds(1), delay: .milliseconds(1)) { task in
                hub.deliver(message("/topic/a", "t\(n)"))
                n += 1
                if n == 300 {
                    task.cancel()
                    promise.succeed(n)
                }
            }
            return promise.futureResult
        }.get().get()
        let windows = Int((NIODeadline.now() - started).nanoseconds / 50_000_000)
        // The last pass, due up to 50 ms later.
        try await Task.sleep(for: .milliseconds(200))
        let (flushes, delivered) = try await loop.submit { (sink.flushes - before, sink.deliveries.count) }.get()
        #expect(delivered == 10_000 + ticks)
        // One pass per 50 ms at most while the traffic lasted (300 ms, longer on a loaded
        // machine), the first at once, and the last.
        #expect(flushes <= windows + 3, "\(flushes) passes in \(windows) windows")
        try await group.shutdownGracefully()
        _ = subscription
    }

    @Test("markDirty and scheduleFlush batch flushes for direct writes")
    func markDirty() {
        let f = HubFixture(), loop = f.loop, shard = f.shard
        let sink = RecordingSink()
        shard.markDirty(sink)
        shard.markDirty(sink)
        shard.scheduleFlush()
        shard.scheduleFlush()
        #expect(sink.flushes == 0)
        loop.run()
        #expect(sink.flushes == 1)
        shard.scheduleFlush()  // nothing dirty
        loop.run()
        #expect(sink.flushes == 1)
    }

    @Test("write coalescing: a pass right after another waits out the interval and carries every message since")
    func coalescing() throws {
        var f = HubFixture()
        f.hub = FanoutHub(writeCoalescing: .milliseconds(2))
        let loop = f.loop, hub = f.hub
        let sink = RecordingSink()
        _ = try f.subscribe(sink, "0", "/topic/a")
        loop.advanceTime(by: .seconds(1))
        hub.deliver(message("/topic/a", "m1"))
        loop.run()
        #expect(sink.deliveredAtFlush == [1], "an isolated message is flushed at once")
        hub.deliver(message("/topic/a", "m2"))
        loop.run()
        hub.deliver(message("/topic/a", "m3"))
        loop.run()
        #expect(sink.deliveredAtFlush == [1], "passes closer than the interval wait")
        loop.advanceTime(by: .milliseconds(2))
        #expect(sink.deliveredAtFlush == [1, 3], "one flush carries m2 and m3")
        loop.advanceTime(by: .milliseconds(5))
        hub.deliver(message("/topic/a", "m4"))
        loop.run()
        #expect(sink.deliveredAtFlush == [1, 3, 4], "after a quiet interval the flush is immediate again")
    }

    @Test("without write coalescing every batch is flushed at once")
    func noCoalescing() throws {
        let f = HubFixture(), loop = f.loop, hub = f.hub
        let sink = RecordingSink()
        _ = try f.subscribe(sink, "0", "/topic/a")
        for i in 1...3 {
            hub.deliver(message("/topic/a", "m\(i)"))
            loop.run()
        }
        #expect(sink.deliveredAtFlush == [1, 2, 3])
    }
}
