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
/// at most ``maxDigests`` digests; past it the oldest tenth is forgotten, with a warning (an
/// identical message of one of them within 10 minutes is then dropped). Backends that need
/// exactly once publish through the `switchboard_publish` function or an inbound stream.
final class InboundOnceTokens: Sendable {
    private struct Seen {
        var count: Int
        var last: NIODeadline
    }

    private let state = NIOLockedValueBox<(seen: [UInt64: Seen], lastPrune: NIODeadline)>(([:], .now()))
    let forgetAfter: TimeAmount
    let maxDigests: Int
    /// Called (outside the lock) when the table was full and digests still counting were dropped.
    let onOverflow: @Sendable (Int) -> Void

    init(forgetAfter: TimeAmount = .minutes(11), maxDigests: Int = 1_000_000, onOverflow: @escaping @Sendable (Int) -> Void = { _ in }) {
        self.forgetAfter = forgetAfter
        self.maxDigests = maxDigests
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
        let (count, dropped): (Int, Int) = state.withLockedValue { s in
            if now - s.lastPrune > forgetAfter || s.seen.count >= maxDigests {
                s.seen = s.seen.filter { now - $0.value.last <= forgetAfter }
                s.lastPrune = now
            }
            var dropped = 0
            if s.seen.count >= maxDigests {
                let oldest = s.seen.sorted { $0.value.last < $1.value.last }.prefix(max(1, maxDigests / 10))
                for entry in oldest { s.seen[entry.key] = nil }
                dropped = oldest.count
            }
            var seen = s.seen[hash].flatMap { now - $0.last <= forgetAfter ? $0 : nil } ?? Seen(count: 0, last: now)
            seen.count += 1
            seen.last = now
            s.seen[hash] = seen
            return (seen.count, dropped)
        }
        if dropped > 0 { onOverflow(dropped) }
        return "\(String(hash, radix: 16))-\(count)"
    }

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
