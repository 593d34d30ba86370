import NIOCore
import SwitchboardCore
import Testing

#if canImport(Glibc)
import Glibc
import SwitchboardWire
#endif

/// The decision when a loop's connections enter busy mode (Nagle, wider write coalescing) and leave it, on synthetic clocks.
@Suite struct LoopBusyModeTests {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

    func ms(_ v: Int64) -> NIODeadline { t0 + .milliseconds(v) }

    /// Runs passes of `busy` ms every `every` ms from `from` until `until` (exclusive), the
    /// loop's thread being on the CPU exactly during the passes, and returns the actions that
    /// were not `.none`, with the time they happened. `cpu` is the thread's CPU clock (ms).
    func run(_ tracker: inout LoopBusyMode, cpu: inout Int64, from: Int64, until: Int64, every: Int64, busy: Int64) -> [(Int64, LoopBusyMode.Action)] {
        run(&tracker, cpu: &cpu, from: from, until: until, every: every) { _, _ in busy }
    }

    /// As above, with the cost of a pass depending on the time and on whether the loop is in
    /// busy mode.
    func run(
        _ tracker: inout LoopBusyMode, cpu: inout Int64, from: Int64, until: Int64, every: Int64,
        busy: (_ t: Int64, _ busy: Bool) -> Int64
    ) -> [(Int64, LoopBusyMode.Action)] {
        var out: [(Int64, LoopBusyMode.Action)] = []
        var t = from
        while t < until {
            if tracker.windowEnded(at: ms(t)) {
                let action = tracker.passStarting(at: ms(t), cpuNanos: cpu * 1_000_000)
                if action != .none { out.append((t, action)) }
            }
            cpu += busy(t, tracker.busy)
            t += every
        }
        return out
    }

    /// Saturates the loop until busy mode is on (3 windows).
    func saturate(_ tracker: inout LoopBusyMode, cpu: inout Int64) {
        _ = run(&tracker, cpu: &cpu, from: 0, until: 400, every: 2, busy: 2)
    }

    func tracker() -> LoopBusyMode { LoopBusyMode(thresholdPercent: 50, now: t0, cpuNanos: 0) }

    @Test func lightLoadNeverSwitches() {
        var tracker = tracker()
        var cpu: Int64 = 0
        // 1 ms of writing every 10 ms: 10 %.
        #expect(run(&tracker, cpu: &cpu, from: 0, until: 2_000, every: 10, busy: 1).isEmpty)
        #expect(!tracker.busy)
    }

    @Test func saturationSwitchesOnAfterThreeWindows() {
        var tracker = tracker()
        var cpu: Int64 = 0
        // 2 ms of writing every 2 ms: 100 %.
        let actions = run(&tracker, cpu: &cpu, from: 0, until: 600, every: 2, busy: 2)
        #expect(actions.count == 1)
        #expect(actions.first?.1 == .enterBusyMode)
        #expect(actions.first!.0 >= 300 && actions.first!.0 <= 304)  // at the third window's end
        #expect(tracker.busy)
    }

    @Test func isolatedBusyWindowsDoNotSwitch() {
        var tracker = tracker()
        var cpu: Int64 = 0
        // 40 % with every third window at 70 % (a noisy neighbour, a burst of connects).
        let actions = run(&tracker, cpu: &cpu, from: 0, until: 5_000, every: 10) { t, _ in
            (t / 100) % 3 == 2 ? 7 : 4
        }
        #expect(actions.isEmpty)
        #expect(!tracker.busy)
    }

    @Test func quietWindowsRestoreNoDelayAfterFive() {
        var tracker = tracker()
        var cpu: Int64 = 0
        saturate(&tracker, cpu: &cpu)
        #expect(tracker.busy)
        // Then 1 ms every 10 ms (10 %, below half the threshold): back after 5 windows.
        let actions = run(&tracker, cpu: &cpu, from: 400, until: 1_600, every: 10, busy: 1)
        #expect(actions.count == 1)
        #expect(actions.first?.1 == .leaveBusyMode)
        #expect(actions.first!.0 >= 400 + 4 * 100 && actions.first!.0 <= 400 + 6 * 100)
        #expect(!tracker.busy)
    }

    @Test func moderateLoadBetweenHalfAndThresholdStaysBusyUntilTheProbe() {
        var tracker = tracker()
        var cpu: Int64 = 0
        saturate(&tracker, cpu: &cpu)
        // 3 ms every 10 ms: 30 %, between 25 % and 50 %: no flapping either way...
        #expect(run(&tracker, cpu: &cpu, from: 400, until: 4_000, every: 10, busy: 3).isEmpty)
        #expect(tracker.busy)
        // ...until the probe after 5 s, which holds: 30 % without Nagle is not saturation.
        let actions = run(&tracker, cpu: &cpu, from: 4_000, until: 30_000, every: 10, busy: 3)
        #expect(actions.map(\.1) == [.leaveBusyMode])
        #expect(actions.first!.0 >= 5_300 && actions.first!.0 <= 5_500)
        #expect(!tracker.busy)
        #expect(tracker.probeAfterWindows == LoopBusyMode.initialProbeAfterWindows)
    }

