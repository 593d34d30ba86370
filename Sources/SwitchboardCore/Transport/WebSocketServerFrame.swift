import NIOCore
import NIOWebSocket
import SwitchboardWire

/// The complete frames of the message being fanned out on one event loop, keyed by what makes
/// a subscriber's copy differ: its subscription id, whether it carries an `ack` header, and
/// the session's escaping. Subscribers with the same key share one buffer.
///
/// Usually every subscriber of a topic uses the same few subscription ids (`0`, `sub-0`), so a
/// message is encoded a handful of times per loop, not once per subscriber. When more than
/// ``capacity`` distinct keys appear, the rest are encoded per subscriber.
package struct MessageFrameCache {
    @usableFromInline
    struct Entry {
        @usableFromInline let subscription: String
        @usableFromInline let variant: UInt8
        @usableFromInline let frame: ByteBuffer
        @usableFromInline init(subscription: String, variant: UInt8, frame: ByteBuffer) {
            self.subscription = subscription
            self.variant = variant
            self.frame = frame
        }
    }

    /// Most distinct frames kept per message.
    package static let capacity = 8

    @usableFromInline var message: PublishedMessage?
    @usableFromInline var entries: [Entry] = []

    package init() {
        entries.reserveCapacity(Self.capacity)
    }

    /// The frame of `message` for one subscriber, from the cache or freshly encoded.
    @inlinable
    package mutating func frame(
        _ message: PublishedMessage, subscription: String, ack: Bool, escape: Bool, escapeCR: Bool,
        allocator: ByteBufferAllocator
    ) -> ByteBuffer {
        if message !== self.message {
            entries.removeAll(keepingCapacity: true)
            self.message = message
        }
        let variant: UInt8 = (ack ? 4 : 0) | (escape ? 2 : 0) | (escapeCR ? 1 : 0)
        for entry in entries where entry.variant == variant && entry.subscription == subscription {
            return entry.frame
        }
        let frame = message.encodeWebSocketFrame(
            subscription: subscription, ack: ack ? message.messageID + "." + subscription : nil,
            escape: escape, escapeCarriageReturn: escapeCR, allocator: allocator)
        if entries.count < Self.capacity {
            entries.append(Entry(subscription: subscription, variant: variant, frame: frame))
        }
        return frame
    }

    /// Drops the cached frames (call when the message is done, so its buffers are freed).
    package mutating func clear() {
        entries.removeAll(keepingCapacity: true)
        message = nil
    }
}

/// What one delivery pass on a loop shares among the subscribers it writes to: the message's
/// frames, the loop's heart-beat tick, and tallies added to the loop's counters once at the end
/// (so a delivery touches no shared state).
package struct DeliveryBatch {
    package var frames = MessageFrameCache()
    /// The shard's heart-beat tick during this pass.
    package var tick: UInt64 = 0
    /// MESSAGE frames written, and their bytes.
    package var delivered = 0
    package var bytes = 0

    package init(tick: UInt64 = 0) { self.tick = tick }

    /// Starts a new pass: frames of the previous message dropped, tallies zeroed.
    package mutating func reset(tick: UInt64) {
        frames.clear()
        self.tick = tick
        delivered = 0
        bytes = 0
    }
}
