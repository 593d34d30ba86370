import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import SwitchboardCore
import SwitchboardWire
import Testing

/// A loop in busy mode spaces its flush passes by ``FanoutHub/busyWriteCoalescing`` and goes
/// back to ``FanoutHub/writeCoalescing`` when it leaves; driven by a synthetic thread usage
/// on the embedded loop's virtual clock.
@Suite("LoopShard in busy mode")
struct LoopShardBusyModeTests {
    /// A hub whose loop thread is on the CPU `share` per cent of the (virtual) time.
    struct Fixture {
        let loop = EmbeddedEventLoop()
        let share = NIOLockedValueBox<Int64>(100)
        let hub: FanoutHub
        let sink = RecordingSink()

        init() throws {
            let loop = self.loop, share = self.share
            let cpu = NIOLockedValueBox<(at: Int64, nanos: Int64)>((0, 0))
            hub = FanoutHub(
                writeCoalescing: .milliseconds(2), busyWriteCoalescing: .milliseconds(10), busyPercent: 50,
                threadUsage: {
                    let now = Int64(loop.now.uptimeNanoseconds)
                    return (
                        cpu.withLockedValue { c in
                            c.nanos += (now - c.at) * share.withLockedValue { $0 } / 100
                            c.at = now
                            return c.nanos
                        }, nil
                    )
                })
            let shard = hub.shard(for: loop)
            loop.run()  // the shard reads the thread's usage on the loop
            shard.add(LocalSubscription(id: "0", pattern: try DestinationPattern("/topic/a"), ackMode: .auto, sink: sink))
        }

        var shard: LoopShard { hub.shard(for: loop) }

        /// ``ShardCounters/loopsBusy`` as the metrics read it.
        func loopsBusy() -> Int? {
            var value: Int?
            shard.readCounters().assumeIsolated().whenSuccess { value = $0.loopsBusy }
            loop.run()
            return value
        }

        /// One message every 20 ms for `duration`.
        func steadyStream(for duration: TimeAmount) {
            let end = loop.now + duration
            while loop.now < end {
                hub.deliver(message("/topic/a"))
                loop.run()
                loop.advanceTime(by: .milliseconds(20))
            }
        }

        /// Whether a message delivered `after` the last pass is flushed at once, and if not,
        /// how long it waits (to 1 ms).
        func waitOfMessage(after: TimeAmount) -> TimeAmount {
            hub.deliver(message("/topic/a"))
            loop.run()
            loop.advanceTime(by: after)
            let flushes = sink.flushes
            hub.deliver(message("/topic/a"))
            loop.run()
            var waited = TimeAmount.zero
            while sink.flushes == flushes {
                loop.advanceTime(by: .milliseconds(1))
                waited = waited + .milliseconds(1)
            }
            return waited
        }
    }

    @Test("saturated, passes are spaced by the busy interval; quiet again, by the usual one")
    func busyIntervalWhileSaturated() throws {
        let f = try Fixture()
        #expect(f.waitOfMessage(after: .milliseconds(1)) == .milliseconds(1), "normal mode: 2 ms apart")
        f.steadyStream(for: .milliseconds(400))
        #expect(f.shard.isBusy)
        #expect(f.shard.counters.busySwitches == 1)
        #expect(f.waitOfMessage(after: .milliseconds(1)) == .milliseconds(9), "busy mode: 10 ms apart")
        #expect(f.loopsBusy() == 1)

        f.share.withLockedValue { $0 = 5 }
        f.steadyStream(for: .milliseconds(700))
        #expect(!f.shard.isBusy)
        #expect(f.shard.counters.busySwitches == 2)
        #expect(f.waitOfMessage(after: .milliseconds(1)) == .milliseconds(1))
        #expect(f.loopsBusy() == 0)
    }

    @Test("below the threshold the loop never leaves normal mode")
    func notSaturatedStaysNormal() throws {
        let f = try Fixture()
        f.share.withLockedValue { $0 = 40 }
        f.steadyStream(for: .seconds(1))
        #expect(!f.shard.isBusy)
        #expect(f.shard.counters.busySwitches == 0)
        #expect(f.waitOfMessage(after: .milliseconds(1)) == .milliseconds(1))
    }
}
