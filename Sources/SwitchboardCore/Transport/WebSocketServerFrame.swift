import NIOCore
import NIOWebSocket

/// Builds complete, unmasked server WebSocket frames (RFC 6455 §5.2) in one buffer.
///
/// The session writes these bytes straight to the channel: no `WebSocketFrame` value, no
/// encoder handler, and header and payload in one buffer, so a delivery is one buffer and one
/// `write` per connection. A frame built once can be written to many connections unchanged
/// (fan-out shares it; see ``MessageFrameCache``).
public enum WebSocketServerFrame {
    /// Longest header of an unmasked frame: 2 bytes + a 64-bit extended length.
    public static let maxHeaderBytes = 10

    /// Builds one final frame whose payload `writePayload` appends to the buffer it is given.
    ///
    /// The payload is written after `maxHeaderBytes` of headroom and the header is put in
    /// front of it once its length is known, so nothing is copied.
    @inlinable
    public static func build(
        opcode: WebSocketOpcode, payloadCapacity: Int, allocator: ByteBufferAllocator,
        _ writePayload: (inout ByteBuffer) -> Void
    ) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: maxHeaderBytes + payloadCapacity)
        buffer.moveWriterIndex(forwardBy: maxHeaderBytes)
        buffer.moveReaderIndex(forwardBy: maxHeaderBytes)
        writePayload(&buffer)
        prependHeader(&buffer, opcode: opcode)
        return buffer
    }

    /// One final frame carrying a copy of `payload`.
    public static func make(opcode: WebSocketOpcode, payload: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer {
        build(opcode: opcode, payloadCapacity: payload.readableBytes, allocator: allocator) { $0.writeImmutableBuffer(payload) }
    }

    /// A close frame with `code` (or none) and a UTF-8 `reason`.
    public static func close(code: WebSocketErrorCode?, reason: String = "", allocator: ByteBufferAllocator) -> ByteBuffer {
        build(opcode: .connectionClose, payloadCapacity: 2 + reason.utf8.count, allocator: allocator) { b in
            if let code { b.write(webSocketErrorCode: code) }
            b.writeString(reason)
        }
    }

    /// Writes the header of a final, unmasked frame for the readable bytes of `buffer` into
    /// the headroom before them. Requires ``maxHeaderBytes`` of headroom.
    @usableFromInline
    static func prependHeader(_ buffer: inout ByteBuffer, opcode: WebSocketOpcode) {
        let length = buffer.readableBytes
        let first = 0x80 | UInt8(webSocketOpcode: opcode)
        let start: Int
        if length <= 125 {
            start = buffer.readerIndex - 2
            buffer.setInteger(first, at: start)
            buffer.setInteger(UInt8(length), at: start + 1)
        } else if length <= Int(UInt16.max) {
            start = buffer.readerIndex - 4
            buffer.setInteger(first, at: start)
            buffer.setInteger(UInt8(126), at: start + 1)
            buffer.setInteger(UInt16(length), at: start + 2)
        } else {
            start = buffer.readerIndex - 10
            buffer.setInteger(first, at: start)
            buffer.setInteger(UInt8(127), at: start + 1)
            buffer.setInteger(UInt64(length), at: start + 2)
        }
        buffer.moveReaderIndex(to: start)
    }
}

/// The complete frames of the message being fanned out on one event loop, keyed by what makes
/// a subscriber's copy differ: its subscription id, whether it carries an `ack` header, and
/// the session's escaping. Subscribers with the same key share one buffer.
///
/// Usually every subscriber of a topic uses the same few subscription ids (`0`, `sub-0`), so a
/// message is encoded a handful of times per loop, not once per subscriber. When more than
/// ``capacity`` distinct keys appear, the rest are encoded per subscriber.
public struct MessageFrameCache {
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
    public static let capacity = 8

    @usableFromInline var message: PublishedMessage?
    @usableFromInline var entries: [Entry] = []

    public init() {
        entries.reserveCapacity(Self.capacity)
    }

    /// The frame of `message` for one subscriber, from the cache or freshly encoded.
    @inlinable
    public mutating func frame(
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
    public mutating func clear() {
        entries.removeAll(keepingCapacity: true)
        message = nil
    }
}

/// What one delivery pass on a loop shares among the subscribers it writes to: the message's
/// frames, the loop's heart-beat tick, and tallies added to the loop's counters once at the end
/// (so a delivery touches no shared state).
public struct DeliveryBatch {
    public var frames = MessageFrameCache()
    /// The shard's heart-beat tick during this pass.
    public var tick: UInt64 = 0
    /// MESSAGE frames written, and their bytes.
    public var delivered = 0
    public var bytes = 0

    public init(tick: UInt64 = 0) { self.tick = tick }

    /// Starts a new pass: frames of the previous message dropped, tallies zeroed.
    public mutating func reset(tick: UInt64) {
        frames.clear()
        self.tick = tick
        delivered = 0
        bytes = 0
    }
}
