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

/// Notes that the connection's first bytes were read.
private final class FirstRead: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let seen: NIOLockedValueBox<Bool>

    init(_ seen: NIOLockedValueBox<Bool>) { self.seen = seen }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        seen.withLockedValue { $0 = true }
    }
}

/// NIO runs every task queued during a task phase in that phase, so a loop that another
/// thread keeps handing messages would never poll its sockets; ``LoopShard`` leaves the rest
/// for after the next I/O pass once the phase is past ``FanoutHub/taskPhaseBudget``.
@Suite("Event loop task phases")
struct TaskPhaseYieldTests {
    @Test("a loop delivering another thread's messages without pause still reads its sockets")
    func readsWhileHandedMessages() async throws {
        let phases = TaskPhaseCounter()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1, metricsDelegate: phases)
        let clients = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var failure: (any Error)?
        do {
            try await flood(group.next(), phases: phases, clients: clients)
        } catch {
            failure = error
        }
        try await clients.shutdownGracefully()
        try await group.shutdownGracefully()
        if let failure { throw failure }
    }

    private func flood(_ loop: any EventLoop, phases: TaskPhaseCounter, clients: MultiThreadedEventLoopGroup) async throws {
        let hub = FanoutHub(eventLoops: [loop], taskPhase: phases.read, taskPhaseBudget: .milliseconds(2))
        let sink = CostlySink(cost: .microseconds(200))
        try await loop.submit {
            hub.shard(for: loop).add(LocalSubscription(id: "0", pattern: try DestinationPattern("/topic/a"), ackMode: .auto, sink: sink))
        }.get()
        let seen = NIOLockedValueBox(false)
        let server = try await ServerBootstrap(group: loop)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(FirstRead(seen)) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let client = try await ClientBootstrap(group: clients).connect(to: server.localAddress!).get()

        // Another thread hands the loop a message whenever fewer than 4 wait, so one is always
        // queued while the loop delivers (the backlog stays small), until the loop has read the
        // client's byte or 10 s have passed.
        let flooding = NIOLockedValueBox(true)
        let handed = NIOLockedValueBox(0)
        let gaveUp = NIOLockedValueBox(false)
        DispatchQueue.global().async {
            let deadline = NIODeadline.now() + .seconds(10)
            var count = 0
            while !seen.withLockedValue({ $0 }) {
                if NIODeadline.now() > deadline {
                    gaveUp.withLockedValue { $0 = true }
                    break
                }
                if count - sink.delivered.withLockedValue({ $0 }) < 4 {
                    hub.deliver(PublishedMessage(destination: "/topic/a", messageID: "m\(count)", headers: [:], body: ByteBuffer(string: "x")))
                    count += 1
                    handed.withLockedValue { $0 = count }
                }
            }
            flooding.withLockedValue { $0 = false }
        }
        // The loop is busy delivering before the byte is sent.
        while sink.delivered.withLockedValue({ $0 }) < 20 { try await Task.sleep(for: .milliseconds(1)) }
        // Counted from when the byte is in the socket (the write's completion, on the client's
        // loop): read before the write, a loaded machine could delay the write itself past 200.
        let handedAtWrite = NIOLockedValueBox(0)
        let written = client.eventLoop.makePromise(of: Void.self)
        written.futureResult.whenComplete { _ in handedAtWrite.withLockedValue { $0 = handed.withLockedValue { $0 } } }
        client.writeAndFlush(ByteBuffer(string: "x"), promise: written)
        try await written.futureResult.get()
        while flooding.withLockedValue({ $0 }) { try await Task.sleep(for: .milliseconds(5)) }

        // Counted in messages, not time: with the budget the loop polls after about 2 ms of
        // deliveries (10 messages); without it, only when the other thread happens to pause.
        let handedMeanwhile = handed.withLockedValue { $0 } - handedAtWrite.withLockedValue { $0 }
        #expect(!gaveUp.withLockedValue { $0 }, "the loop read nothing while it was handed \(handedMeanwhile) messages")
        #expect(seen.withLockedValue { $0 })
        #expect(handedMeanwhile < 200, "the loop delivered \(handedMeanwhile) messages before reading a waiting socket")
        try await client.close()
        try await server.close()
    }
}
