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
