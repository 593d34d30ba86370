import Foundation
import NIOCore
import Testing

@testable import SwitchboardAPIModel

extension NotificationRequest.Field: Equatable where Value: Equatable {
    public static func == (a: Self, b: Self) -> Bool {
        switch (a, b) {
        case (.missing, .missing), (.invalid, .invalid): true
        case (.value(let x), .value(let y)): x == y
        default: false
        }
    }
}

/// The fields as a comparable tuple.
private func summary(_ f: NotificationRequest.Fields) -> [String] {
    func s<V>(_ field: NotificationRequest.Field<V>) -> String {
        switch field {
        case .missing: "missing"
        case .invalid: "invalid"
        case .value(let v): "value(\(v))"
        }
    }
    return [s(f.topic), s(f.message), s(f.headers), s(f.contentType), s(f.user)]
}

/// The answer as `JSONEncoder` writes it (inside a generic function, `APIJSON.body` is the
/// encoder's overload).
private func viaEncoder<T: Encodable>(_ value: T) -> ByteBuffer { APIJSON.body(value) }

/// A small deterministic generator (xorshift), so a failure reproduces.
private struct Generator {
    var state: UInt64
    mutating func next(_ bound: Int) -> Int {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return Int(state % UInt64(bound))
    }
}

/// A JSON string literal of random content, with the escapes JSON allows, and the text it means.
private func randomString(_ g: inout Generator) -> (json: String, text: String) {
    var json = "\"", text = ""
    for _ in 0..<g.next(12) {
        switch g.next(12) {
        case 0: json += "\\\""; text += "\""
        case 1: json += "\\\\"; text += "\\"
        case 2: json += "\\/"; text += "/"
        case 3: json += "\\n"; text += "\n"
        case 4: json += "\\u0001"; text += "\u{1}"
        case 5: json += "\\u00e9"; text += "é"
        case 6: json += "\\ud834\\udd1e"; text += "𝄞"
        case 7: json += "é𝄞"; text += "é𝄞"
        case 8: json += "/topic/a.b"; text += "/topic/a.b"
        case 9: json += "\\t\\b\\f\\r"; text += "\t\u{8}\u{c}\r"
        default:
            let printable = Array("abcXYZ019 !#$%&'()*+,-.:;<=>?@[]^_`{|}~")
            let c = printable[g.next(printable.count)]
            json.append(c)
            text.append(c)
        }
    }
    return (json + "\"", text)
}

private func randomObject(_ g: inout Generator) -> String {
    // `t\u006fpic` is `topic` spelled with an escape.
    let keys = ["topic", "message", "contentType", "user", "headers", "other"]
    var chosen: [String] = []
    for key in keys where g.next(3) > 0 { chosen.append(key == "topic" && g.next(4) == 0 ? "t\\u006fpic" : key) }
    let space = [" ", "", "\n", "\t", "\r\n "]
    let members = chosen.map { key in
        space[g.next(space.count)] + "\"" + key + "\"" + space[g.next(space.count)] + ":" + space[g.next(space.count)] + randomString(&g).json
    }
    return "{" + members.joined(separator: ",") + space[g.next(space.count)] + "}"
}

@Suite struct FlatJSONTests {
    private let decoder = JSONDecoder()

    @Test func objectsOfStringsReadAsTheDecoderReadsThem() throws {
        var g = Generator(state: 0x9E37_79B9_7F4A_7C15)
        for _ in 0..<2_000 {
            let body = randomObject(&g)
            let bytes = ByteBuffer(string: body)
            let fast = try #require(FlatJSON.object(bytes), "the fast path refused \(body)")
            let reference = try decoder.decode(NotificationRequest.Fields.self, from: Data(body.utf8))
            #expect(summary(NotificationRequest.Fields(fast)) == summary(reference), "\(body)")
        }
    }

    @Test func stringValuesAreUnescaped() throws {
        var g = Generator(state: 42)
        for _ in 0..<500 {
            let (json, text) = randomString(&g)
            let object = try #require(FlatJSON.object(ByteBuffer(string: "{\"message\":\(json)}")))
            #expect(object.first?.value == text)
        }
    }

    @Test(arguments: [
        #"{"topic":1}"#, #"{"topic":null}"#, #"{"headers":{"a":"b"}}"#, #"{"topic":"a","topic":"b"}"#,
        #"{"topic":"a"} x"#, #"{"topic":"\ud800"}"#, #"{"topic":"\udc00x"}"#, "{\"topic\":\"a\u{1}\"}",
        #"{"topic":"\x"}"#, #"{"topic":"a",}"#, #"{"topic" "a"}"#, #"{"topic":"a""#, "[]", "", "  ", #""str""#,
        #"{"topic":"\u12"}"#, #"{"topic":true}"#,
    ])
    func otherBodiesAreLeftToTheDecoder(_ body: String) {
        #expect(FlatJSON.object(ByteBuffer(string: body)) == nil)
    }

    @Test func manyMembersAreLeftToTheDecoder() {
        let members = (0...FlatJSON.Reader.maxMembers).map { "\"k\($0)\":\"v\"" }
        #expect(FlatJSON.object(ByteBuffer(string: "{" + members.dropLast().joined(separator: ",") + "}")) != nil)
        #expect(FlatJSON.object(ByteBuffer(string: "{" + members.joined(separator: ",") + "}")) == nil)
    }

