import Dispatch
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SwitchboardCore
import SwitchboardWire
import Testing

@testable import SwitchboardServer

/// A subscriber that costs `cost` of CPU per message, like a loop writing to hundreds of
/// connections.
private final class CostlySink: SubscriptionSink, @unchecked Sendable {
    let cost: TimeAmount
    let delivered = NIOLockedValueBox(0)

    init(cost: TimeAmount) { self.cost = cost }

    func deliver(_ message: PublishedMessage, to subscription: LocalSubscription, batch: inout DeliveryBatch) {
        let end = NIODeadline.now() + cost
        while NIODeadline.now() < end {}
        delivered.withLockedValue { $0 += 1 }
    }

    func flushDeliveries() {}
}

/// Notes that the connection's first bytes were read, and how many messages `sink` had
/// delivered by then.
private final class FirstRead: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let seen: NIOLockedValueBox<Bool>
    let sink: CostlySink?
    let deliveredWhenRead = NIOLockedValueBox<Int?>(nil)

    init(_ seen: NIOLockedValueBox<Bool>, sink: CostlySink? = nil) {
        self.seen = seen
        self.sink = sink
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let delivered = sink?.delivered.withLockedValue { $0 }
        deliveredWhenRead.withLockedValue { $0 = $0 ?? delivered }
        seen.withLockedValue { $0 = true }
    }
}

/// One event loop counting its task phases, a hub on it with one costly subscriber, and a
/// TCP connection whose server side lives on that loop.
private struct Fixture {
    let loop: any EventLoop
    let hub: FanoutHub
    let sink = CostlySink(cost: .microseconds(200))
    let seen = NIOLockedValueBox(false)
    let reader: FirstRead
    let server: any Channel
    let client: any Channel

    init(loop: any EventLoop, phases: TaskPhaseCounter, clients: MultiThreadedEventLoopGroup) async throws {
        self.loop = loop
        let hub = FanoutHub(eventLoops: [loop], taskPhase: phases.read, taskPhaseBudget: .milliseconds(2))
        self.hub = hub
        let sink = self.sink
        try await loop.submit {
            hub.shard(for: loop).add(LocalSubscription(id: "0", pattern: try DestinationPattern("/topic/a"), ackMode: .auto, sink: sink))
        }.get()
        let reader = FirstRead(seen, sink: sink)
        self.reader = reader
        server = try await ServerBootstrap(group: loop)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(reader) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        client = try await ClientBootstrap(group: clients).connect(to: server.localAddress!).get()
    }

    /// Runs `body` with a fixture on a fresh one-thread group, then shuts the groups down.
    static func run(_ body: (Fixture) async throws -> Void) async throws {
        let phases = TaskPhaseCounter()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1, metricsDelegate: phases)
        let clients = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var failure: (any Error)?
        do {
            let fixture = try await Fixture(loop: group.next(), phases: phases, clients: clients)
            try await body(fixture)
            try await fixture.client.close()
            try await fixture.server.close()
        } catch {
            failure = error
        }
        try await clients.shutdownGracefully()
        try await group.shutdownGracefully()
        if let failure { throw failure }
    }
}

/// NIO runs every task queued during a task phase in that phase, so a loop that another
/// thread keeps handing messages would never poll its sockets; ``LoopShard`` leaves the rest
/// for after the next I/O pass once the phase is past ``FanoutHub/taskPhaseBudget``.
@Suite("Event loop task phases")
struct TaskPhaseYieldTests {
    @Test("a loop delivering another thread's messages without pause still reads its sockets")
    func readsWhileHandedMessages() async throws {
        try await Fixture.run { f in
            // Another thread hands the loop a message whenever fewer than 4 wait, so one is always
            // queued while the loop delivers (the backlog stays small), until the loop has read the
            // client's byte or 10 s have passed.
            let flooding = NIOLockedValueBox(true)
            let handed = NIOLockedValueBox(0)
            let gaveUp = NIOLockedValueBox(false)
            DispatchQueue.global().async {
                let deadline = NIODeadline.now() + .seconds(10)
                var count = 0
                while !f.seen.withLockedValue({ $0 }) {
                    if NIODeadline.now() > deadline {
                        gaveUp.withLockedValue { $0 = true }
                        break
                    }
                    if count - f.sink.delivered.withLockedValue({ $0 }) < 4 {
                        f.hub.deliver(PublishedMessage(destination: "/topic/a", messageID: "m\(count)", headers: [:], body: ByteBuffer(string: "x")))
                        count += 1
                        handed.withLockedValue { $0 = count }
                    }
                }
                flooding.withLockedValue { $0 = false }
            }
            // The loop is busy delivering before the byte is sent.
            while f.sink.delivered.withLockedValue({ $0 }) < 20 { try await Task.sleep(for: .milliseconds(1)) }
            let handedBeforeWrite = handed.withLockedValue { $0 }
            try await f.client.writeAndFlush(ByteBuffer(string: "x")).get()
            while flooding.withLockedValue({ $0 }) { try await Task.sleep(for: .milliseconds(5)) }

            // Counted in messages, not time: with the budget the loop polls after about 2 ms of
            // deliveries (10 messages); without it, only when the other thread happens to pause.
            let handedMeanwhile = handed.withLockedValue { $0 } - handedBeforeWrite
            #expect(!gaveUp.withLockedValue { $0 }, "the loop read nothing while it was handed \(handedMeanwhile) messages")
            #expect(f.seen.withLockedValue { $0 })
            #expect(handedMeanwhile < 200, "the loop delivered \(handedMeanwhile) messages before reading a waiting socket")
        }
    }

    @Test("a burst handed over at once is delivered in parts, with the loop's sockets read between them")
    func readsWithinABurst() async throws {
        try await Fixture.run { f in
            // 400 messages (80 ms of deliveries) handed over from this thread while the loop is
            // held in a task, so that one drain finds them all; the byte is written once the loop
            // is delivering them.
            let total = 400
            let release = NIOLockedValueBox(false)
            let held = f.loop.submit { while !release.withLockedValue({ $0 }) {} }
            for i in 0..<total {
                f.hub.deliver(PublishedMessage(destination: "/topic/a", messageID: "m\(i)", headers: [:], body: ByteBuffer(string: "x")))
            }
            release.withLockedValue { $0 = true }
            try await held.get()
            while f.sink.delivered.withLockedValue({ $0 }) < 5 { try await Task.sleep(for: .milliseconds(1)) }
            try await f.client.writeAndFlush(ByteBuffer(string: "x")).get()
            while f.sink.delivered.withLockedValue({ $0 }) < total || !f.seen.withLockedValue({ $0 }) {
                try await Task.sleep(for: .milliseconds(5))
            }

            // Counted in messages: with the budget the loop polls after about 2 ms of the burst
            // (10 messages); without it, only once all 400 are delivered.
            let deliveredWhenRead = f.reader.deliveredWhenRead.withLockedValue { $0 } ?? total
            #expect(deliveredWhenRead < total - 100, "the loop delivered \(deliveredWhenRead) of \(total) messages before reading a waiting socket")
        }
    }
}
