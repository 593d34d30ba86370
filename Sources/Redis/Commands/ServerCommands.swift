import NIOCore

/// `CONFIG GET <parameter>`: the parameters matching it (a glob) and their values.
public struct CONFIGGET: RedisCommand {
    /// The parameters and their values (RESP2's flat array or RESP3's map).
    public struct Response: RESPTokenDecodable, Sendable, Equatable {
        public var values: [String: String]

        public init(fromRESP token: RESPToken) throws {
            guard let elements = token.flattenedElements(), elements.count.isMultiple(of: 2) else {
                throw RESPDecodeError(token: token, expected: "CONFIG GET's parameters and values")
            }
            var values: [String: String] = [:]
            for i in stride(from: 0, to: elements.count, by: 2) {
                values[try String(fromRESP: elements[i])] = try String(fromRESP: elements[i + 1])
            }
            self.values = values
        }
    }

    public var parameter: String

    public init(_ parameter: String) {
        self.parameter = parameter
    }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 3)
        encoder.encodeBulk("CONFIG")
        encoder.encodeBulk("GET")
        encoder.encodeBulk(self.parameter)
    }
}

/// `TIME`: the server's clock.
public struct TIME: RedisCommand {
    /// The server's time since the Unix epoch.
    public struct Response: RESPTokenDecodable, Sendable, Equatable {
        public var seconds: Int64
        public var microseconds: Int64
        /// The time in milliseconds since the Unix epoch.
        public var milliseconds: Int64 { self.seconds * 1_000 + self.microseconds / 1_000 }

        public init(fromRESP token: RESPToken) throws {
            guard let elements = token.flattenedElements(), elements.count == 2 else {
                throw RESPDecodeError(token: token, expected: "TIME's seconds and microseconds")
            }
            self.seconds = try Int64(fromRESP: elements[0])
            self.microseconds = try Int64(fromRESP: elements[1])
        }
    }

    public init() {}

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 1)
        encoder.encodeBulk("TIME")
    }
}