    @Test func invalidUTF8IsLeftToTheDecoder() {
        var bytes = ByteBuffer(string: "{\"topic\":\"")
        bytes.writeBytes([0xC3, 0x28])
        bytes.writeString("\"}")
        #expect(FlatJSON.object(bytes) == nil)
    }

    @Test func errorsStillComeFromTheDecoder() {
        let allowAll: (String) -> String? = { _ in nil }
        #expect(throws: APIRequestError(status: 400, message: "field 'message' must be a string", field: "message")) {
            try NotificationRequest.parse(ByteBuffer(string: #"{"topic":"/topic/a","message":7}"#), isAllowedTopic: allowAll)
        }
        #expect(throws: APIRequestError(status: 400, message: "field 'headers' must be an object of string values", field: "headers")) {
            try NotificationRequest.parse(ByteBuffer(string: #"{"topic":"/topic/a","message":"m","headers":"x"}"#), isAllowedTopic: allowAll)
        }
        #expect(throws: APIRequestError(status: 400, message: "request body must be a JSON object", field: nil)) {
            try NotificationRequest.parse(ByteBuffer(string: #"{"topic":"/topic/a""#), isAllowedTopic: allowAll)
        }
        let withHeaders = try? NotificationRequest.parse(
            ByteBuffer(string: #"{"topic":"/topic/a","message":"m","headers":{"x-a":"1"}}"#), isAllowedTopic: allowAll)
        #expect(withHeaders?.headers["x-a"] == "1")
    }

    @Test func batchesOfObjectsReadAsTheDecoderReadsThem() throws {
        var g = Generator(state: 7)
        for _ in 0..<300 {
            let body = "[" + (0...g.next(5)).map { _ in randomObject(&g) }.joined(separator: ", ") + "]"
            let fast = try #require(FlatJSON.arrayOfObjects(ByteBuffer(string: body)), "\(body)")
            let reference = try decoder.decode([NotificationRequest.BatchItem].self, from: Data(body.utf8))
            #expect(fast.map { summary(NotificationRequest.Fields($0)) } == reference.map { summary($0.fields!) })
        }
        #expect(FlatJSON.arrayOfObjects(ByteBuffer(string: "[]")) == nil)
        #expect(FlatJSON.arrayOfObjects(ByteBuffer(string: #"[{"topic":"a"}, 3]"#)) == nil)
        #expect(FlatJSON.arrayOfObjects(ByteBuffer(string: #"[{"topic":"a"}"#)) == nil)
    }

    @Test(arguments: [
        ("[]", 0), ("[{}]", 1), (" [ {} , {} ] ", 2), (#"[{"a":"x,]}\"y"},{"b":[1,{"c":2}]}]"#, 2), ("[1, \"s\", true, null]", 4),
        ("[{},{},", 2), ("{}", -1), ("\u{FEFF}[{}, {}]", 2),
    ])
    func arrayElementsAreCountedWithoutParsing(json: String, count: Int) {
        #expect(FlatJSON.arrayElementCount(ByteBuffer(string: json)) == (count < 0 ? nil : count))
    }

    /// A batch's item limit was checked after every item was parsed: 350,000 empty objects in
    /// 1 MiB built tens of MB on the event loop before the 413. It is now checked first, and
    /// holds even for a body whose rest is not valid.
    @Test func aBatchOverTheItemLimitIsRefusedBeforeItsItemsAreParsed() {
        let body = "[" + Array(repeating: "{}", count: 1_001).joined(separator: ",") + ",xyz]"
        #expect(throws: APIRequestError(status: 413, message: "batch of 1002 notifications is larger than 1000", field: nil)) {
            try NotificationRequest.parseBatch(ByteBuffer(string: body), maxItems: 1000) { _, _ in nil }
        }
    }

    /// A UTF-16 body is not counted: refused at once, not decoded item by item first.
    @Test func aBatchThatIsNotUTF8IsRefused() {
        var body = ByteBuffer()
        body.writeBytes([0xFF, 0xFE] + Array("[{}]".utf8).flatMap { [$0, 0] })
        #expect(throws: APIRequestError(status: 400, message: "request body must be a JSON array of notifications", field: nil)) {
            try NotificationRequest.parseBatch(body, maxItems: 1000) { _, _ in nil }
        }
    }

    @Test func answersAreTheEncodersBytes() {
        var g = Generator(state: 99)
        for _ in 0..<1_000 {
            let text = { (g: inout Generator) -> String in
                var s = randomString(&g).text
                if g.next(4) == 0 { s += String(UnicodeScalar(UInt8(g.next(0x80)))) }
                return s
            }
            let duplicate = g.next(3) == 0
            let answer = NotificationAnswer(
                id: duplicate ? nil : text(&g), topic: text(&g), user: g.next(2) == 0 ? nil : text(&g), duplicate: duplicate ? true : nil)
            let error = APIErrorBody(error: text(&g), field: g.next(2) == 0 ? nil : text(&g), status: g.next(2) == 0 ? nil : 400 + g.next(100))
            let batch = BatchAnswer(results: [.published(answer), .failed(error), .published(answer)].filter { _ in g.next(3) > 0 })
            #expect(APIJSON.body(answer) == viaEncoder(answer))
            #expect(APIJSON.body(error) == viaEncoder(error))
            #expect(APIJSON.body(batch) == viaEncoder(batch))
        }
    }
}
