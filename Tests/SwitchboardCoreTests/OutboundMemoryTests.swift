import NIOCore
import NIOEmbedded
import Testing

@testable import SwitchboardCore

/// `limits.max-pending-bytes-total`: past it, each loop closes its slowest consumers, its
/// share of the excess; the others go on.
@Suite struct OutboundMemoryTests {
    @Test func theLargestAreChosenUntilTheirSumCoversWhatIsShed() {
        #expect(OutboundMemory.slowest([10, 500, 30, 200], toShed: 600) == [1, 3])
        #expect(OutboundMemory.slowest([10, 500, 30, 200], toShed: 500) == [1])
        #expect(OutboundMemory.slowest([10, 500, 30, 200], toShed: 0) == [])
        // Never more than there is.
        #expect(OutboundMemory.slowest([10, 0, 5], toShed: 1_000) == [0, 2])
    }

    @Test func eachLoopShedsItsShareOfTheExcessInProportion() {
        let memory = OutboundMemory(limit: 1_000, loops: 2)
        #expect(memory.share(ofExcess: 900, loopBytes: 900) == 0, "within the cap")
        #expect(memory.share(ofExcess: 2_000, loopBytes: 1_500) == 750)
        #expect(memory.share(ofExcess: 2_000, loopBytes: 500) == 250)
        #expect(OutboundMemory(limit: 0, loops: 1).share(ofExcess: 1 << 40, loopBytes: 1 << 40) == 0, "0: no cap")
    }

    @Test func theInstanceTotalIsTheSumOfTheLoopsLastReports() {
        let memory = OutboundMemory(limit: 0, loops: 2)
        #expect(memory.report(100, loop: 0) == 100)
        #expect(memory.report(50, loop: 1) == 150)
        #expect(memory.report(10, loop: 0) == 60)
        #expect(memory.total == 60)
    }

    @Test func aSweepOverTheCapClosesTheSlowestConsumersOnly() {
        let loop = EmbeddedEventLoop()
        let hub = FanoutHub(eventLoops: [loop], heartbeatResolution: .milliseconds(100), maxPendingBytesTotal: 10_000)
        let shard = hub.shard(for: loop)
        let clients = [0, 6_000, 2_000, 5_000, 100].map { bytes -> TickRecorder in
            let client = TickRecorder(every: nil)
            client.pendingOutboundBytes = bytes
            shard.addHeartbeatClient(client)
            return client
        }
        // 13,100 held, 3,100 over: the one with 6,000 goes.
        #expect(shard.sweepOutbound() == 1)
        #expect(clients.map { $0.closed != nil } == [false, true, false, false, false])
        #expect(clients[1].closed!.contains("limits.max-pending-bytes-total (10000 bytes)"))
        #expect(clients[1].closed!.contains("6000 bytes not taken"))
        #expect(hub.outbound.shedCount == 1)
        #expect(hub.outbound.total == 7_100, "what it freed is not counted again by the other loops")
    }

    @Test func withinTheCapOrWithoutOneNothingIsClosedAndTheTotalIsStillReported() {
        for limit in [0, 20_000] {
            let loop = EmbeddedEventLoop()
            let hub = FanoutHub(eventLoops: [loop], heartbeatResolution: .milliseconds(100), maxPendingBytesTotal: limit)
            let shard = hub.shard(for: loop)
            let client = TickRecorder(every: nil)
            client.pendingOutboundBytes = 15_000
            shard.addHeartbeatClient(client)
            #expect(shard.sweepOutbound() == 0)
            #expect(client.closed == nil)
            #expect(hub.outbound.total == 15_000)
        }
    }

    @Test func theSweepRunsAboutOnceASecondOnTheHeartBeatTimer() {
        let loop = EmbeddedEventLoop()
        let hub = FanoutHub(eventLoops: [loop], heartbeatResolution: .milliseconds(100), maxPendingBytesTotal: 1_000)
        let client = TickRecorder(every: nil)
        client.pendingOutboundBytes = 5_000
        hub.shard(for: loop).addHeartbeatClient(client)
        for _ in 0..<9 { loop.advanceTime(by: .milliseconds(100)) }
        #expect(client.closed == nil)
        loop.advanceTime(by: .milliseconds(100))
        #expect(client.closed != nil)
    }
}
