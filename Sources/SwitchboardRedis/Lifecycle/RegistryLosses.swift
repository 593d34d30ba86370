import SwitchboardWire
import Synchronization

/// The losses of this instance's registry that Redis told it of (``RegistryLoss``, numbered by
/// when Redis found them): every batch and renewal says the last one it acted on, Redis tells
/// a loss again until then (an answer lost on the way, a retry answered "applied before"), and
/// a loss told twice (to two loops at once, or to a batch and a renewal) closes the sessions
/// once.
package final class RegistryLosses: Sendable {
    private let seen = Atomic<Int>(0)

    package init() {}

    /// The number of the last loss acted on (0: none).
    package var lastSeen: Int { seen.load(ordering: .relaxed) }

    /// A loss told by Redis. True when it is new, and the caller closes the sessions.
    package func told(_ loss: RegistryLoss) -> Bool {
        guard case .numbered(let number) = loss else { return true }
        var current = seen.load(ordering: .relaxed)
        while number > current {
            let (exchanged, original) = seen.compareExchange(expected: current, desired: number, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
        return false
    }
}
