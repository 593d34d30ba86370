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
