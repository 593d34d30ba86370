import NIOCore
import SwitchboardCore
import Testing

/// The decision when a loop's connections switch to Nagle and back, on synthetic clocks.
@Suite struct NagleWhenBusyTests {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

    func ms(_ v: Int64) -> NIODeadline { t0 + .milliseconds(v) }

    /// Runs passes of `busy` ms every `every` ms from `from` until `until` (exclusive) and
    /// returns the actions that were not `.none`, with the time they happened.
    func run(_ tracker: inout NagleWhenBusy, from: Int64, until: Int64, every: Int64, busy: Int64) -> [(Int64, NagleWhenBusy.Action)] {
        var out: [(Int64, NagleWhenBusy.Action)] = []
        var t = from
        while t < until {
            let action = tracker.passStarting(at: ms(t))
            if action != .none { out.append((t, action)) }
            tracker.passEnded(startedAt: ms(t), at: ms(t + busy))
            t += every
        }
        return out
    }

    @Test func lightLoadNeverSwitches() {
        var tracker = NagleWhenBusy(thresholdPercent: 50, now: t0)
        // 1 ms of writing every 10 ms: 10 %.
        #expect(run(&tracker, from: 0, until: 2_000, every: 10, busy: 1).isEmpty)
        #expect(!tracker.nagle)
    }

    @Test func saturationSwitchesOnAfterOneWindow() {
        var tracker = NagleWhenBusy(thresholdPercent: 50, now: t0)
        // 2 ms of writing every 2 ms: 100 %.
        let actions = run(&tracker, from: 0, until: 300, every: 2, busy: 2)
        #expect(actions.count == 1)
        #expect(actions.first?.1 == .enableNagle)
        #expect(actions.first!.0 >= 100 && actions.first!.0 <= 102)  // at the first window's end
        #expect(tracker.nagle)
    }

    @Test func quietWindowsRestoreNoDelayAfterFive() {
        var tracker = NagleWhenBusy(thresholdPercent: 50, now: t0)
        _ = run(&tracker, from: 0, until: 300, every: 2, busy: 2)
        #expect(tracker.nagle)
        // Then 1 ms every 10 ms (10 %, below half the threshold): back after 5 windows.
        let actions = run(&tracker, from: 300, until: 1_500, every: 10, busy: 1)
        #expect(actions.count == 1)
        #expect(actions.first?.1 == .disableNagle)
        #expect(actions.first!.0 >= 300 + 4 * 100 && actions.first!.0 <= 300 + 6 * 100)
        #expect(!tracker.nagle)
    }

    @Test func moderateLoadBetweenHalfAndThresholdKeepsNagle() {
        var tracker = NagleWhenBusy(thresholdPercent: 50, now: t0)
        _ = run(&tracker, from: 0, until: 300, every: 2, busy: 2)
        // 3 ms every 10 ms: 30 %, between 25 % and 50 %: no flapping either way.
        #expect(run(&tracker, from: 300, until: 3_000, every: 10, busy: 3).isEmpty)
        #expect(tracker.nagle)
    }

    @Test func firstPassAfterLongIdleRestoresAtOnce() {
        var tracker = NagleWhenBusy(thresholdPercent: 50, now: t0)
        _ = run(&tracker, from: 0, until: 300, every: 2, busy: 2)
        #expect(tracker.nagle)
        // Nothing for 2 s, then one message: it must leave with TCP_NODELAY, before the write.
        #expect(tracker.passStarting(at: ms(2_300)) == .disableNagle)
        #expect(!tracker.nagle)
    }

    @Test func shortBurstInALongWindowDoesNotSwitch() {
        var tracker = NagleWhenBusy(thresholdPercent: 50, now: t0)
        // 30 ms of saturation, then the window closes 1 s later: 3 %.
        _ = run(&tracker, from: 0, until: 30, every: 2, busy: 2)
        #expect(tracker.passStarting(at: ms(1_000)) == .none)
        #expect(!tracker.nagle)
    }

    @Test func thresholdIsInclusive() {
        var tracker = NagleWhenBusy(thresholdPercent: 50, now: t0)
        // exactly 50 %: 5 ms every 10 ms.
        let actions = run(&tracker, from: 0, until: 200, every: 10, busy: 5)
        #expect(actions.map(\.1) == [.enableNagle])
    }
}
