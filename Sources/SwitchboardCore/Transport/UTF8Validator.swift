import SwitchboardWire

/// Checks that a byte stream is well-formed UTF-8 (RFC 3629 §4), piece by piece.
///
/// A WebSocket text message (RFC 6455 §8.1) may be split into fragments anywhere, even inside
/// a code point, so the validator carries the few bits of a partial code point from one
/// ``validate(_:)`` call to the next. It reads the bytes in place (nothing is copied) and
/// skips ASCII eight bytes at a time. Overlong forms, surrogates (U+D800–U+DFFF) and code
/// points above U+10FFFF are refused, as soon as the first byte that rules them out is seen.
package struct UTF8Validator: Sendable {
    /// Continuation bytes still expected by the code point in progress.
    @usableFromInline var pending: UInt8 = 0
    /// Range of the next continuation byte (narrower than 0x80...0xBF only right after a lead byte).
    @usableFromInline var lower: UInt8 = 0x80
    @usableFromInline var upper: UInt8 = 0xBF

    package init() {}

    /// Whether the bytes seen so far end between two code points (a message may end here).
    @inlinable
    package var isComplete: Bool { pending == 0 }

    /// Checks the next bytes of the stream. False as soon as they cannot continue valid UTF-8;
    /// after that the validator must be reset (``init()``) before reuse.
    @inlinable
    package mutating func validate(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var pending = self.pending
        var lower = self.lower
        var upper = self.upper
        let count = bytes.count
        var i = 0
        while i < count {
            if pending == 0 {
                // Skip ASCII a word at a time; stop at the word holding a byte >= 0x80.
                while i &+ 8 <= count, bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self) & 0x8080_8080_8080_8080 == 0 {
                    i &+= 8
                }
                if i == count { break }
                let b = bytes[i]
                i &+= 1
                if b < 0x80 { continue }
                switch b {
                case 0xC2...0xDF: pending = 1
                case 0xE0: pending = 2; lower = 0xA0  // no overlong 3-byte forms
                case 0xE1...0xEC, 0xEE...0xEF: pending = 2
                case 0xED: pending = 2; upper = 0x9F  // no surrogates
                case 0xF0: pending = 3; lower = 0x90  // no overlong 4-byte forms
                case 0xF1...0xF3: pending = 3
                case 0xF4: pending = 3; upper = 0x8F  // nothing above U+10FFFF
                default: return false  // 0x80...0xC1 (stray continuation, overlong 2-byte), 0xF5...0xFF
                }
            } else {
                let b = bytes[i]
                i &+= 1
                guard b >= lower && b <= upper else { return false }
                pending &-= 1
                lower = 0x80
                upper = 0xBF
            }
        }
        self.pending = pending
        self.lower = lower
        self.upper = upper
        return true
    }
}
