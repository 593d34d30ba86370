import NIOCore
import Testing

@testable import SwitchboardAPIModel

/// `idempotencyKey` in a publish body (and in each batch item): 1…256 bytes, no control
/// characters; read the same by the fast parser and the decoder.
@Suite struct IdempotencyKeyFieldTests {
    static func parse(_ json: String) throws(APIRequestError) -> NotificationRequest {
        try NotificationRequest.parse(ByteBuffer(string: json)) { _ in nil }
    }

    @Test(arguments: [
        #"{"topic":"/topic/a","message":"m","idempotencyKey":"order-42"}"#,
        // With a `headers` object the decoder reads it, not the flat parser.
        #"{"topic":"/topic/a","message":"m","headers":{"x":"y"},"idempotencyKey":"order-42"}"#,
    ])
    func theKeyIsRead(json: String) throws {
        #expect(try Self.parse(json).idempotencyKey == "order-42")
    }

    @Test func withoutOneThereIsNone() throws {
        #expect(try Self.parse(#"{"topic":"/topic/a","message":"m"}"#).idempotencyKey == nil)
    }

    @Test(arguments: [
        (#""""#, "field 'idempotencyKey' must be 1 to 256 bytes"),
        ("\"" + String(repeating: "k", count: 257) + "\"", "field 'idempotencyKey' must be 1 to 256 bytes"),
        (#""a\u0001b""#, "field 'idempotencyKey' must not contain control characters"),
        ("3", "field 'idempotencyKey' must be a string"),
        ("null", "field 'idempotencyKey' must be a string"),
    ])
    func aBadKeyIsA400NamingTheField(value: String, message: String) {
        #expect(throws: APIRequestError(status: 400, message: message, field: "idempotencyKey")) {
            try Self.parse(#"{"topic":"/topic/a","message":"m","idempotencyKey":"# + value + "}")
        }
    }

    @Test func aKeyOf256BytesIsFine() throws {
        let key = String(repeating: "é", count: 128)
        #expect(try Self.parse(#"{"topic":"/topic/a","message":"m","idempotencyKey":""# + key + #""}"#).idempotencyKey == key)
    }

    @Test func eachBatchItemHasItsOwn() throws {
        let batch = [
            #"{"topic":"/topic/a","message":"1","idempotencyKey":"k1"}"#, #"{"topic":"/topic/a","message":"2"}"#,
            #"{"topic":"/topic/a","message":"3","idempotencyKey":""}"#,
        ]
        let items = try NotificationRequest.parseBatch(ByteBuffer(string: "[" + batch.joined(separator: ",") + "]"), maxItems: 10) { _, _ in nil }
        #expect(try items[0].get().idempotencyKey == "k1")
        #expect(try items[1].get().idempotencyKey == nil)
        #expect(throws: APIRequestError.self) { try items[2].get() }
    }
}
