import NIOCore
import NIOEmbedded
import SwitchboardWire
import Testing

@testable import SwitchboardCore

/// A heart-beat client that records the ticks it is visited at and asks for the next visit
/// `every` ticks later (nil: no further visits).
final class TickRecorder: HeartbeatClient {
    var visits: [UInt64] = []
    var every: UInt64?
    var onVisit: ((UInt64) -> Void)?
    var closed: String?
    var pendingOutboundBytes = 0
    var heldInboundBytes = 0
    var unsentKernelBytes: Int?
    var outboundSample = OutboundSample()

    init(every: UInt64?) {
        self.every = every
    }

    func heartbeatTick(_ tick: UInt64) -> UInt64? {
        visits.append(tick)
        onVisit?(tick)
        return every.map { tick + $0 }
    }

    func close(reason: String, waitForStep: Bool, kind: SessionErrorKind) {
        closed = reason
    }
}

@Suite("Heart-beat timing wheel")
struct HeartbeatWheelTests {
    @Test("a tick takes out only the clients due by then, in its slot")
    func takesOnlyDue() {
        var wheel = HeartbeatWheel(slotCount: 8)
        let a = TickRecorder(every: nil), b = TickRecorder(every: nil), c = TickRecorder(every: nil)
        wheel.schedule(a, at: 3)
        wheel.schedule(b, at: 3)
        wheel.schedule(c, at: 4)
        var due: [any HeartbeatClient] = []
        wheel.takeDue(at: 2, into: &due)
        #expect(due.isEmpty)
        wheel.takeDue(at: 3, into: &due)
        #expect(Set(due.map { ObjectIdentifier($0) }) == [ObjectIdentifier(a), ObjectIdentifier(b)])
        #expect(wheel.count == 1)
        #expect(!wheel.isScheduled(a) && wheel.isScheduled(c))
    }

    @Test("a due tick beyond one revolution waits in its slot for its own revolution")
    func laterRevolution() {
        var wheel = HeartbeatWheel(slotCount: 8)
        let a = TickRecorder(every: nil)
        wheel.schedule(a, at: 21)  // slot 5, third revolution
        var due: [any HeartbeatClient] = []
        wheel.takeDue(at: 5, into: &due)
        wheel.takeDue(at: 13, into: &due)
        #expect(due.isEmpty)
        #expect(wheel.isScheduled(a))
        wheel.takeDue(at: 21, into: &due)
        #expect(due.count == 1)
        #expect(wheel.count == 0)
    }

    @Test("rescheduling moves a client; removing takes it out")
    func rescheduleAndRemove() {
        var wheel = HeartbeatWheel(slotCount: 8)
        let a = TickRecorder(every: nil), b = TickRecorder(every: nil)
        wheel.schedule(a, at: 2)
        wheel.schedule(a, at: 6)
        wheel.schedule(b, at: 6)
        wheel.remove(b)
        wheel.remove(b)  // twice is harmless
        var due: [any HeartbeatClient] = []
        wheel.takeDue(at: 2, into: &due)
        #expect(due.isEmpty)
        wheel.takeDue(at: 6, into: &due)
        #expect(due.count == 1 && due.first === a)
        #expect(wheel.count == 0)
    }
}

@Suite("LoopShard heart-beat timer")
struct LoopShardHeartbeatTimerTests {
    let loop = EmbeddedEventLoop()
    let hub = FanoutHub(heartbeatResolution: .milliseconds(100))

    var shard: LoopShard { hub.shard(for: loop) }

    func advance(ticks: Int) {
        for _ in 0..<ticks { loop.advanceTime(by: .milliseconds(100)) }
    }

    @Test("a client is visited at the ticks it asks for, not at every tick")
    func visitsWhenDue() {
        let client = TickRecorder(every: 10)
        shard.addHeartbeatClient(client)
        advance(ticks: 35)
        #expect(client.visits == [1, 11, 21, 31])
    }

    @Test("a client with nothing to check is not visited again until it asks")
    func idleUntilAsked() {
        let client = TickRecorder(every: nil)
        shard.addHeartbeatClient(client)
        advance(ticks: 20)
        #expect(client.visits == [1])
        #expect(shard.heartbeatChecksScheduled == 0)
        shard.scheduleHeartbeatCheck(client, at: shard.tick + 5)
        advance(ticks: 10)
        #expect(client.visits == [1, 25])
    }

    @Test("a removed client is not visited, and a check closing another client of the same tick drops it")
    func removal() {
        let a = TickRecorder(every: 1), b = TickRecorder(every: 1), c = TickRecorder(every: 1)
        shard.addHeartbeatClient(a)
        shard.addHeartbeatClient(b)
        shard.addHeartbeatClient(c)
        advance(ticks: 1)
        shard.removeHeartbeatClient(a)
        // whichever of b and c runs first removes the other (as closing a session does)
        b.onVisit = { [shard] _ in shard.removeHeartbeatClient(c) }
        c.onVisit = { [shard] _ in shard.removeHeartbeatClient(b) }
        advance(ticks: 3)
        #expect(a.visits == [1])
        // the one visited first at tick 2 goes on; the other was due then too, but is not visited
        let visits = [b.visits, c.visits].sorted { $0.count < $1.count }
        #expect(visits == [[1], [1, 2, 3, 4]])
        #expect(shard.heartbeatChecksScheduled == 1)
        #expect(b.closed == nil && c.closed == nil)
    }

    /// A session's heart-beat write to a peer that is gone (EPIPE) closes the channel inside
    /// the write: the session left the shard, but its check returned the next tick and it was
    /// put back in the wheel, kept there (and counted) until that tick.
    @Test("a client that closed during its own check is not scheduled again")
    func closedDuringItsCheck() {
        let client = TickRecorder(every: 100)
        client.onVisit = { [shard] _ in shard.removeHeartbeatClient(client) }
        shard.addHeartbeatClient(client)
        advance(ticks: 1)
        #expect(client.visits == [1])
        #expect(shard.heartbeatChecksScheduled == 0)
    }

    @Test("closeAll reaches clients that are not in the wheel")
    func closeAllReachesIdle() {
        let idle = TickRecorder(every: nil), busy = TickRecorder(every: 3)
        shard.addHeartbeatClient(idle)
        shard.addHeartbeatClient(busy)
        advance(ticks: 2)
        shard.closeAll(reason: "shutting down")
        loop.run()
        #expect(idle.closed == "shutting down" && busy.closed == "shutting down")
    }

    @Test("closeAll joinedBefore leaves the sessions that joined after that instant")
    func closeAllJoinedBefore() {
        let before = TickRecorder(every: nil), after = TickRecorder(every: nil)
        shard.addHeartbeatClient(before)
        let told = NIODeadline.now()
        while NIODeadline.now() == told {}
        // A client closed on another loop reconnected here before this loop's close ran.
        shard.addHeartbeatClient(after)
        shard.closeAll(reason: "registry lost", kind: .leaseLost, joinedBefore: told)
        loop.run()
        #expect(before.closed == "registry lost")
        #expect(after.closed == nil)
        shard.closeAll(reason: "shutting down")
        loop.run()
        #expect(after.closed == "shutting down")
    }
}