    @Test func failedProbesBackOffToTheMaximum() {
        var tracker = tracker()
        var cpu: Int64 = 0
        saturate(&tracker, cpu: &cpu)
        // 30 % with Nagle, 80 % without: each probe turns Nagle back on 3 windows later, and
        // the wait before the next doubles: 5 s, 10 s, 20 s, 40 s, then 60 s each.
        let actions = run(&tracker, cpu: &cpu, from: 400, until: 260_000, every: 10) { _, busy in busy ? 3 : 8 }
        let probes = actions.filter { $0.1 == .leaveBusyMode }.map(\.0)
        #expect(actions.count == 2 * probes.count)
        #expect(actions.last?.1 == .enterBusyMode)
        let gaps = zip(probes.dropFirst(), probes).map { ($0 - $1) / 1_000 }
        #expect(gaps == [10, 20, 40, 60, 60, 60])
        #expect(tracker.probeAfterWindows == LoopBusyMode.maxProbeAfterWindows)
        // A quiet spell restores TCP_NODELAY and the short wait.
        _ = run(&tracker, cpu: &cpu, from: 260_000, until: 262_000, every: 10, busy: 1)
        #expect(!tracker.busy)
        #expect(tracker.probeAfterWindows == LoopBusyMode.initialProbeAfterWindows)
    }

    /// Saturates the loop until busy mode is on, then leaves it idle for 2 s: the first pass after
    /// that (at 2.4 s) must restore TCP_NODELAY before it writes.
    func saturateThenIdle(_ tracker: inout LoopBusyMode, cpu: inout Int64) {
        saturate(&tracker, cpu: &cpu)
        #expect(tracker.busy)
        #expect(tracker.passStarting(at: ms(2_400), cpuNanos: cpu * 1_000_000) == .leaveBusyMode)
        #expect(!tracker.busy)
    }

    @Test func firstPassAfterLongIdleRestoresAtOnce() {
        var tracker = tracker()
        var cpu: Int64 = 0
        saturateThenIdle(&tracker, cpu: &cpu)
    }

    @Test func recentlySaturatedLoopSwitchesOnAfterOneBusyWindow() {
        var tracker = tracker()
        var cpu: Int64 = 0
        saturateThenIdle(&tracker, cpu: &cpu)
        // The next burst is busy again after one busy window, not three.
        let actions = run(&tracker, cpu: &cpu, from: 2_400, until: 3_000, every: 2, busy: 2)
        #expect(actions.map(\.1) == [.enterBusyMode])
        #expect(actions.first!.0 >= 2_500 && actions.first!.0 <= 2_504)
    }

    @Test func saturationLongAfterLeavingBusyModeNeedsThreeWindowsAgain() {
        var tracker = tracker()
        var cpu: Int64 = 0
        saturateThenIdle(&tracker, cpu: &cpu)
        // More than 10 s of light load: the saturation is no longer recent.
        #expect(run(&tracker, cpu: &cpu, from: 2_400, until: 13_000, every: 10, busy: 1).isEmpty)
        let actions = run(&tracker, cpu: &cpu, from: 13_000, until: 14_000, every: 2, busy: 2)
        #expect(actions.map(\.1) == [.enterBusyMode])
        #expect(actions.first!.0 >= 13_300 && actions.first!.0 <= 13_304)
    }

    @Test func shortBurstInALongWindowDoesNotSwitch() {
        var tracker = tracker()
        var cpu: Int64 = 0
        // 30 ms of saturation, then the window closes 1 s later: 3 %.
        _ = run(&tracker, cpu: &cpu, from: 0, until: 30, every: 2, busy: 2)
        #expect(tracker.passStarting(at: ms(1_000), cpuNanos: cpu * 1_000_000) == .none)
        #expect(!tracker.busy)
    }

    @Test func thresholdIsInclusive() {
        var tracker = tracker()
        var cpu: Int64 = 0
        // exactly 50 %: 5 ms every 10 ms.
        let actions = run(&tracker, cpu: &cpu, from: 0, until: 400, every: 10, busy: 5)
        #expect(actions.map(\.1) == [.enterBusyMode])
    }

    @Test func cpuMeasuredElsewhereThanInPassesCounts() {
        // Passes cost nothing (Nagle made the writes cheap) but the thread is 60 % busy with
        // reads and encoding: the loop stays in busy mode instead of flapping.
        var tracker = tracker()
        var cpu: Int64 = 0
        saturate(&tracker, cpu: &cpu)
        #expect(tracker.busy)
        var actions: [LoopBusyMode.Action] = []
        var t: Int64 = 400
        while t < 3_000 {
            cpu += 6  // 6 ms of other work per 10 ms
            if tracker.windowEnded(at: ms(t)) { actions.append(tracker.passStarting(at: ms(t), cpuNanos: cpu * 1_000_000)) }
            t += 10
        }
        #expect(actions.allSatisfy { $0 == .none })
        #expect(tracker.busy)
    }

