import NIOCore
import SwitchboardCore
import Testing

/// The decision when a loop's connections switch to Nagle and back, on synthetic clocks.
@Suite struct NagleWhenBusyTests {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

    func ms(_ v: Int64) -> NIODeadline { t0 + .milliseconds(v) }

    /// Runs passes of `busy` ms every `every` ms from `from` until `until` (exclusive), the
    /// loop's thread being on the CPU exactly during the passes, and returns the actions that
    /// were not `.none`, with the time they happened. `cpu` is the thread's CPU clock (ms).
    func run(_ tracker: inout NagleWhenBusy, cpu: inout Int64, from: Int64, until: Int64, every: Int64, busy: Int64) -> [(Int64, NagleWhenBusy.Action)] {
        var out: [(Int64, NagleWhenBusy.Action)] = []
        var t = from
        while t < until {
            if tracker.windowEnded(at: ms(t)) {
                let action = tracker.passStarting(at: ms(t), cpuNanos: cpu * 1_000_000)
                if action != .none { out.append((t, action)) }
            }
            cpu += busy
            t += every
        }
        return out
    }

    func tracker() -> NagleWhenBusy { NagleWhenBusy(thresholdPercent: 50, now: t0, cpuNanos: 0) }

    @Test func lightLoadNeverSwitches() {
        var tracker = tracker()
        var cpu: Int64 = 0
        // 1 ms of writing every 10 ms: 10 %.
        #expect(run(&tracker, cpu: &cpu, from: 0, until: 2_000, every: 10, busy: 1).isEmpty)
        #expect(!tracker.nagle)
    }

    @Test func saturationSwitchesOnAfterOneWindow() {
        var tracker = tracker()
        var cpu: Int64 = 0
        // 2 ms of writing every 2 ms: 100 %.
        let actions = run(&tracker, cpu: &cpu, from: 0, until: 300, every: 2, busy: 2)
        #expect(actions.count == 1)
        #expect(actions.first?.1 == .enableNagle)
        #expect(actions.first!.0 >= 100 && actions.first!.0 <= 102)  // at the first window's end
        #expect(tracker.nagle)
    }

    @Test func quietWindowsRestoreNoDelayAfterFive() {
        var tracker = tracker()
        var cpu: Int64 = 0
        _ = run(&tracker, cpu: &cpu, from: 0, until: 300, every: 2, busy: 2)
        #expect(tracker.nagle)
        // Then 1 ms every 10 ms (10 %, below half the threshold): back after 5 windows.
        let actions = run(&tracker, cpu: &cpu, from: 300, until: 1_500, every: 10, busy: 1)
        #expect(actions.count == 1)
        #expect(actions.first?.1 == .disableNagle)
        #expect(actions.first!.0 >= 300 + 4 * 100 && actions.first!.0 <= 300 + 6 * 100)
        #expect(!tracker.nagle)
    }

    @Test func moderateLoadBetweenHalfAndThresholdKeepsNagle() {
        var tracker = tracker()
        var cpu: Int64 = 0
        _ = run(&tracker, cpu: &cpu, from: 0, until: 300, every: 2, busy: 2)
        // 3 ms every 10 ms: 30 %, between 25 % and 50 %: no flapping either way.
        #expect(run(&tracker, cpu: &cpu, from: 300, until: 3_000, every: 10, busy: 3).isEmpty)
        #expect(tracker.nagle)
    }

    @Test func firstPassAfterLongIdleRestoresAtOnce() {
        var tracker = tracker()
        var cpu: Int64 = 0
        _ = run(&tracker, cpu: &cpu, from: 0, until: 300, every: 2, busy: 2)
        #expect(tracker.nagle)
        // Nothing for 2 s, then one message: it must leave with TCP_NODELAY, before the write.
        #expect(tracker.passStarting(at: ms(2_300), cpuNanos: cpu * 1_000_000) == .disableNagle)
        #expect(!tracker.nagle)
    }

    @Test func shortBurstInALongWindowDoesNotSwitch() {
        var tracker = tracker()
        var cpu: Int64 = 0
        // 30 ms of saturation, then the window closes 1 s later: 3 %.
        _ = run(&tracker, cpu: &cpu, from: 0, until: 30, every: 2, busy: 2)
        #expect(tracker.passStarting(at: ms(1_000), cpuNanos: cpu * 1_000_000) == .none)
        #expect(!tracker.nagle)
    }

    @Test func thresholdIsInclusive() {
        var tracker = tracker()
        var cpu: Int64 = 0
        // exactly 50 %: 5 ms every 10 ms.
        let actions = run(&tracker, cpu: &cpu, from: 0, until: 200, every: 10, busy: 5)
        #expect(actions.map(\.1) == [.enableNagle])
    }

    @Test func cpuMeasuredElsewhereThanInPassesCounts() {
        // Passes cost nothing (Nagle made the writes cheap) but the thread is 60 % busy with
        // reads and encoding: the loop stays in Nagle mode instead of flapping.
        var tracker = tracker()
        var cpu: Int64 = 0
        _ = run(&tracker, cpu: &cpu, from: 0, until: 300, every: 2, busy: 2)
        #expect(tracker.nagle)
        var actions: [NagleWhenBusy.Action] = []
        var t: Int64 = 300
        while t < 3_000 {
            cpu += 6  // 6 ms of other work per 10 ms
            if tracker.windowEnded(at: ms(t)) { actions.append(tracker.passStarting(at: ms(t), cpuNanos: cpu * 1_000_000)) }
            t += 10
        }
        #expect(actions.allSatisfy { $0 == .none })
        #expect(tracker.nagle)
    }

    @Test func threadClockAdvancesWithWork() {
        let before = NagleWhenBusy.threadCPUNanoseconds()
        var x: UInt64 = 1
        for i in 0..<2_000_000 { x = x &* 6364136223846793005 &+ UInt64(i) }
        #expect(x != 0)
        #expect(NagleWhenBusy.threadCPUNanoseconds() > before)
    }
}
