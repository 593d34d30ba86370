import NIOCore

/// STOMP 1.1+ header escaping: `\r` `\n` `\c` (colon) and `\\`.
public enum STOMPHeaderEscaping {
    /// Decodes an escaped header name or value; any other escape is a fatal error, and so are
    /// bytes that are not UTF-8.
    ///
    /// - Parameter carriageReturn: whether `\r` is defined (STOMP 1.2); in 1.1 it is an
    ///   undefined escape.
    @inlinable
    public static func unescape(_ bytes: UnsafeRawBufferPointer, carriageReturn: Bool = true) throws(STOMPDecodingError) -> String {
        guard bytes.firstIndex(of: UInt8(ascii: "\\")) != nil else {
            return try utf8(bytes)
        }
        var out = [UInt8]()
        out.reserveCapacity(bytes.count)
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            if b != UInt8(ascii: "\\") {
                out.append(b)
                i += 1
                continue
            }
            guard i + 1 < bytes.count else { throw .undefinedEscape("\\") }
            switch bytes[i + 1] {
            case UInt8(ascii: "r") where carriageReturn: out.append(UInt8(ascii: "\r"))
            case UInt8(ascii: "n"): out.append(UInt8(ascii: "\n"))
            case UInt8(ascii: "c"): out.append(UInt8(ascii: ":"))
            case UInt8(ascii: "\\"): out.append(UInt8(ascii: "\\"))
            default:
                throw .undefinedEscape("\\" + String(decoding: [bytes[i + 1]], as: UTF8.self))
            }
            i += 2
        }
        guard let string = String(validating: out, as: UTF8.self) else { throw .invalidUTF8 }
        return string
    }

    /// `bytes` as a string, when they are UTF-8.
    @inlinable
    public static func utf8(_ bytes: UnsafeRawBufferPointer) throws(STOMPDecodingError) -> String {
        guard let string = String(validating: bytes, as: UTF8.self) else { throw .invalidUTF8 }
        return string
    }

    /// Writes `string` escaped for a 1.1+ header.
    ///
    /// No raw NUL, CR or LF is ever written: a NUL (which STOMP cannot carry in a header) is
    /// replaced by a space, and so is a carriage return when it has no escape.
    ///
    /// - Parameter escapeCarriageReturn: `\r` is defined by STOMP 1.2 only; for a 1.1 peer
    ///   pass false.
    @inlinable
    public static func writeEscaped(_ string: String, into buffer: inout ByteBuffer, escapeCarriageReturn: Bool = true) {
        var needs = false
        for b in string.utf8 where b == UInt8(ascii: "\\") || b == UInt8(ascii: ":") || b == UInt8(ascii: "\n") || b == UInt8(ascii: "\r") || b == 0 {
            needs = true
            break
        }
        guard needs else {
            buffer.writeString(string)
            return
        }
        for b in string.utf8 {
            switch b {
            case UInt8(ascii: "\\"): buffer.writeStaticString("\\\\")
            case UInt8(ascii: ":"): buffer.writeStaticString("\\c")
            case UInt8(ascii: "\n"): buffer.writeStaticString("\\n")
            case UInt8(ascii: "\r") where escapeCarriageReturn: buffer.writeStaticString("\\r")
            case UInt8(ascii: "\r"), 0: buffer.writeInteger(UInt8(ascii: " "))
            default: buffer.writeInteger(b)
            }
        }
    }

    /// Writes `string` for a frame that is not escaped (STOMP 1.0, CONNECT, CONNECTED).
    ///
    /// Line breaks and NULs cannot be represented there; they are replaced by spaces so the
    /// frame stays well-formed. A colon is legal in a value (only the first one splits).
    @inlinable
    public static func writeUnescaped(_ string: String, into buffer: inout ByteBuffer) {
        var clean = true
        for b in string.utf8 where b == UInt8(ascii: "\n") || b == UInt8(ascii: "\r") || b == 0 {
            clean = false
            break
        }
        if clean {
            buffer.writeString(string)
            return
        }
        for b in string.utf8 {
            buffer.writeInteger((b == UInt8(ascii: "\n") || b == UInt8(ascii: "\r") || b == 0) ? UInt8(ascii: " ") : b)
        }
    }

    /// Writes a header name without escaping (STOMP 1.0): like ``writeUnescaped(_:into:)``, and
    /// a `:` becomes `_`. Unescaped, a reader ends the name at the first `:`, so a name such as
    /// `subscription:` (sent escaped by a 1.2 client) would reach a 1.0 reader as a second
    /// `subscription` header, placed before the real one.
    public static func writeUnescapedName(_ name: String, into buffer: inout ByteBuffer) {
        guard name.utf8.contains(UInt8(ascii: ":")) else {
            writeUnescaped(name, into: &buffer)
            return
        }
        var cleaned = ByteBuffer()
        writeUnescaped(name, into: &cleaned)
        for b in cleaned.readableBytesView { buffer.writeInteger(b == UInt8(ascii: ":") ? UInt8(ascii: "_") : b) }
    }
}
