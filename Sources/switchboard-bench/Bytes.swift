// Low-level helpers: clocks, decimal encoding into ByteBuffer, byte scanning.
// Everything here is allocation free; it runs once per message on the hot paths.

import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Wall-clock nanoseconds (CLOCK_REALTIME): comparable between processes on one machine,
/// which is what the payload timestamps need.
@inline(__always) func wallNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Monotonic nanoseconds, for scheduling and durations.
@inline(__always) func monoNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

@inline(__always) func decimalDigits(_ value: UInt64) -> Int {
    var n = 1
    var x = value
    while x >= 10 { x /= 10; n += 1 }
    return n
}

extension ByteBuffer {
    /// Writes `value` in decimal without allocating.
    @inline(__always) mutating func writeDecimal(_ value: UInt64) {
        let n = decimalDigits(value)
        let start = self.writerIndex
        self.writeRepeatingByte(UInt8(ascii: "0"), count: n)
        var x = value
        var i = start + n - 1
        while true {
            self.setInteger(UInt8(truncatingIfNeeded: 48 &+ x % 10), at: i)
            x /= 10
            if x == 0 { break }
            i -= 1
        }
    }

    /// Header of a client→server WebSocket frame (FIN set, masked with a zero key so the
    /// payload goes out unchanged: valid per RFC 6455, and it costs nothing).
    @inline(__always) mutating func writeWSClientFrameHeader(opcode: UInt8, length: Int) {
        self.writeInteger(UInt8(0x80 | opcode))
        if length < 126 {
            self.writeInteger(UInt8(0x80 | UInt8(length)))
        } else if length <= 0xFFFF {
            self.writeInteger(UInt8(0x80 | 126))
            self.writeInteger(UInt16(length))
        } else {
            self.writeInteger(UInt8(0x80 | 127))
            self.writeInteger(UInt64(length))
        }
        self.writeInteger(UInt32(0))
    }
}

typealias BytePtr = UnsafePointer<UInt8>

/// Index of the first `byte` in [from, end), or -1.
@inline(__always) func findByte(_ base: BytePtr, _ from: Int, _ end: Int, _ byte: UInt8) -> Int {
    if from >= end { return -1 }
    guard let hit = memchr(base + from, Int32(byte), end - from) else { return -1 }
    return base.distance(to: hit.assumingMemoryBound(to: UInt8.self))
}

/// Index just after the first "\r\n\r\n" in [from, end), or -1.
@inline(__always) func findHeaderEnd(_ base: BytePtr, _ from: Int, _ end: Int) -> Int {
    var i = from
    while i + 3 < end {
        let nl = findByte(base, i + 3, end, UInt8(ascii: "\n"))
        if nl < 0 { return -1 }
        if base[nl - 1] == 13 && base[nl - 2] == 10 && base[nl - 3] == 13 { return nl + 1 }
        i = nl - 2
    }
    return -1
}

/// Case-insensitive: does [at, end) start with `lowerASCII`?
@inline(__always) func hasPrefixCI(_ base: BytePtr, _ at: Int, _ end: Int, _ lowerASCII: StaticString) -> Bool {
    let n = lowerASCII.utf8CodeUnitCount
    if end - at < n { return false }
    let p = lowerASCII.utf8Start
    for k in 0..<n {
        var c = base[at + k]
        if c >= 65 && c <= 90 { c |= 0x20 }
        if c != p[k] { return false }
    }
    return true
}

/// Parses a decimal number at `at`; returns (value, index after the digits) or nil.
@inline(__always) func parseDecimal(_ base: BytePtr, _ at: Int, _ end: Int) -> (UInt64, Int)? {
    var i = at
    var v: UInt64 = 0
    while i < end {
        let c = base[i]
        if c < 48 || c > 57 { break }
        v = v &* 10 &+ UInt64(c &- 48)
        i += 1
    }
    return i == at ? nil : (v, i)
}

/// A payload is "<seq> <unix-nanos> <padding>".
@inline(__always) func parsePayload(_ base: BytePtr, _ from: Int, _ end: Int) -> (seq: UInt64, sentNanos: UInt64)? {
    guard let (seq, i) = parseDecimal(base, from, end), i < end, base[i] == 32,
        let (ts, _) = parseDecimal(base, i + 1, end)
    else { return nil }
    return (seq, ts)
}

func readRSSKB(pid: Int32) -> Int {
    // /proc/<pid>/status is tiny; read it with plain POSIX calls.
    let fd = open("/proc/\(pid)/status", O_RDONLY)
    if fd < 0 { return -1 }
    defer { close(fd) }
    var buf = [UInt8](repeating: 0, count: 8192)
    let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, 8192) }
    if n <= 0 { return -1 }
    let text = String(decoding: buf[0..<n], as: UTF8.self)
    for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        let digits = line.filter { $0.isNumber }
        return Int(digits) ?? -1
    }
    return -1
}
