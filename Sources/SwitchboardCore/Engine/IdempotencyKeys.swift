import NIOConcurrencyHelpers
import NIOCore
import SwitchboardWire

/// The embedded broker's idempotency keys: a publish whose key was published with to the same
/// destination within ``window`` is not published again. Bounded: at most ``capacity`` keys,
/// past it the oldest go first (a retry later than that many other keyed publishes is
/// published again). Kept in insertion order, which is also their expiry order. Each is kept as
/// a 128-bit digest of its destination and token (``Digest``): 100,000 keys take a few MB
/// whatever their length (a false duplicate would need two of them to collide in 128 bits).
package final class IdempotencyKeys: Sendable {
    /// How long a key is remembered (as Redis remembers it in Redis mode).
    package static let window = TimeAmount.minutes(10)

    /// Two independently seeded 64-bit hashes of a destination and a token (this process's
    /// random seed: the digests never leave it). Of their UTF-8 bytes, as Redis compares them:
    /// Swift's `String` hashing takes canonically equivalent texts (`é` and `e` + U+0301) for
    /// one key.
    struct Digest: Hashable {
        var high: UInt64
        var low: UInt64

        init(destination: String, token: String) {
            var first = Hasher()
            first.combine(0 as UInt8)
            Self.combine(destination, into: &first)
            Self.combine(token, into: &first)
            var second = Hasher()
            second.combine(1 as UInt8)
            Self.combine(token, into: &second)
            Self.combine(destination, into: &second)
            high = UInt64(UInt(bitPattern: first.finalize()))
            low = UInt64(UInt(bitPattern: second.finalize()))
        }

        private static func combine(_ text: String, into hasher: inout Hasher) {
            var text = text
            hasher.combine(text.utf8.count)
            text.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
        }
    }

    package let capacity: Int
    private struct State {
        var keys: Set<Digest> = []
        var order = CircularBuffer<(key: Digest, expires: NIODeadline)>()
    }
    private let state = NIOLockedValueBox(State())

    package init(capacity: Int = 100_000) {
        self.capacity = max(capacity, 1)
    }

    /// Claims `key` (an ``IdempotencyTokens`` token) for `destination`: true when it is new (the
    /// publish goes on), false when it was claimed within the window (a duplicate).
    package func claim(_ key: String, destination: String, now: NIODeadline = .now()) -> Bool {
        let entry = Digest(destination: destination, token: key)
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
