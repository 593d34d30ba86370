import NIOConcurrencyHelpers
import NIOCore
import SwitchboardWire

/// Where a resuming subscription starts (the `SUBSCRIBE` headers `x-resume-from` and `x-last`).
package enum HistoryStart: Sendable, Equatable {
    /// Every message after this position.
    case after(StreamPosition)
    /// The last `n` messages.
    case last(Int)
}

/// What a resuming subscription gets: the messages to replay (oldest first) and whether they
/// are complete.
package struct HistoryReplay: Sendable {
    package var messages: [PublishedMessage]
    /// True when nothing the client asked for is missing: same epoch, nothing trimmed or expired.
    package var recovered: Bool
    /// The destination's newest position (the replay's last message, or where history stands).
    package var position: StreamPosition

    package init(messages: [PublishedMessage], recovered: Bool, position: StreamPosition) {
        self.messages = messages
        self.recovered = recovered
        self.position = position
    }
}

/// The in-memory history of each destination (the embedded broker's): a ring of the last
/// `maxLength` messages, none older than `ttl`, per destination, with a dense sequence number.
///
/// ``record(_:deliver:)`` numbers a message, keeps it and hands it on under one lock per
/// history, so every subscriber sees a destination's messages in sequence order, and
/// ``resume(_:from:register:)`` registers a subscription and reads history under the same lock:
/// a message is then either in the replay or delivered live after it (the subscription skips
/// live copies up to the replay's end), never both and never neither.
///
/// Limits: `maxLength` messages per destination, none older than `ttl` (every destination is
/// trimmed every ``sweepInterval``, idle ones too), `maxBytes` over all of them (beyond it the
/// oldest messages over all destinations are dropped), `maxDestinations` destinations (beyond it
/// the ones holding no message are dropped first, then the ones published to least recently;
/// a dropped destination's next message starts a new epoch, so a client resuming from the old
/// one is told it was not recovered).
package final class DestinationHistory: Sendable {
    package struct Settings: Sendable, Equatable {
        package var maxLength = 100
        package var ttl: TimeAmount = .minutes(5)
        package var maxDestinations = 10_000
        /// Bytes kept over every destination (bodies, headers and a fixed cost per message):
        /// past it, the oldest messages over all destinations are dropped, down to nine tenths
        /// of it.
        package var maxBytes = 256 * 1024 * 1024
        /// Destinations starting with one of these keep no history.
        package var disabledPrefixes: [String] = []
        /// Other windows for destinations starting with a prefix (the longest matching prefix
        /// wins; destinations as clients name them).
        package var windows: [Window] = []

        package struct Window: Sendable, Equatable {
            package var prefix: String
            package var maxLength: Int
            package var ttl: TimeAmount

            package init(prefix: String, maxLength: Int, ttl: TimeAmount) {
                self.prefix = prefix
                self.maxLength = maxLength
                self.ttl = ttl
            }
        }

        package init() {}

        /// Whether `destination` keeps history (no disabled prefix matches it).
        package func covers(_ destination: String) -> Bool {
            guard !disabledPrefixes.isEmpty else { return true }
            let shown = UserDestinations.clientDestination(forRouting: destination) ?? destination
            return !disabledPrefixes.contains { shown.hasPrefix($0) }
        }

        /// The window of `destination`: the longest matching prefix's, or the default.
        package func window(for destination: String) -> (maxLength: Int, ttl: TimeAmount) {
            guard !windows.isEmpty else { return (maxLength, ttl) }
            let shown = UserDestinations.clientDestination(forRouting: destination) ?? destination
            let match = windows.filter { shown.hasPrefix($0.prefix) }.max { $0.prefix.count < $1.prefix.count }
            return match.map { ($0.maxLength, $0.ttl) } ?? (maxLength, ttl)
        }
    }

    private struct Entry {
        var sequence: UInt64
        var time: NIODeadline
        var message: PublishedMessage
    }

    private struct Ring {
        var epoch: String
        var next: UInt64 = 1
        var entries = CircularBuffer<Entry>()
        /// What `entries` count against ``Settings/maxBytes``.
        var bytes = 0
        var lastPublished: NIODeadline
        var maxLength: Int
        var ttl: TimeAmount

        var position: StreamPosition { StreamPosition(epoch: epoch, sequence: next - 1) }

        /// Numbers `message` as the next of this ring, keeps it, and returns the numbered copy.
        mutating func append(_ message: PublishedMessage, now: NIODeadline) -> PublishedMessage {
            let numbered = message.positioned(StreamPosition(epoch: epoch, sequence: next))
            entries.append(Entry(sequence: next, time: now, message: numbered))
            bytes += Self.cost(of: numbered)
            next += 1
            lastPublished = now
            trim(now: now)
            return numbered
        }

        /// Drops what is beyond the window: over `maxLength`, older than `ttl`.
        mutating func trim(now: NIODeadline) {
            while entries.count > maxLength { dropOldest() }
            let cutoff = now - ttl
            while let first = entries.first, first.time < cutoff { dropOldest() }
        }

        mutating func dropOldest() {
            bytes -= Self.cost(of: entries.removeFirst().message)
        }

        /// What a kept message counts: the storage its body keeps alive (a slice keeps its whole
        /// buffer: counting the body's bytes only, small bodies of padded frames held 40 times
        /// the budget), its destination and headers twice (the frame prefixes it keeps for each
        /// STOMP version's escaping) and 256 bytes for the rest.
        static func cost(of message: PublishedMessage) -> Int {
            var headers = message.destination.utf8.count
            for header in message.headers { headers += header.name.utf8.count + header.value.utf8.count + 2 }
            return max(message.body.readableBytes, message.body.storageCapacity) + 2 * headers + 256
        }
    }

    private struct State {
        var rings: [String: Ring] = [:]
        /// The sum of the rings' ``Ring/bytes``.
        var bytes = 0
        var generation: UInt64 = 0
        /// The destinations whose ring holds no message (``evictIfFull(_:forSubscribe:)``).
        var empty: Set<String> = []
        /// When every ring is next trimmed (``maintain(_:now:)``).
        var nextSweep: NIODeadline?
    }

    /// Runs `change` on `destination`'s ring, keeping ``State/bytes`` and ``State/empty`` current.
    private static func update(_ s: inout State, _ destination: String, _ change: (inout Ring) -> Void) {
        // One access to the ring (each `s.rings[destination]` hashes the name: this runs per publish).
        func measured(_ ring: inout Ring) -> (bytes: Int, wasEmpty: Bool, isEmpty: Bool) {
            let before = ring.bytes, wasEmpty = ring.entries.isEmpty
            change(&ring)
            return (ring.bytes - before, wasEmpty, ring.entries.isEmpty)
        }
        let (bytes, wasEmpty, isEmpty) = measured(&s.rings[destination]!)
        s.bytes += bytes
        if isEmpty != wasEmpty {
            if isEmpty { s.empty.insert(destination) } else { s.empty.remove(destination) }
        }
    }

    /// How often every destination's expired messages are dropped, also of destinations nobody
    /// publishes to or subscribes to any more (their memory was held until the next use).
    static let sweepInterval: TimeAmount = .seconds(2)

    package let settings: Settings
    /// This process's part of every epoch: a restart starts new epochs.
    package let processEpoch: String
    private let state = NIOLockedValueBox(State())
    private let clock: @Sendable () -> NIODeadline

    package init(settings: Settings, processEpoch: String = DestinationHistory.randomEpoch(), clock: @escaping @Sendable () -> NIODeadline = { .now() }) {
        self.settings = settings
        self.processEpoch = processEpoch
        self.clock = clock
    }

    package static func randomEpoch() -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
        return String((0..<8).map { _ in alphabet.randomElement()! })
    }

    /// Whether `destination` keeps history.
    package func covers(_ destination: String) -> Bool { settings.covers(destination) }

    /// Numbers `message`, keeps it, and calls `deliver` with the numbered copy (carrying
    /// `x-position`) before the next message of any destination is numbered. `deliver` must
    /// hand the message on in call order (``FanoutHub/deliver(_:scope:)`` does), not deliver
    /// it on the spot: a message numbered earlier on another thread may still be queued for
    /// this loop.
    package func record(_ message: PublishedMessage, deliver: (PublishedMessage) -> Void) {
        state.withLockedValue { s in
            // Read under the lock: a time read before it could be older than the entry another
            // thread appended meanwhile (kept past its time to live, `lastPublished` moved back).
            let now = clock()
            maintain(&s, now: now)
            ensureRing(&s, message.destination, now: now)
            Self.update(&s, message.destination) { deliver($0.append(message, now: now)) }
            if s.bytes > settings.maxBytes { shrink(&s) }
        }
    }

    /// Registers a subscription (`register` runs under the history's lock) and reads what it
    /// should replay from `start`.
    ///
    /// From a position of the current epoch still in the window: everything after it,
    /// `recovered`. From another epoch, or a trimmed or expired position: everything retained,
    /// not `recovered`. A position ahead of the newest: nothing, not `recovered`.
    package func resume(_ destination: String, from start: HistoryStart, register: () -> Void) -> HistoryReplay {
        state.withLockedValue { s in
            let now = clock()
            register()
            maintain(&s, now: now)
            let created = ensureRing(&s, destination, now: now, forSubscribe: true)
            Self.update(&s, destination) { $0.trim(now: now) }
            let ring = s.rings[destination]!
            if created {
                // Nothing published since this history began: a fresh epoch, nothing missed
                // unless the client comes from another one.
                let recovered: Bool
                switch start {
                case .after: recovered = false  // a position of a history this one is not
                case .last: recovered = true
                }
                return HistoryReplay(messages: [], recovered: recovered, position: ring.position)
            }
            // Only the messages replayed are copied (under the lock): a plain SUBSCRIBE, or a
            // resume that missed nothing, copied the whole ring to keep none of it.
            let retained = { ring.entries.map(\.message) }
            let oldest = ring.entries.first?.sequence ?? ring.next
            switch start {
            case .after(let position):
                guard position.epoch == ring.epoch else {
                    return HistoryReplay(messages: retained(), recovered: false, position: ring.position)
                }
                guard position.sequence < ring.next else {
                    return HistoryReplay(messages: [], recovered: false, position: ring.position)
                }
                if position.sequence + 1 < oldest {
                    return HistoryReplay(messages: retained(), recovered: false, position: ring.position)
                }
                let skip = Int(position.sequence + 1 - oldest)
                return HistoryReplay(messages: ring.entries.dropFirst(skip).map(\.message), recovered: true, position: ring.position)
            case .last(let count):
                let wanted = min(count, Int(ring.next - 1))
                return HistoryReplay(
                    messages: ring.entries.suffix(count).map(\.message), recovered: ring.entries.count >= wanted, position: ring.position)
            }
        }
    }

    /// Number of destinations with a history.
    package var destinationCount: Int { state.withLockedValue { $0.rings.count } }

    /// Messages kept, over every destination.
    package var retainedMessages: Int { state.withLockedValue { $0.rings.values.reduce(0) { $0 + $1.entries.count } } }

    /// What the kept messages count against ``Settings/maxBytes``.
    package var retainedBytes: Int { state.withLockedValue { $0.bytes } }

    /// Every ``sweepInterval``: drops the expired messages of every destination.
    private func maintain(_ s: inout State, now: NIODeadline) {
        if let next = s.nextSweep, now < next { return }
        s.nextSweep = now + Self.sweepInterval
        for key in Array(s.rings.keys) {
            Self.update(&s, key) { $0.trim(now: now) }
        }
    }

    /// Past ``Settings/maxBytes``: drops the oldest messages over all destinations until nine
    /// tenths of it are left (so a stream of large messages does not do this on every publish):
    /// the newest stay, whatever their destination. A resume from a dropped position is told it was not
    /// recovered, as for a trimmed one. A heap of the rings' oldest entries: O(log n) per message.
    private func shrink(_ s: inout State) {
        let target = settings.maxBytes / 10 * 9
        var heap = s.rings.compactMap { key, ring in ring.entries.first.map { Head(time: $0.time, key: key) } }
        for i in stride(from: heap.count / 2 - 1, through: 0, by: -1) { Self.siftDown(&heap, i) }
        while s.bytes > target, let oldest = heap.first {
            Self.update(&s, oldest.key) { $0.dropOldest() }
            if let next = s.rings[oldest.key]!.entries.first {
                heap[0].time = next.time
            } else {
                heap[0] = heap[heap.count - 1]
                heap.removeLast()
            }
            if !heap.isEmpty { Self.siftDown(&heap, 0) }
        }
    }

    /// A ring's oldest entry, in ``shrink(_:)``'s heap.
    private struct Head {
        var time: NIODeadline
        var key: String
    }

    private static func siftDown(_ heap: inout [Head], _ start: Int) {
        var i = start
        while true {
            let left = 2 * i + 1, right = left + 1
            var smallest = i
            if left < heap.count, heap[left].time < heap[smallest].time { smallest = left }
            if right < heap.count, heap[right].time < heap[smallest].time { smallest = right }
            if smallest == i { return }
            heap.swapAt(i, smallest)
            i = smallest
        }
    }

    /// Gives `destination` a ring (a new epoch) if it has none; true when it was created.
    @discardableResult
    private func ensureRing(_ s: inout State, _ destination: String, now: NIODeadline, forSubscribe: Bool = false) -> Bool {
        guard s.rings[destination] == nil else { return false }
        evictIfFull(&s, forSubscribe: forSubscribe)
        s.generation += 1
        let window = settings.window(for: destination)
        s.rings[destination] = Ring(
            epoch: processEpoch + String(s.generation, radix: 36), lastPublished: now, maxLength: window.maxLength, ttl: window.ttl)
        s.empty.insert(destination)
        return true
    }

    /// Makes room for one more destination: drops destinations that hold no message first (a
    /// `SUBSCRIBE` alone creates one: subscribing to many new topics must not evict histories
    /// that hold messages), then the ones published to least recently. For a publish, a
    /// hundredth of the table at a time, so that a stream of new destinations does not sort it
    /// every time. For a `SUBSCRIBE` (`forSubscribe`), up to a hundredth of the empty ones
    /// (listed: only they are sorted), else the one published to least recently (one scan):
    /// one SUBSCRIBE evicted a hundredth of the histories that held messages.
    private func evictIfFull(_ s: inout State, forSubscribe: Bool = false) {
        guard s.rings.count >= settings.maxDestinations else { return }
        let count = max(1, min(s.rings.count, settings.maxDestinations / 100))
        let victims: [String]
        if forSubscribe {
            if !s.empty.isEmpty {
                // The oldest first: a ring made a moment ago is a subscriber's that just came.
                let aged = s.empty.map { ($0, s.rings[$0]!.lastPublished) }
                victims = aged.sorted { $0.1 < $1.1 }.prefix(count).map(\.0)
            } else {
                victims = s.rings.min { $0.value.lastPublished < $1.value.lastPublished }.map { [$0.key] } ?? []
            }
        } else {
            victims = s.rings.sorted {
                ($0.value.entries.isEmpty ? 0 : 1, $0.value.lastPublished) < ($1.value.entries.isEmpty ? 0 : 1, $1.value.lastPublished)
            }.prefix(count).map(\.key)
        }
        for key in victims {
            s.bytes -= s.rings[key]!.bytes
            s.rings[key] = nil
            s.empty.remove(key)
        }
    }
}
