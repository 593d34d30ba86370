import NIOConcurrencyHelpers
import NIOCore
import STOMPCodec
import SwitchboardWire

/// Names an inbound Pub/Sub message alike on every instance, so that history records it once
/// although every instance receives it.
///
/// Pub/Sub messages carry no id. Every instance sees one channel's messages in the same order,
/// so the token is a digest of the message (destination, headers, body) and how many identical
/// messages came before it: the second identical `"ping"` is `<digest>-2` everywhere. A count
/// is forgotten after ``forgetAfter`` (11 minutes) without an identical message, longer than the
/// history function keeps a token (10 minutes): a count that started again at 1 while the
/// token `<digest>-1` was still kept made the function drop the new message as already
/// recorded, silently (a `"refresh"` sent every 5 minutes was recorded once in 10 minutes).
///
/// Limits: an instance that subscribed after identical messages began counts differently
/// until the count is forgotten, and may record such a message a second time. The table holds
/// at most ``maxDigests`` digests; past it the least recently seen is forgotten (an identical
/// message of it within 10 minutes is then dropped as recorded), and a warning says how many
/// were, at most every ``overflowReportInterval``. Backends that need exactly once publish
/// through the `switchboard_publish` function or an inbound stream.
///
/// Cost: constant per message, amortized. The digests are kept in the order they were last
/// seen (``Table``); expired ones are dropped from its front as messages come, never by a
/// scan of the whole table under the lock (filtering and sorting up to a million entries took
/// hundreds of milliseconds, every tenth of the table's size in new messages once full).
final class InboundOnceTokens: Sendable {
    /// Counts by digest, and the order in which digests were last seen.
    struct Table {
        struct Seen {
            var count: Int
            var last: NIODeadline
        }
        var seen: [UInt64: Seen] = [:]
        /// A record per time a digest was seen, oldest first; a record older than its digest's
        /// `last` is stale (dropped when it reaches the front, or by ``compact()``).
        var order = CircularBuffer<(digest: UInt64, at: NIODeadline)>()
        var unreported = 0
        var lastReport: NIODeadline?

        /// Counts `digest` seen at `now`; returns its count.
        mutating func see(_ digest: UInt64, now: NIODeadline, forgetAfter: TimeAmount, maxDigests: Int) -> Int {
            dropExpired(now: now, forgetAfter: forgetAfter)
            var entry = seen[digest].flatMap { now - $0.last <= forgetAfter ? $0 : nil } ?? Seen(count: 0, last: now)
            if seen[digest] == nil {
                while seen.count >= maxDigests, let oldest = order.popFirst() {
                    if seen[oldest.digest]?.last == oldest.at {
                        seen[oldest.digest] = nil
                        unreported += 1
                    }
                }
            }
            entry.count += 1
            entry.last = now
            seen[digest] = entry
            order.append((digest, now))
            if order.count > 2 * seen.count + 1024 { compact() }
            return entry.count
        }

        /// Drops the front's stale records and the digests not seen for `forgetAfter`.
        mutating func dropExpired(now: NIODeadline, forgetAfter: TimeAmount) {
            while let front = order.first {
                if let entry = seen[front.digest], entry.last == front.at {
                    guard now - front.at > forgetAfter else { return }
                    seen[front.digest] = nil
                }
                order.removeFirst()
            }
        }

        /// Keeps one record per digest (its newest): a digest seen often behind one seen long
        /// ago piled up stale records. Runs after at least as many records as it keeps were
        /// added since the last time: constant per message, amortized.
        mutating func compact() {
            var kept = CircularBuffer<(digest: UInt64, at: NIODeadline)>(initialCapacity: seen.count)
            for record in order where seen[record.digest]?.last == record.at { kept.append(record) }
            order = kept
        }
    }

    private let state = NIOLockedValueBox(Table())
    let forgetAfter: TimeAmount
    let maxDigests: Int
    /// Called (outside the lock) with how many counts still running were forgotten for room, at
    /// most once per ``overflowReportInterval``.
    let onOverflow: @Sendable (Int) -> Void
    static let overflowReportInterval = TimeAmount.seconds(10)

    init(forgetAfter: TimeAmount = .minutes(11), maxDigests: Int = 1_000_000, onOverflow: @escaping @Sendable (Int) -> Void = { _ in }) {
        self.forgetAfter = forgetAfter
        self.maxDigests = max(1, maxDigests)
        self.onOverflow = onOverflow
    }

    func token(destination: String, headers: STOMPHeaders, body: ByteBuffer, now: NIODeadline = .now()) -> String {
        var hash = Self.fnvOffset
        Self.mix(&hash, destination.utf8)
        for (name, value) in headers {
            Self.mix(&hash, name.utf8)
            Self.mix(&hash, value.utf8)
        }
        Self.mix(&hash, body.readableBytesView)
        let (count, dropped): (Int, Int) = state.withLockedValue { table in
            let count = table.see(hash, now: now, forgetAfter: forgetAfter, maxDigests: maxDigests)
            guard table.unreported > 0, table.lastReport.map({ now - $0 >= Self.overflowReportInterval }) ?? true else { return (count, 0) }
            defer { table.unreported = 0 }
            table.lastReport = now
            return (count, table.unreported)
        }
        if dropped > 0 { onOverflow(dropped) }
        return "\(String(hash, radix: 16))-\(count)"
    }

    /// Digests and order records held (tests).
    var sizes: (digests: Int, records: Int) { state.withLockedValue { ($0.seen.count, $0.order.count) } }

    static let fnvOffset: UInt64 = 0xcbf2_9ce4_8422_2325

    /// FNV-1a, with a separator after each part.
    static func mix<Bytes: Sequence>(_ hash: inout UInt64, _ bytes: Bytes) where Bytes.Element == UInt8 {
        for byte in bytes {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        hash ^= 0xff
        hash = hash &* 0x100_0000_01b3
    }
}
