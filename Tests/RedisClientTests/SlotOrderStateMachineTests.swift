import Testing

@testable import Redis

/// ``SlotOrderStateMachine`` without I/O: which commands go direct, which wait, and the rounds
/// of a slot's detour, oldest first.
@Suite("Redis Cluster: the order of one slot's commands through redirects")
struct SlotOrderStateMachineTests {
    typealias Machine = SlotOrderStateMachine<String>
    typealias Entry = Machine.Entry

    func direct(_ machine: inout Machine, slot: Int = 7, _ name: String) -> UInt64? {
        guard case .direct(let sequence) = machine.send(slot: slot, direct: true, { name }) else { return nil }
        return sequence
    }

    func names(_ round: [Entry]?) -> [String]? { round?.map(\.item) }

    @Test func commandsGoDirectWhileNothingIsDetoured() {
        var machine = Machine()
        let a = direct(&machine, "a")
        let b = direct(&machine, "b")
        #expect(a == 0 && b == 1)
        #expect(machine.inFlight(slot: 7) == 2)
        #expect(machine.answered(slot: 7, redirected: nil) == nil)
        #expect(machine.answered(slot: 7, redirected: nil) == nil)
        #expect(machine.inFlight(slot: 7) == 0)
        #expect(!machine.isDetoured(slot: 7))
        #expect(machine.detouredCount == 0)
    }

    /// a, b, c written; a is redirected. d, sent after, waits; the round starts only when b and
    /// c are answered, and keeps the order of sending (c, redirected too, before d).
    @Test func aRedirectHoldsLaterCommandsUntilEarlierOnesAreAnswered() throws {
        var machine = Machine()
        let a = try #require(direct(&machine, "a"))
        _ = try #require(direct(&machine, "b"))
        let c = try #require(direct(&machine, "c"))
        #expect(machine.answered(slot: 7, redirected: Entry(sequence: a, item: "a")) == nil, "b and c are still in flight")
        #expect(machine.isDetoured(slot: 7))
        guard case .waiting = machine.send(slot: 7, direct: true, { "d" }) else {
            Issue.record("d must wait behind the detour")
            return
        }
        #expect(machine.answered(slot: 7, redirected: nil) == nil, "c is still in flight")
        let round = machine.answered(slot: 7, redirected: Entry(sequence: c, item: "c"))
        #expect(names(round) == ["a", "c", "d"])
        #expect(machine.detouredCount == 3)
    }

    /// A new map names another owner while the slot's commands are in flight on the old one:
    /// a command sent to the new owner ran there before the old owner's `MOVED` sent the earlier
    /// ones after it. It now waits, and the round keeps the order of sending.
    @Test func aCommandForANewOwnerWaitsForTheOnesInFlightOnTheOld() throws {
        var machine = Machine()
        let old = RedisServerAddress(host: "10.0.0.1", port: 7000)
        let new = RedisServerAddress(host: "10.0.0.2", port: 7000)
        guard case .direct(let a) = machine.send(slot: 7, direct: true, node: old, { "a" }) else {
            Issue.record("a goes direct")
            return
        }
        guard case .direct = machine.send(slot: 7, direct: true, node: old, { "b" }) else {
            Issue.record("b follows a to the same node")
            return
        }
        guard case .waiting = machine.send(slot: 7, direct: true, node: new, { "c" }) else {
            Issue.record("c must wait: a and b are in flight on the old owner")
            return
        }
        #expect(machine.answered(slot: 7, redirected: nil) == nil, "a is still in flight")
        let round = machine.answered(slot: 7, redirected: Entry(sequence: a, item: "a"))
        #expect(names(round) == ["a", "c"])
        #expect(machine.roundFinished(slot: 7, again: []) == nil)
        guard case .direct = machine.send(slot: 7, direct: true, node: new, { "d" }) else {
            Issue.record("nothing in flight: the new owner directly")
            return
        }
    }

    /// While a round runs, new commands wait; what a round gives back goes before them; the
    /// detour closes when a round leaves nothing, and the slot goes direct again.
    @Test func roundsUntilNothingWaits() throws {
        var machine = Machine()
        let a = try #require(direct(&machine, "a"))
        let first = machine.answered(slot: 7, redirected: Entry(sequence: a, item: "a"))
        #expect(names(first) == ["a"])
        guard case .waiting = machine.send(slot: 7, direct: true, { "b" }) else {
            Issue.record("b must wait while the round runs")
            return
        }
        let again = [Entry(sequence: a, item: "a")]
        #expect(names(machine.roundFinished(slot: 7, again: again)) == ["a", "b"], "redirected again, a still goes first")
        #expect(machine.roundFinished(slot: 7, again: []) == nil)
        #expect(!machine.isDetoured(slot: 7))
        #expect(direct(&machine, "c") != nil)
    }

    /// Without a slot map a command cannot go direct: it opens a detour and runs at once when
    /// nothing of its slot is in flight.
    @Test func noSlotMapOpensADetour() {
        var machine = Machine()
        guard case .runRound(let round) = machine.send(slot: 3, direct: false, { "a" }) else {
            Issue.record("the command runs in a detour round")
            return
        }
        #expect(names(round) == ["a"])
        guard case .waiting = machine.send(slot: 3, direct: true, { "b" }) else {
            Issue.record("b waits behind a")
            return
        }
        #expect(direct(&machine, slot: 4, "other slot") != nil, "other slots are not held")
        #expect(names(machine.roundFinished(slot: 3, again: [])) == ["b"])
    }

    /// A detour holds at most `maximumWaiting` new commands: the next is refused; redirected
    /// ones are taken back whatever the count.
    @Test func aFullDetourRefusesNewCommands() throws {
        var machine = Machine()
        let a = try #require(direct(&machine, "a"))
        let b = try #require(direct(&machine, "b"))
        _ = machine.answered(slot: 7, redirected: Entry(sequence: a, item: "a"))
        guard case .waiting = machine.send(slot: 7, direct: true, maximumWaiting: 2, { "c" }) else {
            Issue.record("c waits")
            return
        }
        guard case .full = machine.send(slot: 7, direct: true, maximumWaiting: 2, { "d" }) else {
            Issue.record("d is refused: a and c wait")
            return
        }
        let round = machine.answered(slot: 7, redirected: Entry(sequence: b, item: "b"))
        #expect(names(round) == ["a", "b", "c"])
    }

    /// Keyless commands (slot 16384) have a slot of their own.
    @Test func keylessCommandsHaveTheirOwnSlot() {
        var machine = Machine()
        #expect(direct(&machine, slot: HashSlot.count, "ping") != nil)
        #expect(machine.inFlight(slot: HashSlot.count) == 1)
        #expect(machine.inFlight(slot: 0) == 0)
    }
}
