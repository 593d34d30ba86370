import NIOCore

/// A reader for the shape of nearly every publish request: a JSON object whose values are all
/// strings (or an array of such objects, for a batch), read straight from the request's bytes.
///
/// It accepts a strict subset of JSON and answers nil for anything outside it: another value
/// type (a `headers` object, a number, `null`), a key given twice, invalid UTF-8, an unpaired
/// surrogate escape, trailing bytes. The caller then decodes the body with `JSONDecoder`, which
/// stays the reference for every body and every error message; this reader only spares the
/// common case Foundation's cost (a profile of `POST /api/notification` had `JSONDecoder` at 15 %
/// of the gateway's CPU).
enum FlatJSON {
    /// One object's members, in body order.
    typealias Object = [(key: String, value: String)]

    /// The members of a body that is one object of string values; nil for any other body.
    static func object(_ bytes: ByteBuffer) -> Object? {
        bytes.withUnsafeReadableBytes { raw in
            var reader = Reader(bytes: raw)
            reader.skipWhitespace()
            guard let object = reader.object() else { return nil }
            reader.skipWhitespace()
            return reader.atEnd ? object : nil
        }
    }

    /// How many elements the array that `bytes` starts with has (nil when it starts with no
    /// `[`), by one pass over its bytes that builds nothing: a batch with too many items is
    /// refused before any of them is parsed (350,000 empty objects fit in 1 MiB). The body's
    /// validity is not checked: its parse does that.
    static func arrayElementCount(_ bytes: ByteBuffer) -> Int? {
        bytes.withUnsafeReadableBytes { raw in
            var reader = Reader(bytes: raw)
            // A UTF-8 byte order mark, which the reference decoder accepts.
            if raw.starts(with: [0xEF, 0xBB, 0xBF]) { reader.index = 3 }
            reader.skipWhitespace()
            guard reader.consume(UInt8(ascii: "[")) else { return nil }
            var depth = 1
            var count = 0
            var inElement = false
            var inString = false
            var escaped = false
            for byte in raw[reader.index...] {
                if inString {
                    if escaped {
                        escaped = false
                    } else if byte == UInt8(ascii: "\\") {
                        escaped = true
                    } else if byte == UInt8(ascii: "\"") {
                        inString = false
                    }
                    continue
                }
                switch byte {
                case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n"), UInt8(ascii: "\r"):
                    continue
                case UInt8(ascii: ","):
                    if depth == 1 { inElement = false }
                    continue
                case UInt8(ascii: "]"), UInt8(ascii: "}"):
                    depth -= 1
                    if depth == 0 { return count }
                    continue
                default:
                    break
                }
                if depth == 1, !inElement {
                    inElement = true
                    count += 1
                }
                switch byte {
                case UInt8(ascii: "\""): inString = true
                case UInt8(ascii: "["), UInt8(ascii: "{"): depth += 1
                default: break
                }
            }
            return count
        }
    }

    /// The elements of a body that is an array of objects of string values; nil for any other
    /// body (an empty array included, so that its error comes from the reference decoder).
    static func arrayOfObjects(_ bytes: ByteBuffer) -> [Object]? {
        bytes.withUnsafeReadableBytes { raw in
            var reader = Reader(bytes: raw)
            reader.skipWhitespace()
            guard reader.consume(UInt8(ascii: "[")) else { return nil }
            var objects: [Object] = []
            repeat {
                reader.skipWhitespace()
                guard let object = reader.object() else { return nil }
                objects.append(object)
                reader.skipWhitespace()
            } while reader.consume(UInt8(ascii: ","))
            guard reader.consume(UInt8(ascii: "]")) else { return nil }
            reader.skipWhitespace()
            return reader.atEnd ? objects : nil
        }
    }

    struct Reader {
        /// More members than this (a request has at most 5) leave the body to the decoder.
        static let maxMembers = 16

        let bytes: UnsafeRawBufferPointer
        var index = 0