    /// Runs passes every `every` ms from `from` until `until` (exclusive) on a thread that
    /// shares its core: each pass costs `cpu` ms of CPU, and the thread waits for work
    /// (blocks, a voluntary context switch) after a pass if `waitsAfter(t)`.
    func runSharingACore(
        _ tracker: inout LoopBusyMode, cpuClock: inout Int64, waits: inout Int64, from: Int64, until: Int64,
        every: Int64, cpu: Int64, waitsAfter: (_ t: Int64) -> Bool
    ) -> [(Int64, LoopBusyMode.Action)] {
        var out: [(Int64, LoopBusyMode.Action)] = []
        var t = from
        while t < until {
            if tracker.windowEnded(at: ms(t)) {
                let action = tracker.passStarting(at: ms(t), cpuNanos: cpuClock * 1_000_000, waits: waits)
                if action != .none { out.append((t, action)) }
            }
            cpuClock += cpu
            if waitsAfter(t) { waits += 1 }
            t += every
        }
        return out
    }

    func sharingTracker() -> LoopBusyMode { LoopBusyMode(thresholdPercent: 50, now: t0, cpuNanos: 0, waits: 0) }

    @Test func saturatedLoopSharingACoreSwitchesOnWhenItNeverWaits() {
        var tracker = sharingTracker()
        var cpu: Int64 = 0, waits: Int64 = 0
        // Two loops on one core: each gets 40 % of the CPU, below the 50 % line, but always
        // has work: it never blocks.
        let actions = runSharingACore(&tracker, cpuClock: &cpu, waits: &waits, from: 0, until: 600, every: 10, cpu: 4) { _ in false }
        #expect(actions.map(\.1) == [.enterBusyMode])
        #expect(actions.first!.0 >= 300 && actions.first!.0 <= 310)
        #expect(tracker.lastWaits == 0)
    }

    @Test func loopThatWaitsBetweenMessagesIsNotSaturated() {
        var tracker = sharingTracker()
        var cpu: Int64 = 0, waits: Int64 = 0
        // The same CPU share, but the loop runs out of work after every pass.
        #expect(runSharingACore(&tracker, cpuClock: &cpu, waits: &waits, from: 0, until: 3_000, every: 10, cpu: 4) { _ in true }.isEmpty)
        #expect(!tracker.busy)
        #expect(tracker.lastWaits == 10)
    }

    @Test func twoWindowsWithoutWaitingDoNotSwitch() {
        var tracker = sharingTracker()
        var cpu: Int64 = 0, waits: Int64 = 0
        // Never waiting for 2 windows out of every 3 (a burst of connects, a noisy neighbour).
        let actions = runSharingACore(&tracker, cpuClock: &cpu, waits: &waits, from: 0, until: 5_000, every: 10, cpu: 3) { t in
            (t / 100) % 3 == 2
        }
        #expect(actions.isEmpty)
    }

    @Test func loopInBusyModeThatNeverWaitsIsNotQuiet() {
        var tracker = sharingTracker()
        var cpu: Int64 = 0, waits: Int64 = 0
        _ = runSharingACore(&tracker, cpuClock: &cpu, waits: &waits, from: 0, until: 400, every: 10, cpu: 4) { _ in false }
        #expect(tracker.busy)
        // 10 % CPU (below half the line) but still never waiting: starved of CPU, not quiet.
        #expect(runSharingACore(&tracker, cpuClock: &cpu, waits: &waits, from: 400, until: 3_000, every: 10, cpu: 1) { _ in false }.isEmpty)
        #expect(tracker.busy)
        // Waiting again at 10 %: back to TCP_NODELAY after 5 quiet windows.
        let quiet = runSharingACore(&tracker, cpuClock: &cpu, waits: &waits, from: 3_000, until: 4_000, every: 10, cpu: 1) { _ in true }
        #expect(quiet.map(\.1) == [.leaveBusyMode])
        #expect(quiet.first!.0 >= 3_000 + 4 * 100 && quiet.first!.0 <= 3_000 + 6 * 100)
    }

    @Test func threadUsageCountsCPUAndWaits() throws {
        let before = LoopBusyMode.threadUsage()
        var x: UInt64 = 1
        for i in 0..<2_000_000 { x = x &* 6364136223846793005 &+ UInt64(i) }
        #expect(x != 0)
        usleep(2_000)  // blocks: a voluntary context switch
        let after = LoopBusyMode.threadUsage()
        #expect(after.cpuNanos > before.cpuNanos)
        #if os(Linux)
        let waitsBefore = try #require(before.waits), waitsAfter = try #require(after.waits)
        #expect(waitsAfter > waitsBefore)
        #endif
    }

    @Test func threadClockAdvancesWithWork() {
        let before = LoopBusyMode.threadCPUNanoseconds()
        var x: UInt64 = 1
        for i in 0..<2_000_000 { x = x &* 6364136223846793005 &+ UInt64(i) }
        #expect(x != 0)
        #expect(LoopBusyMode.threadCPUNanoseconds() > before)
    }
}
