import NIOCore
import SwitchboardAPIModel
import Testing

@Suite("ConsoleRedisPublishRequest: the console's redis-publish body")
struct ConsoleRedisPublishRequestTests {
    static let channels: Set<String> = ["GREETING_CHANNEL_INBOUND", "OTHER"]

    func parse(_ json: String) -> Result<ConsoleRedisPublishRequest, APIRequestError> {
        Result { () throws(APIRequestError) in
            try ConsoleRedisPublishRequest.parse(ByteBuffer(string: json)) { Self.channels.contains($0) }
        }
    }

    @Test("a valid request")
    func valid() {
        let result = parse(#"{"channel":"GREETING_CHANNEL_INBOUND","message":"\"Test Message from Backend PubSub\"","extra":1}"#)
        #expect(result == .success(ConsoleRedisPublishRequest(channel: "GREETING_CHANNEL_INBOUND", message: #""Test Message from Backend PubSub""#)))
    }

    @Test(
        "field-named 400s, the first field at fault",
        arguments: [
            ("", "request body must be a JSON object", nil),
            ("[]", "request body must be a JSON object", nil),
            (#""x""#, "request body must be a JSON object", nil),
            (#"{}"#, "field 'channel' must be a non-empty string", "channel"),
            (#"{"message":"m"}"#, "field 'channel' must be a non-empty string", "channel"),
            (#"{"channel":"","message":"m"}"#, "field 'channel' must be a non-empty string", "channel"),
            (#"{"channel":5,"message":"m"}"#, "field 'channel' must be a non-empty string", "channel"),
            (#"{"channel":null}"#, "field 'channel' must be a non-empty string", "channel"),
            (#"{"channel":"NOBODY","message":"m"}"#, "channel NOBODY is not a configured inbound channel", "channel"),
            (#"{"channel":"NOBODY"}"#, "channel NOBODY is not a configured inbound channel", "channel"),
            (#"{"channel":"OTHER"}"#, "field 'message' must be a non-empty string", "message"),
            (#"{"channel":"OTHER","message":""}"#, "field 'message' must be a non-empty string", "message"),
            (#"{"channel":"OTHER","message":["m"]}"#, "field 'message' must be a non-empty string", "message"),
        ] as [(String, String, String?)])
    func rejected(_ json: String, _ message: String, _ field: String?) {
        #expect(parse(json) == .failure(APIRequestError(status: 400, message: message, field: field)))
    }

    @Test("the answer's JSON")
    func answer() {
        let body = APIJSON.body(ConsoleRedisPublishAnswer(channel: "GREETING_CHANNEL_INBOUND", receivers: 2))
        #expect(String(buffer: body) == #"{"channel":"GREETING_CHANNEL_INBOUND","receivers":2}"#)
    }
}
