import NIOConcurrencyHelpers
import NIOCore
import SwitchboardWire

/// The embedded broker's idempotency keys: a publish whose key was published with to the same
/// destination within ``window`` is not published again. Bounded: at most ``capacity`` keys,
/// past it the oldest go first (a retry later than that many other keyed publishes is
/// published again). Kept in insertion order, which is also their expiry order.
package final class IdempotencyKeys: Sendable {
    /// How long a key is remembered (as Redis remembers it in Redis mode).
    package static let window = TimeAmount.minutes(10)

    package let capacity: Int
    private struct State {
        var keys: Set<String> = []
        var order = CircularBuffer<(key: String, expires: NIODeadline)>()
    }
    private let state = NIOLockedValueBox(State())

    package init(capacity: Int = 100_000) {
        self.capacity = max(capacity, 1)
    }

    /// Claims `key` (an ``IdempotencyTokens`` token) for `destination`: true when it is new (the
    /// publish goes on), false when it was claimed within the window (a duplicate).
    package func claim(_ key: String, destination: String, now: NIODeadline = .now()) -> Bool {
        // The destination's length is bounded and holds no NUL: the pair is unambiguous.
        let entry = destination + "\u{0}" + key
        return self.state.withLockedValue { state in
            while let first = state.order.first, first.expires <= now {
                state.order.removeFirst()
                state.keys.remove(first.key)
            }
            guard !state.keys.contains(entry) else { return false }
            // Full: the oldest goes (a duplicate claim above evicts nothing).
            while state.order.count >= self.capacity, let first = state.order.popFirst() {
                state.keys.remove(first.key)
            }
            state.keys.insert(entry)
            state.order.append((entry, now + Self.window))
            return true
        }
    }

    /// Keys remembered now.
    package var count: Int { self.state.withLockedValue { $0.keys.count } }
}

/// An idempotency key for a destination whose publishes cannot keep one: in Redis mode the key
/// is kept in the same atomic step that records the message in the destination's history, so
/// a destination without history (`history.enabled: false`, `history.disabled-prefixes`) has
/// none. Nothing was published.
package struct IdempotencyUnavailable: Error, CustomStringConvertible {
    package var destination: String

    package init(destination: String) { self.destination = destination }

    package var description: String {
        "an idempotency key needs the destination's history in Redis mode (history.enabled, history.disabled-prefixes); \(destination) keeps none"
    }
}
