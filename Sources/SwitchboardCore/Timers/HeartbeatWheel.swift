import SwitchboardWire

/// The sessions of one event loop waiting for their next heart-beat or timeout check, by the
/// tick each wants to be visited at: a hashed timing wheel.
///
/// A tick visits only the sessions due then, so an idle session costs nothing between its
/// checks (one per heart-beat interval, not one per tick), and a session with nothing to check
/// (no heart-beats negotiated, no token expiry) is not in the wheel at all. Scheduling,
/// rescheduling and removal are O(1). A due tick beyond one revolution of the wheel waits in
/// its slot and is passed over until its revolution comes.
struct HeartbeatWheel {
    private struct Entry {
        let client: any HeartbeatClient
        let due: UInt64
    }

    private var slots: [[ObjectIdentifier: Entry]]
    private var slotOf: [ObjectIdentifier: Int] = [:]

    /// - Parameter slotCount: ticks per revolution.
    init(slotCount: Int) {
        precondition(slotCount > 0)
        slots = Array(repeating: [:], count: slotCount)
    }

    /// Clients in the wheel.
    var count: Int { slotOf.count }

    func isScheduled(_ client: any HeartbeatClient) -> Bool {
        slotOf[ObjectIdentifier(client)] != nil
    }

    /// Puts `client` at tick `due` (after the current tick: a slot already passed is next
    /// visited a revolution later), replacing its earlier place if it had one.
    mutating func schedule(_ client: any HeartbeatClient, at due: UInt64) {
        let id = ObjectIdentifier(client)
        if let old = slotOf[id] { slots[old][id] = nil }
        let slot = Int(due % UInt64(slots.count))
        slots[slot][id] = Entry(client: client, due: due)
        slotOf[id] = slot
    }

    mutating func remove(_ client: any HeartbeatClient) {
        let id = ObjectIdentifier(client)
        guard let slot = slotOf.removeValue(forKey: id) else { return }
        slots[slot][id] = nil
    }

    /// Takes out the clients due at or before `tick` in `tick`'s slot, and appends them to `into`.
    mutating func takeDue(at tick: UInt64, into due: inout [any HeartbeatClient]) {
        let slot = Int(tick % UInt64(slots.count))
        guard !slots[slot].isEmpty else { return }
        var kept = 0
        for (id, entry) in slots[slot] {
            if entry.due <= tick {
                due.append(entry.client)
                slotOf[id] = nil
            } else {
                kept += 1
            }
        }
        if kept == 0 {
            slots[slot].removeAll()  // frees a burst's storage (sessions connecting at once)
        } else {
            slots[slot] = slots[slot].filter { $0.value.due > tick }
        }
    }
}
