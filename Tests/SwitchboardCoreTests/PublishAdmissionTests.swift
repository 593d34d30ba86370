import Dispatch
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import STOMPCodec
import SwitchboardCore
import SwitchboardRoutes
import SwitchboardWire
import Testing

/// A sink whose deliveries are counted on its loop and read from the test.
final class CountingSink: SubscriptionSink, @unchecked Sendable {
    let count = NIOLockedValueBox(0)
    func deliver(_ message: PublishedMessage, to subscription: LocalSubscription, batch: inout DeliveryBatch) {
        count.withLockedValue { $0 += 1 }
    }
    func flushDeliveries() {}
}

@Suite("Publish admission: a loop's fan-out backlog over the limit holds publishes")
struct PublishAdmissionTests {
    /// A hub whose one shard is on `loop`, with one subscriber to /topic/a.
    func makeHub(on loop: any EventLoop, limit: Int, timeout: TimeAmount) async throws -> (FanoutHub, CountingSink) {
        let hub = FanoutHub(eventLoops: [loop], maxBacklogBytes: limit, admissionTimeout: timeout)
        let sink = CountingSink()
        let subscription = LocalSubscription(id: "s", pattern: try DestinationPattern("/topic/a"), ackMode: .auto, sink: sink)
        try await loop.submit { hub.shard(for: loop).add(subscription) }.get()
        return (hub, sink)
    }

