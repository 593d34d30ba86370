/// The order of ``RedisClusterClient/send(_:)``'s commands per hash slot: a state machine
/// without I/O, whose actions the client carries out.
///
/// Commands of one slot are written on their node's pipelined connection in the order they were
/// sent, and Redis runs them in that order. A redirect (`MOVED`, `ASK`, `TRYAGAIN`,
/// `CLUSTERDOWN`), an unreachable node or an unknown slot map takes a command off that path,
/// and a later command must not overtake it. So, per slot:
/// - while none of the slot's commands is detoured, commands go the **direct** way (counted in
///   flight until their reply);
/// - a command taken off the direct way opens the slot's **detour**: from then on the slot's
///   new commands wait in it instead of going the direct way;
/// - the detour runs once none of the slot's direct commands is in flight any more (their
///   replies may add redirected commands: every command keeps its place by the order in which
///   it was sent);
/// - it runs in **rounds** of everything waiting, oldest first: the client lets the first
///   command follow the redirects alone, then pipelines the rest of the round where that one
///   went; what is redirected again goes into the next round, before the newer commands;
/// - once a round leaves nothing waiting, the detour closes and the slot's commands go the
///   direct way again.
///
/// A new slot map can name another owner while the slot's direct commands are in flight on
/// the old one: a command sent then to the new owner waits in the detour like one behind a
/// redirect (else it ran there before the old owner's `MOVED` sent the earlier ones after it).
///
/// One case is out of its reach: a command redirected by a node that takes the slot over right
/// after (`CLUSTER SETSLOT … NODE` between two pipelined commands) may run after the next one,
/// which that node then served.
struct SlotOrderStateMachine<Item: Sendable>: Sendable {
    /// A command and its place in the order of sending.
    struct Entry: Sendable {
        var sequence: UInt64
        var item: Item
    }

    /// Where ``send(slot:_:direct:)`` puts a command.
    enum SendAction: Sendable {
        /// Write it the direct way (the sequence to give back with ``answered(slot:redirected:)``).
        case direct(sequence: UInt64)
        /// It waits in the slot's detour.
        case waiting
        /// Run this round of the slot's detour now (it holds the command).
        case runRound([Entry])
        /// The slot's detour already holds `maximumWaiting` commands: refuse this one (not sent).
        case full
    }

    /// Slots: 0…16383, and 16384 for commands without keys.
    static var slotCount: Int { HashSlot.count + 1 }

    private var inFlight: [UInt32]
    /// Where a slot's direct commands in flight went (set while ``inFlight`` is above 0).
    private var inFlightNode: [Int: RedisServerAddress] = [:]
    private var detours: [Int: Detour] = [:]
    private var nextSequence: UInt64 = 0
    /// Commands that went into a detour, in all (a redirected one again counts again).
    private(set) var detouredCount = 0

    private struct Detour: Sendable {
        var waiting: [Entry] = []
        var running = false
    }

    init() { self.inFlight = Array(repeating: 0, count: Self.slotCount) }

    /// A command for `slot`: `direct` is false when it cannot go the direct way (no slot map
    /// yet), which opens a detour like a redirect. `makeItem` is called only when the command
    /// waits or runs in a detour. A detour holds at most `maximumWaiting` new commands; the
    /// redirected ones it takes back are not limited (they are counted in flight already).
    /// `node` is where the direct way leads: while the slot's direct commands are in flight on
    /// another node, the command waits in the detour too.
    mutating func send(slot: Int, direct: Bool, node: RedisServerAddress? = nil, maximumWaiting: Int = .max, _ makeItem: () -> Item) -> SendAction {
        // The count alone: a copy of the detour kept here would make the append below copy its queue.
        let waiting = self.detours.isEmpty ? nil : self.detours[slot]?.waiting.count
        if direct, waiting == nil, self.inFlight[slot] == 0 || node == nil || self.inFlightNode[slot].map({ $0 == node }) ?? true {
            if self.inFlight[slot] == 0, let node { self.inFlightNode[slot] = node }
            self.inFlight[slot] += 1
            return .direct(sequence: self.takeSequence())
        }
        if let waiting, waiting >= maximumWaiting { return .full }
        let sequence = self.takeSequence()
        self.detours[slot, default: Detour()].waiting.append(Entry(sequence: sequence, item: makeItem()))
        self.detouredCount += 1
        return self.startRound(slot).map { .runRound($0) } ?? .waiting
    }

    /// A direct command of `slot` was answered; `redirected` is the command (with its
    /// sequence) when it has to go the slow way. Returns a round to run now, if one can start.
    mutating func answered(slot: Int, redirected: Entry?) -> [Entry]? {
        assert(self.inFlight[slot] > 0, "an answer for a slot without commands in flight")
        if self.inFlight[slot] > 0 { self.inFlight[slot] -= 1 }
        if self.inFlight[slot] == 0, !self.inFlightNode.isEmpty { self.inFlightNode[slot] = nil }
        if let redirected {
            self.detours[slot, default: Detour()].waiting.append(redirected)
            self.detouredCount += 1
        }
        return self.startRound(slot)
    }

    /// A round of `slot`'s detour is over; `again` are its commands redirected once more. Returns
    /// the next round, or nil when the detour closed (the slot's commands go direct again).
    mutating func roundFinished(slot: Int, again: [Entry]) -> [Entry]? {
        guard var detour = self.detours[slot] else {
            assertionFailure("a round finished without a detour")
            return nil
        }
        detour.running = false
        detour.waiting.append(contentsOf: again)
        self.detouredCount += again.count
        if detour.waiting.isEmpty {
            self.detours[slot] = nil
            return nil
        }
        self.detours[slot] = detour
        return self.startRound(slot)
    }

    /// Commands of `slot` written the direct way and not answered yet.
    func inFlight(slot: Int) -> Int { Int(self.inFlight[slot]) }

    /// Whether `slot` has a detour (its new commands wait).
    func isDetoured(slot: Int) -> Bool { self.detours[slot] != nil }

    private mutating func takeSequence() -> UInt64 {
        defer { self.nextSequence &+= 1 }
        return self.nextSequence
    }

    /// Takes everything waiting, oldest first, when the detour is idle and no direct command of
    /// the slot is in flight.
    private mutating func startRound(_ slot: Int) -> [Entry]? {
        guard self.inFlight[slot] == 0, !self.detours.isEmpty, var detour = self.detours[slot], !detour.running, !detour.waiting.isEmpty else {
            return nil
        }
        let round = detour.waiting.sorted { $0.sequence < $1.sequence }
        detour.waiting = []
        detour.running = true
        self.detours[slot] = detour
        return round
    }
}
