import Foundation
import NIOCore
import SwitchboardRedis
import SwitchboardWire
import Testing

@Suite("BroadcastPayload: the JSON of a broadcast inbound channel")
struct BroadcastPayloadTests {
    func decode(_ json: String) -> BroadcastPayload? {
        BroadcastPayload.decode(ByteBuffer(string: json))
    }

    @Test("topic and message only")
    func minimal() {
        #expect(decode(#"{"topic":"/topic/news","message":"hi"}"#) == BroadcastPayload(topic: "/topic/news", message: "hi"))
    }

    @Test("every field")
    func full() {
        let json = #"{"topic":"/queue/x","message":"{\"a\":1}","contentType":"application/json","headers":{"x-a":"1","x-b":"two"},"user":"alice"}"#
        #expect(
            decode(json)
                == BroadcastPayload(topic: "/queue/x", message: #"{"a":1}"#, contentType: "application/json", headers: ["x-a": "1", "x-b": "two"], user: "alice"))
    }

    @Test(
        "not a payload: not JSON, not an object, topic or message missing, null or not a string",
        arguments: [
            "", "not json", "[]", #""text""#, "42", "null",
            #"{"message":"hi"}"#, #"{"topic":"/topic/a"}"#,
            #"{"topic":null,"message":"hi"}"#, #"{"topic":"/topic/a","message":null}"#,
            #"{"topic":1,"message":"hi"}"#, #"{"topic":"/topic/a","message":{"text":"hi"}}"#,
        ])
    func rejected(_ json: String) {
        #expect(decode(json) == nil)
    }

    @Test(
        "an optional field of the wrong type (or null) counts as absent",
        arguments: [
            #"{"topic":"/topic/a","message":"m","contentType":5}"#,
            #"{"topic":"/topic/a","message":"m","contentType":null}"#,
            #"{"topic":"/topic/a","message":"m","headers":{"x-n":1}}"#,
            #"{"topic":"/topic/a","message":"m","headers":["x"]}"#,
            #"{"topic":"/topic/a","message":"m","user":null,"extra":[1,2]}"#,
        ])
    func lenientOptionals(_ json: String) {
        #expect(decode(json) == BroadcastPayload(topic: "/topic/a", message: "m"))
    }

    /// A `user` of another type, or empty, counted as absent: the private message went to every
    /// subscriber of the topic (a backend's numeric user ids).
    @Test(
        "a user that is not a non-empty string fails the payload",
        arguments: [
            #"{"topic":"/queue/a","message":"m","user":42}"#,
            #"{"topic":"/queue/a","message":"m","user":true}"#,
            #"{"topic":"/queue/a","message":"m","user":""}"#,
            #"{"topic":"/queue/a","message":"m","user":["alice"]}"#,
        ])
    func userMustBeANonEmptyString(_ json: String) {
        #expect(decode(json) == nil)
    }

    @Test("an empty message and content type are kept as they are")
    func emptyStrings() {
        let payload = decode(#"{"topic":"/topic/a","message":"","contentType":""}"#)
        #expect(payload == BroadcastPayload(topic: "/topic/a", message: "", contentType: ""))
    }

    @Test("encodes to JSON that decodes back, leaving absent fields out")
    func roundTrip() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let minimal = BroadcastPayload(topic: "/topic/a", message: "m")
        #expect(String(decoding: try encoder.encode(minimal), as: UTF8.self) == #"{"message":"m","topic":"/topic/a"}"#)
        let full = BroadcastPayload(topic: "/queue/q", message: "m", contentType: "text/html", headers: ["x": "y"], user: "bob")
        #expect(decode(String(decoding: try encoder.encode(full), as: UTF8.self)) == full)
    }
}
