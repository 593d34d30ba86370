import NIOCore
import Testing

@testable import SwitchboardAPIModel

/// What a publish body may not hold, though it is valid JSON: `headers` no STOMP frame could
/// carry as sent, and topic or user names with control characters or over 1024 bytes. Each is
/// a 400 naming the field.
@Suite struct NotificationRequestLimitsTests {
    static func anyTopic(_ topic: String) -> String? { nil }

    func error(_ json: String) -> APIRequestError? {
        do {
            _ = try NotificationRequest.parse(ByteBuffer(string: json), isAllowedTopic: Self.anyTopic)
            return nil
        } catch {
            return error
        }
    }

    func batchErrors(_ json: String) throws -> [APIRequestError?] {
        try NotificationRequest.parseBatch(ByteBuffer(string: json), maxItems: 10) { _, _ in nil }.map { item in
            if case .failure(let error) = item { error } else { nil }
        }
    }

    static func headersObject(count: Int) -> String {
        "{" + (0..<count).map { #""h\#($0)":"v""# }.joined(separator: ",") + "}"
    }

    @Test(
        arguments: [
            (#"{"":"x"}"#, "field 'headers' must not hold an empty header name"),
            (#"{"a:b":"x"}"#, "field 'headers' must not hold a header name containing ':'"),
            (#"{"a\nb":"x"}"#, "field 'headers' must not hold a header name containing control characters"),
            (#"{"a\u0000":"x"}"#, "field 'headers' must not hold a header name containing control characters"),
            (#"{"k":"a\u0000b"}"#, "field 'headers' must not hold a header value containing a NUL (header 'k')"),
            (headersObject(count: 65), "field 'headers' must hold at most 64 headers, not 65"),
        ] as [(String, String)])
    func headersNoFrameCouldCarryAreRefused(headers: String, message: String) {
        let json = #"{"topic":"/topic/a","message":"m","headers":\#(headers)}"#
        #expect(error(json) == APIRequestError(status: 400, message: message, field: "headers"), "\(headers)")
    }

    @Test func valuesWithCRLFOrATabAreCarried() throws {
        let json = #"{"topic":"/topic/a","message":"m","headers":{"k":"x\r\ny:z","t":"a\tb"}}"#
        let request = try NotificationRequest.parse(ByteBuffer(string: json), isAllowedTopic: Self.anyTopic)
        #expect(request.headers["k"] == "x\r\ny:z" && request.headers["t"] == "a\tb")
    }

    @Test func sixtyFourOrdinaryHeadersAreCarried() throws {
        let json = #"{"topic":"/topic/a","message":"m","headers":\#(Self.headersObject(count: 64))}"#
        let request = try NotificationRequest.parse(ByteBuffer(string: json), isAllowedTopic: Self.anyTopic)
        #expect(request.headers.count == 65)  // and content-type
        #expect(NotificationRequest.maxHeaders == 64)
    }

    @Test func aBatchItemWithBadHeadersFailsAlone() throws {
        let errors = try batchErrors(#"[{"topic":"/topic/a","message":"1","headers":{"":"x"}},{"topic":"/topic/a","message":"2"}]"#)
        #expect(errors.count == 2)
        #expect(errors[0]?.field == "headers" && errors[0]?.status == 400)
        #expect(errors[1] == nil)
    }

    @Test func aTopicOver1024BytesIsRefused() {
        let fits = "/topic/" + String(repeating: "é", count: (1024 - 7) / 2)  // 1023 bytes
        #expect(error(#"{"topic":"\#(fits)","message":"m"}"#) == nil)
        let long = fits + "xx"  // 1025 bytes
        #expect(error(#"{"topic":"\#(long)","message":"m"}"#) == APIRequestError(status: 400, message: "field 'topic' must be at most 1024 bytes", field: "topic"))
    }

    @Test func aBatchItemsUserIsANameLikeAnyOther() throws {
        let long = String(repeating: "u", count: 1025)
        let errors = try batchErrors(
            #"[{"topic":"/queue/a","user":"a\nb","message":"1"},{"topic":"/queue/a","user":"\#(long)","message":"2"},{"topic":"/queue/a","user":"bob","message":"3"}]"#
        )
        #expect(
            errors == [
                APIRequestError(status: 400, message: "field 'user' must not contain control characters", field: "user"),
                APIRequestError(status: 400, message: "field 'user' must be at most 1024 bytes", field: "user"),
                nil,
            ])
    }
}