        var atEnd: Bool { index == bytes.count }

        mutating func skipWhitespace() {
            while index < bytes.count {
                switch bytes[index] {
                case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n"), UInt8(ascii: "\r"): index += 1
                default: return
                }
            }
        }

        mutating func consume(_ byte: UInt8) -> Bool {
            guard index < bytes.count, bytes[index] == byte else { return false }
            index += 1
            return true
        }

        /// `{ "key": "value", ... }`, positioned on the `{`.
        mutating func object() -> Object? {
            guard consume(UInt8(ascii: "{")) else { return nil }
            var members: Object = []
            skipWhitespace()
            if consume(UInt8(ascii: "}")) { return members }
            repeat {
                skipWhitespace()
                guard let key = string() else { return nil }
                skipWhitespace()
                guard consume(UInt8(ascii: ":")) else { return nil }
                skipWhitespace()
                // A key given twice, or more members than a request has: the reference decoder's
                // (the duplicate check is quadratic, so it is bounded).
                guard let value = string(), members.count < Self.maxMembers, !members.contains(where: { $0.key == key }) else {
                    return nil
                }
                members.append((key, value))
                skipWhitespace()
            } while consume(UInt8(ascii: ","))
            return consume(UInt8(ascii: "}")) ? members : nil
        }

        /// A string, positioned on its opening quote.
        mutating func string() -> String? {
            guard consume(UInt8(ascii: "\"")) else { return nil }
            let start = index
            while index < bytes.count {
                let byte = bytes[index]
                if byte == UInt8(ascii: "\"") {
                    let text = String(validating: UnsafeRawBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
                    index += 1
                    return text
                }
                if byte == UInt8(ascii: "\\") { return escapedString(from: start) }
                guard byte >= 0x20 else { return nil }
                index += 1
            }
            return nil
        }

        /// The rest of a string that holds escapes; `start` is its first byte.
        private mutating func escapedString(from start: Int) -> String? {
            var out = Array(bytes[start..<index])
            while index < bytes.count {
                let byte = bytes[index]
                index += 1
                switch byte {
                case UInt8(ascii: "\""):
                    return String(validating: out, as: UTF8.self)
                case UInt8(ascii: "\\"):
                    guard index < bytes.count else { return nil }
                    let escape = bytes[index]
                    index += 1
                    switch escape {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(escape)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0C)
                    case UInt8(ascii: "n"): out.append(0x0A)
                    case UInt8(ascii: "r"): out.append(0x0D)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "u"):
                        guard let scalar = unicodeEscape() else { return nil }
                        out.append(contentsOf: String(Character(scalar)).utf8)
                    default: return nil
                    }
                default:
                    guard byte >= 0x20 else { return nil }
                    out.append(byte)
                }
            }
            return nil
        }

        /// The scalar of `\uXXXX` (the `\u` read already), a surrogate pair joined; nil for an
        /// unpaired surrogate.
        private mutating func unicodeEscape() -> Unicode.Scalar? {
            guard let high = hex4() else { return nil }
            switch high {
            case 0xD800...0xDBFF:
                guard consume(UInt8(ascii: "\\")), consume(UInt8(ascii: "u")), let low = hex4(), (0xDC00...0xDFFF).contains(low) else {
                    return nil
                }
                return Unicode.Scalar(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
            case 0xDC00...0xDFFF:
                return nil
            default:
                return Unicode.Scalar(high)
            }
        }

        private mutating func hex4() -> UInt32? {
            guard index + 4 <= bytes.count else { return nil }
            var value: UInt32 = 0
            for _ in 0..<4 {
                let byte = bytes[index]
                let digit: UInt8
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
                default: return nil
                }
                value = value << 4 | UInt32(digit)
                index += 1
            }
            return value
        }
    }
}

