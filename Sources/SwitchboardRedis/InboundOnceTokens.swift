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
/// is forgotten after two minutes without an identical message (the history function keeps a
/// token for one minute), so identical messages far apart start again at 1.
///
/// Limits: an instance that subscribed after identical messages began counts differently for
/// the next two minutes, and may record such a message a second time. Backends that need
/// exactly once publish through the `switchboard_publish` function or an inbound stream.
final class InboundOnceTokens: Sendable {
    private struct Seen {
        var count: Int
        var last: NIODeadline
    }

    private let state = NIOLockedValueBox<(seen: [UInt64: Seen], lastPrune: NIODeadline)>(([:], .now()))
    let forgetAfter: TimeAmount

    init(forgetAfter: TimeAmount = .minutes(2)) { self.forgetAfter = forgetAfter }

    func token(destination: String, headers: STOMPHeaders, body: ByteBuffer, now: NIODeadline = .now()) -> String {
        var hash = Self.fnvOffset
        Self.mix(&hash, destination.utf8)
        for (name, value) in headers {
            Self.mix(&hash, name.utf8)
            Self.mix(&hash, value.utf8)
        }
        Self.mix(&hash, body.readableBytesView)
        let count: Int = state.withLockedValue { s in
            if now - s.lastPrune > forgetAfter {
                s.seen = s.seen.filter { now - $0.value.last <= forgetAfter }
                s.lastPrune = now
            }
            var seen = s.seen[hash].flatMap { now - $0.last <= forgetAfter ? $0 : nil } ?? Seen(count: 0, last: now)
            seen.count += 1
            seen.last = now
            s.seen[hash] = seen
            return seen.count
        }
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