    /// Runs `body` with two event loops and a semaphore the tests block the first loop on
    /// (signalled at the end whatever happened, so the loops can shut down).
    func withLoops(_ count: Int = 2, _ body: ([any EventLoop], DispatchSemaphore) async throws -> Void) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: count)
        let blocked = DispatchSemaphore(value: 0)
        do {
            try await body(Array(group.makeIterator()), blocked)
        } catch {
            blocked.signal()
            try await group.shutdownGracefully()
            throw error
        }
        blocked.signal()
        try await group.shutdownGracefully()
    }

    func big(_ i: Int) -> PublishedMessage {
        PublishedMessage(destination: "/topic/a", messageID: "m\(i)", headers: [:], body: ByteBuffer(repeating: 0x78, count: 1_000))
    }

    @Test("publishes wait while the backlog is over the limit and go on once it is delivered")
    func waitsUntilDrained() async throws {
        try await withLoops { loops, blocked in
            let (hub, sink) = try await makeHub(on: loops[0], limit: 10_000, timeout: .seconds(60))
            #expect(hub.admission(on: loops[1]) == nil)
            // The shard's loop is blocked: what is handed to it queues.
            loops[0].execute { blocked.wait() }
            for i in 0..<7 { hub.deliver(big(i)) }  // 7 × 1,256 bytes: under 10,000
            #expect(!hub.isBacklogged && hub.admission(on: loops[1]) == nil)
            hub.deliver(big(7))  // over
            #expect(hub.isBacklogged)
            let admitted = try #require(hub.admission(on: loops[1]))
            let done = NIOLockedValueBox(false)
            admitted.whenComplete { _ in done.withLockedValue { $0 = true } }
            // A release would run as a task on loops[1]; none can come while loops[0] is blocked.
            try await loops[1].submit {}.get()
            #expect(!done.withLockedValue { $0 })
            blocked.signal()
            try await admitted.get()
            #expect(!hub.isBacklogged)
            #expect(sink.count.withLockedValue { $0 } == 8)
            #expect(hub.admissionCounts.waits == 1 && hub.admissionCounts.refusals == 0)
        }
    }

    /// A backend's broadcast replies to `/app` SENDs were published at once whatever the
    /// backlog: each session could add a reply of up to 1 MiB per webhook round trip to a loop
    /// already over the limit. They wait for admission as a SEND's publish does.
    @Test("a route's broadcast replies wait while the backlog is over the limit")
    func routeRepliesWaitForAdmission() async throws {
        try await withLoops { loops, blocked in
            let (hub, sink) = try await makeHub(on: loops[0], limit: 10_000, timeout: .seconds(60))
            loops[0].execute { blocked.wait() }
            for i in 0..<8 { hub.deliver(big(i)) }
            #expect(hub.isBacklogged)
            let reply = RouteReply(destination: "/topic/a", body: ByteBuffer(string: "reply"))
            let engine = InMemoryEngine(hub: hub)
            let published = try await loops[1].submit {
                STOMPSessionHandler.publishBroadcasts([reply], engine: engine, hub: hub, messageIDs: MessageIDGenerator(instanceID: "t"), on: loops[1])
            }.get()
            let done = NIOLockedValueBox(false)
            published.whenComplete { _ in done.withLockedValue { $0 = true } }
            try await loops[1].submit {}.get()
            #expect(!done.withLockedValue { $0 })
            #expect(hub.admissionCounts.waits == 1)
            blocked.signal()
            try await published.get()
            try await loops[0].submit {}.get()
            #expect(sink.count.withLockedValue { $0 } == 9)
        }
    }

    @Test("a publish that waits past the timeout is refused with FanoutOverloaded")
    func refusedAfterTimeout() async throws {
        try await withLoops { loops, blocked in
            let (hub, sink) = try await makeHub(on: loops[0], limit: 1, timeout: .milliseconds(50))
            loops[0].execute { blocked.wait() }
            hub.deliver(big(0))
            let admitted = try #require(hub.admission(on: loops[1]))
            await #expect(throws: FanoutOverloaded.self) { try await admitted.get() }
            #expect(hub.admissionCounts.refusals == 1)
            blocked.signal()
            // Delivered all the same (it was handed over before), and publishes are admitted again.
            try await loops[0].submit { _ = hub }.get()
            #expect(sink.count.withLockedValue { $0 } == 1)
            #expect(!hub.isBacklogged)
        }
    }

    /// While the backlog stays over the limit, every publish refused after its wait stayed
    /// listed until the backlog drained: a list without a bound.
    @Test("refused publishes do not pile up while the backlog stays over the limit")
    func refusedWaitersAreDropped() async throws {
        try await withLoops { loops, blocked in
            let (hub, sink) = try await makeHub(on: loops[0], limit: 1, timeout: .milliseconds(1))
            loops[0].execute { blocked.wait() }
            hub.deliver(big(0))
            for _ in 0..<200 {
                let admitted = try #require(hub.admission(on: loops[1]))
                await #expect(throws: FanoutOverloaded.self) { try await admitted.get() }
            }
            #expect(hub.admissionCounts.refusals == 200)
            #expect(hub.admissionWaitersListed < 64, "\(hub.admissionWaitersListed)")
            blocked.signal()
            // The hub and the subscriber outlive the delivery queued on the blocked loop.
            try await loops[0].submit { _ = hub }.get()
            #expect(sink.count.withLockedValue { $0 } == 1)
        }
    }

    @Test("publishes of one loop go on in the order they asked, also one asking after the release")
    func releasedInOrder() async throws {
        try await withLoops { loops, blocked in
            let (hub, sink) = try await makeHub(on: loops[0], limit: 1, timeout: .seconds(60))
            loops[0].execute { blocked.wait() }
            hub.deliver(big(0))
            let order = NIOLockedValueBox<[Int]>([])
            let waiting = try await loops[1].submit {
                (0..<3).map { i in hub.admission(on: loops[1])!.map { order.withLockedValue { $0.append(i) } } }
            }.get()
            // Blocks loops[1] until the backlog is delivered and the three are released (queued as
            // tasks behind this one): a publish asking now must still go after them.
            let late = try await loops[1].submit { () -> EventLoopFuture<Void> in
                blocked.signal()
                while hub.isBacklogged {}
                let late = hub.admission(on: loops[1])
                #expect(late != nil)
                return (late ?? loops[1].makeSucceededVoidFuture()).map { order.withLockedValue { $0.append(3) } }
            }.get()
            for future in waiting { try await future.get() }
            try await late.get()
            #expect(order.withLockedValue { $0 } == [0, 1, 2, 3])
            #expect(hub.admission(on: loops[1]) == nil)
            try await loops[0].submit { _ = (hub, sink) }.get()  // both outlive the deliveries
        }
    }

    @Test("a loop without publishes waiting is admitted at once while another loop's are still being released")
    func otherLoopsPendingDoNotHoldThisOne() async throws {
        try await withLoops(3) { loops, blocked in
            let (hub, sink) = try await makeHub(on: loops[0], limit: 1, timeout: .seconds(60))
            loops[0].execute { blocked.wait() }
            hub.deliver(big(0))
            let waiting = try await loops[1].submit { hub.admission(on: loops[1])! }.get()
            // loops[1] blocked: its publish is released (queued there) but not run yet.
            let second = DispatchSemaphore(value: 0)
            loops[1].execute { second.wait() }
            blocked.signal()
            try await loops[0].submit { _ = (hub, sink) }.get()
            #expect(!hub.isBacklogged)
            // loops[2] has nothing waiting: admitted at once (no promise left behind, which a
            // debug build traps on).
            let admitted = hub.admission(on: loops[2])
            if let admitted { try await admitted.get() }
            second.signal()
            try await waiting.get()
            #expect(hub.admission(on: loops[1]) == nil && hub.admission(on: loops[2]) == nil)
        }
    }

    @Test("no limit: never backlogged")
    func noLimit() async throws {
        try await withLoops { loops, blocked in
            let (hub, sink) = try await makeHub(on: loops[0], limit: 0, timeout: .seconds(1))
            loops[0].execute { blocked.wait() }
            for i in 0..<100 { hub.deliver(big(i)) }
            #expect(!hub.isBacklogged && hub.admission(on: loops[1]) == nil)
            blocked.signal()
            try await loops[0].submit { _ = (hub, sink) }.get()  // both outlive the deliveries
        }
    }
}
