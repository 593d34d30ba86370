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

    @Test func fallingBehindIsHavingAsMuchOrMoreOutstandingThanAtTheSweepBefore() {
        let before = OutboundSample(sweep: 7, bytes: 100_000)
        #expect(OutboundMemory.isFallingBehind(outstanding: 100_000, previous: before, sweep: 8))
        #expect(OutboundMemory.isFallingBehind(outstanding: 150_000, previous: before, sweep: 8))
        #expect(!OutboundMemory.isFallingBehind(outstanding: 99_999, previous: before, sweep: 8), "taking its data")
        #expect(!OutboundMemory.isFallingBehind(outstanding: 150_000, previous: before, sweep: 9), "not looked at in the sweep before")
        #expect(!OutboundMemory.isFallingBehind(outstanding: 150_000, previous: OutboundSample(), sweep: 1), "never looked at")
    }

    @Test func aSweepOverTheCapClosesTheSlowestOfThoseFallingBehindOnly() {
        let loop = EmbeddedEventLoop()
        let hub = FanoutHub(eventLoops: [loop], heartbeatResolution: .milliseconds(100), maxPendingBytesTotal: 1_000_000)
        let shard = hub.shard(for: loop)
        let clients = (0..<6).map { _ -> TickRecorder in
            let client = TickRecorder(every: nil)
            shard.addHeartbeatClient(client)
            return client
        }
        // A second ago: what each held.
        for (client, bytes) in zip(clients, [0, 600_000, 200_000, 500_000, 10_000, 900_000]) { client.pendingOutboundBytes = bytes }
        #expect(shard.sweepOutbound() == 0, "nothing is falling behind before a second sweep (2.21 MB held, over the cap)")
        #expect(clients.allSatisfy { $0.closed == nil })
        // Now: the one with 900,000 took most of it (a fast reader after a burst); 600,000 and
        // 500,000 took nothing; 200,000 grew; 10,000 is under the floor.
        for (client, bytes) in zip(clients, [0, 600_000, 300_000, 500_000, 20_000, 800_000]) { client.pendingOutboundBytes = bytes }
        // 2.22 MB held, 1.22 MB over: 600,000 and 500,000 and 300,000 go, not the reader of 800,000.
        #expect(shard.sweepOutbound() == 3)
        #expect(clients.map { $0.closed != nil } == [false, true, true, true, false, false])
        #expect(clients[1].closed!.contains("limits.max-pending-bytes-total (1000000 bytes)"))
        #expect(clients[1].closed!.contains("600000 bytes not taken"))
        #expect(hub.outbound.shedCount == 3)
        #expect(hub.outbound.total == 820_000, "what it freed is not counted again by the other loops")
    }

    /// Bytes held of what clients sent (open transactions) count in the total, so the slow
    /// consumers go sooner; a session holding them is never taken for one (they do not go
    /// down while it reads).
    @Test func heldInboundBytesCountInTheTotalAndAreNeverShed() {
        let loop = EmbeddedEventLoop()
        let hub = FanoutHub(eventLoops: [loop], heartbeatResolution: .milliseconds(100), maxPendingBytesTotal: 1_000_000)
        let shard = hub.shard(for: loop)
        let (holder, stalled) = (TickRecorder(every: nil), TickRecorder(every: nil))
        shard.addHeartbeatClient(holder)
        shard.addHeartbeatClient(stalled)
        holder.heldInboundBytes = 900_000
        stalled.pendingOutboundBytes = 300_000
        #expect(shard.sweepOutbound() == 0)
        #expect(hub.outbound.total == 1_200_000)
        #expect(shard.sweepOutbound() == 1)
        #expect(holder.closed == nil && stalled.closed != nil)
    }

    /// NIO's pending writes stay put while the reader drains the kernel's send buffer (the
    /// kernel asks for more only once half of it is free): the kernel's unsent bytes say it
    /// is taking its data.
    @Test func aReaderDrainingTheKernelsBufferIsNotFallingBehind() {
        let loop = EmbeddedEventLoop()
        let hub = FanoutHub(eventLoops: [loop], heartbeatResolution: .milliseconds(100), maxPendingBytesTotal: 100_000)
        let shard = hub.shard(for: loop)
        let (reader, stalled) = (TickRecorder(every: nil), TickRecorder(every: nil))
        for client in [reader, stalled] {
            client.pendingOutboundBytes = 344_796
            client.unsentKernelBytes = 600_000
            shard.addHeartbeatClient(client)
        }
        #expect(shard.sweepOutbound() == 0)
        reader.unsentKernelBytes = 470_000  // it read 130 KB; NIO has written nothing more yet
        #expect(shard.sweepOutbound() == 1)
        #expect(reader.closed == nil)
        #expect(stalled.closed != nil)
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
        hub.shard(for: loop).addHeartbeatClient(client)
        client.pendingOutboundBytes = 500_000
        for _ in 0..<19 { loop.advanceTime(by: .milliseconds(100)) }
        #expect(client.closed == nil, "one sweep at 1 s: held, not yet seen falling behind")
        loop.advanceTime(by: .milliseconds(100))
        #expect(client.closed != nil, "the second, at 2 s: still held")
    }
}