/// Writes the API's answers as `APIJSON`'s encoder does (keys sorted, slashes not escaped),
/// without Foundation: the answer to every publish is written here.
package struct JSONAnswerWriter {
    var buffer: ByteBuffer

    init(capacity: Int = 128) { buffer = ByteBuffer(); buffer.reserveCapacity(capacity) }

    mutating func raw(_ text: StaticString) { buffer.writeStaticString(text) }

    mutating func int(_ value: Int) { buffer.writeString(String(value)) }

    /// A JSON string: `"`, `\` and the C0 controls escaped like `JSONEncoder` does.
    mutating func string(_ value: String) {
        buffer.writeInteger(UInt8(ascii: "\""))
        var value = value
        value.withUTF8 { utf8 in
            var runStart = 0
            for (i, byte) in utf8.enumerated() where byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") {
                buffer.writeBytes(UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: utf8[runStart..<i])))
                runStart = i + 1
                switch byte {
                case UInt8(ascii: "\""): buffer.writeStaticString("\\\"")
                case UInt8(ascii: "\\"): buffer.writeStaticString("\\\\")
                case 0x08: buffer.writeStaticString("\\b")
                case 0x0C: buffer.writeStaticString("\\f")
                case 0x0A: buffer.writeStaticString("\\n")
                case 0x0D: buffer.writeStaticString("\\r")
                case 0x09: buffer.writeStaticString("\\t")
                default:
                    buffer.writeStaticString("\\u00")
                    buffer.writeInteger(Self.hexDigit(byte >> 4))
                    buffer.writeInteger(Self.hexDigit(byte & 0x0F))
                }
            }
            buffer.writeBytes(UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: utf8[runStart...])))
        }
        buffer.writeInteger(UInt8(ascii: "\""))
    }

    private static func hexDigit(_ nibble: UInt8) -> UInt8 {
        nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10
    }

    mutating func optionalString(_ value: String?) {
        if let value { string(value) } else { raw("null") }
    }
}

/// An answer ``JSONAnswerWriter`` writes byte for byte as `APIJSON`'s encoder would.
package protocol WrittenJSONAnswer: Encodable {
    /// Bytes to reserve for the answer.
    var capacityHint: Int { get }
    func write(to writer: inout JSONAnswerWriter)
}

extension WrittenJSONAnswer {
    package var capacityHint: Int { 128 }
}

extension NotificationAnswer: WrittenJSONAnswer {
    package func write(to writer: inout JSONAnswerWriter) {
        // Keys in order, as `APIJSON`'s encoder sorts them.
        if let duplicate {
            writer.raw(duplicate ? "{\"duplicate\":true," : "{\"duplicate\":false,")
        } else {
            writer.raw("{")
        }
        if let id {
            writer.raw("\"id\":")
            writer.string(id)
            writer.raw(",")
        }
        writer.raw("\"topic\":")
        writer.string(topic)
        if let user {
            writer.raw(",\"user\":")
            writer.string(user)
        }
        writer.raw("}")
    }
}

extension APIErrorBody: WrittenJSONAnswer {
    package func write(to writer: inout JSONAnswerWriter) {
        writer.raw("{\"error\":")
        writer.string(error)
        writer.raw(",\"field\":")
        writer.optionalString(field)
        if let status {
            writer.raw(",\"status\":")
            writer.int(status)
        }
        writer.raw("}")
    }
}

extension BatchAnswer: WrittenJSONAnswer {
    package var capacityHint: Int { 64 + 96 * results.count }

    package func write(to writer: inout JSONAnswerWriter) {
        writer.raw("{\"failed\":")
        writer.int(failed)
        writer.raw(",\"published\":")
        writer.int(published)
        writer.raw(",\"results\":[")
        for (i, item) in results.enumerated() {
            if i > 0 { writer.raw(",") }
            switch item {
            case .published(let answer): answer.write(to: &writer)
            case .failed(let error): error.write(to: &writer)
            }
        }
        writer.raw("]}")
    }
}
