import NIOCore

/// A type that can be decoded from a ``RESPToken`` (a command's typed response).
public protocol RESPTokenDecodable {
    /// Decodes `token`, throwing ``RESPDecodeError`` when it has an unexpected shape.
    init(fromRESP token: RESPToken) throws
}

/// Thrown when a reply does not have the shape a command's response type expects.
public struct RESPDecodeError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The token that could not be decoded.
    public var token: RESPToken
    /// The type that was being decoded.
    public var expected: String

    public init(token: RESPToken, expected: String) {
        self.token = token
        self.expected = expected
    }

    public var description: String { "RESPDecodeError: cannot decode \(self.token) as \(self.expected)" }
}

extension RESPToken: RESPTokenDecodable {
    public init(fromRESP token: RESPToken) throws { self = token }
}

extension ByteBuffer: RESPTokenDecodable {
    public init(fromRESP token: RESPToken) throws {
        switch token.value {
        case .bulkString(let b), .simpleString(let b), .verbatimString(let b), .bigNumber(let b):
            self = b
        default:
            throw RESPDecodeError(token: token, expected: "ByteBuffer")
        }
    }
}

extension String: RESPTokenDecodable {
    public init(fromRESP token: RESPToken) throws {
        switch token.value {
        case .bulkString(let b), .simpleString(let b), .bigNumber(let b):
            self = String(buffer: b)
        case .verbatimString(let b):
            // Drop the "txt:" style format prefix.
            self = String(buffer: b.getSlice(at: b.readerIndex + 4, length: b.readableBytes - 4) ?? b)
        case .number(let n):
            self = String(n)
        case .double(let d):
            self = String(d)
        default:
            throw RESPDecodeError(token: token, expected: "String")
        }
    }
}

extension Int64: RESPTokenDecodable {
    public init(fromRESP token: RESPToken) throws {
        switch token.value {
        case .number(let n):
            self = n
        case .bulkString(let b), .simpleString(let b):
            guard let n = RESPParser.parseInt64(b, from: 0, to: b.readableBytes) else {
                throw RESPDecodeError(token: token, expected: "Int64")
            }
            self = n
        default:
            throw RESPDecodeError(token: token, expected: "Int64")
        }
    }
}

extension Int: RESPTokenDecodable {
    public init(fromRESP token: RESPToken) throws {
        self = Int(try Int64(fromRESP: token))
    }
}

extension Double: RESPTokenDecodable {
    public init(fromRESP token: RESPToken) throws {
        switch token.value {
        case .double(let d): self = d
        case .number(let n): self = Double(n)
        case .bulkString(let b), .simpleString(let b):
            guard let d = RESPParser.parseDouble(b, from: 0, to: b.readableBytes) else {
                throw RESPDecodeError(token: token, expected: "Double")
            }
            self = d
        default: throw RESPDecodeError(token: token, expected: "Double")
        }
    }
}

extension Bool: RESPTokenDecodable {
    public init(fromRESP token: RESPToken) throws {
        switch token.value {
        case .boolean(let b): self = b
        case .number(let n): self = n != 0
        default: throw RESPDecodeError(token: token, expected: "Bool")
        }
    }
}

extension Optional: RESPTokenDecodable where Wrapped: RESPTokenDecodable {
    public init(fromRESP token: RESPToken) throws {
        if case .null = token.value {
            self = .none
        } else {
            self = .some(try Wrapped(fromRESP: token))
        }
    }
}

extension Array: RESPTokenDecodable where Element: RESPTokenDecodable {
    public init(fromRESP token: RESPToken) throws {
        switch token.value {
        case .array(let a), .set(let a), .push(let a):
            self = try a.decode(as: Element.self)
        default:
            throw RESPDecodeError(token: token, expected: "Array")
        }
    }
}

/// The `+OK` simple string reply.
public struct RedisOK: RESPTokenDecodable, Hashable, Sendable {
    public init() {}

    public init(fromRESP token: RESPToken) throws {
        guard case .simpleString(let b) = token.value, b.readableBytesView.elementsEqual("OK".utf8) else {
            throw RESPDecodeError(token: token, expected: "OK")
        }
    }
}

extension RESPToken {
    /// The elements of an array, set or push reply, or of a RESP3 map flattened to `key, value, ...`.
    /// Lets response types accept both RESP2 (flat arrays) and RESP3 (maps) shapes.
    func flattenedElements() -> [RESPToken]? {
        switch self.value {
        case .array(let a), .set(let a), .push(let a):
            return Swift.Array(a)
        case .map(let m):
            var result: [RESPToken] = []
            result.reserveCapacity(m.count * 2)
            for (k, v) in m {
                result.append(k)
                result.append(v)
            }
            return result
        default:
            return nil
        }
    }
}
