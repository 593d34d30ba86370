import NIOCore

/// Encodes STOMP frames into bytes.
public enum STOMPFrameEncoder {
    /// Writes `frame` into `buffer`.
    ///
    /// - Parameter escapeHeaders: whether the session's version escapes headers (1.1+).
    ///   `CONNECT`, `STOMP` and `CONNECTED` are never escaped.
    ///   The caller adds `content-length` when the body needs one.
    ///   `escapeCarriageReturn` is false for STOMP 1.1, which has no `\r` escape.
    public static func encode(_ frame: STOMPFrame, escapeHeaders: Bool, escapeCarriageReturn: Bool = true, into buffer: inout ByteBuffer) {
        buffer.writeString(frame.command.rawValue)
        buffer.writeInteger(UInt8(ascii: "\n"))
        writeHeaders(frame.headers, escape: escapeHeaders && frame.command.usesHeaderEscaping, escapeCarriageReturn: escapeCarriageReturn, into: &buffer)
        buffer.writeInteger(UInt8(ascii: "\n"))
        var body = frame.body
        buffer.writeBuffer(&body)
        buffer.writeInteger(UInt8(0))
    }

    /// Writes header lines (`name:value\n` each), escaped or not.
    @inlinable
    public static func writeHeaders(_ headers: STOMPHeaders, escape: Bool, escapeCarriageReturn: Bool = true, into buffer: inout ByteBuffer) {
        for (name, value) in headers {
            writeHeader(name, value, escape: escape, escapeCarriageReturn: escapeCarriageReturn, into: &buffer)
        }
    }

    /// Writes one `name:value\n` line.
    @inlinable
    public static func writeHeader(_ name: String, _ value: String, escape: Bool, escapeCarriageReturn: Bool = true, into buffer: inout ByteBuffer) {
        if escape {
            STOMPHeaderEscaping.writeEscaped(name, into: &buffer, escapeCarriageReturn: escapeCarriageReturn)
            buffer.writeInteger(UInt8(ascii: ":"))
            STOMPHeaderEscaping.writeEscaped(value, into: &buffer, escapeCarriageReturn: escapeCarriageReturn)
        } else {
            STOMPHeaderEscaping.writeUnescapedName(name, into: &buffer)
            buffer.writeInteger(UInt8(ascii: ":"))
            STOMPHeaderEscaping.writeUnescaped(value, into: &buffer)
        }
        buffer.writeInteger(UInt8(ascii: "\n"))
    }

    /// Encodes `frame` into a new buffer.
    public static func encode(_ frame: STOMPFrame, escapeHeaders: Bool, allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 64 + frame.body.readableBytes)
        encode(frame, escapeHeaders: escapeHeaders, into: &buffer)
        return buffer
    }
}
