import NIOCore
import STOMPCodec
import SwitchboardCore
import SwitchboardWire
import Testing

@testable import SwitchboardRoutes

/// What a webhook's 2xx reply body is turned into (``WebhookRoute/decodeReplies(_:url:)``).
@Suite struct WebhookReplyTests {
    static let url = "http://svc/hook"

    static func replies(_ json: String) throws -> [RouteReply] {
        try WebhookRoute.decodeReplies(ByteBuffer(string: json), url: url)
    }

    /// The description of the error the reply fails with; nil when it is accepted.
    static func failure(_ json: String) -> String? {
        do {
            _ = try replies(json)
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test(arguments: ["", " ", "\r\n\t \n", "{}", #"{"status":"ok"}"#, #"{"replies":[]}"#])
    func replyWithoutMessagesDeliversNothing(body: String) throws {
        #expect(try Self.replies(body).isEmpty)
    }

    @Test func documentedExampleGivesABroadcastAndASenderReply() throws {
        let replies = try Self.replies(
            """
            {"replies": [
              {"destination": "/topic/greetings", "body": "Hello, everyone"},
              {"destination": "/topic/greetings", "body": "Hello, you", "target": "sender",
               "headers": {"x-k": "v"}, "contentType": "text/plain"}
            ]}
            """)
        #expect(
            replies == [
                RouteReply(
                    destination: "/topic/greetings", body: ByteBuffer(string: "Hello, everyone"), headers: ["content-type": "text/plain"],
                    target: .broadcast),
                RouteReply(
                    destination: "/topic/greetings", body: ByteBuffer(string: "Hello, you"), headers: ["x-k": "v", "content-type": "text/plain"],
                    target: .sender),
            ])
    }

    @Test func headersAreSortedAndStringifiedAndContentTypeFieldWins() throws {
        let reply = try #require(
            try Self.replies(
                #"{"replies":[{"destination":"/topic/a","headers":{"z":"last","content-type":"text/html","a":"first","n":42},"contentType":"application/json"}]}"#
            ).first)
        #expect(reply.headers == ["a": "first", "n": "42", "z": "last", "content-type": "application/json"])
    }

    @Test func contentTypeHeaderIsKeptWithoutAContentTypeField() throws {
        let reply = try #require(try Self.replies(#"{"replies":[{"destination":"/topic/a","headers":{"content-type":"text/csv"}}]}"#).first)
        #expect(reply.headers == ["content-type": "text/csv"])
    }

    @Test func missingBodyIsEmpty() throws {
        let reply = try #require(try Self.replies(#"{"replies":[{"destination":"/topic/a"}]}"#).first)
        #expect(reply.body.readableBytes == 0)
        #expect(reply.target == .broadcast)
    }

    @Test(arguments: [
        (#"{"n":1}"#, #"{"n":1}"#),
        (#"[1, "two", null]"#, #"[1,"two",null]"#),
        (#"{"a":[{"b":"/x"}]}"#, #"{"a":[{"b":"\/x"}]}"#),
    ])
    func jsonBodyIsSentAsItsJSONText(body: String, text: String) throws {
        let reply = try #require(try Self.replies(#"{"replies":[{"destination":"/topic/a","body":\#(body)}]}"#).first)
        #expect(String(buffer: reply.body) == text)
        #expect(reply.headers["content-type"] == "text/plain")
    }

    @Test func stringBodyKeepsItsCharacters() throws {
        let reply = try #require(try Self.replies(#"{"replies":[{"destination":"/topic/a","body":"line 1\nline 2 \u00e9 \ud83d\ude00"}]}"#).first)
        #expect(String(buffer: reply.body) == "line 1\nline 2 é 😀")
    }

    @Test func userRepliesGoToThatUsersDestination() throws {
        let replies = try Self.replies(
            #"{"replies":[{"destination":"/queue/inbox","user":"alice","body":"hi"},{"destination":"/queue/inbox","user":"a.b/*%","target":"sender"}]}"#)
        #expect(replies.map(\.destination) == ["/~user/alice/queue/inbox", "/~user/a%2Eb%2F%2A%25/queue/inbox"])
        #expect(replies.map(\.target) == [.broadcast, .sender])
    }

    @Test func everyMalformedPartNamesTheReplyAndItsIndex() {
        let prefix = "webhook \(Self.url) reply"
        let cases: [(String, String)] = [
            ("not json", "\(prefix) is not a JSON object"),
            (#"[{"destination":"/topic/a"}]"#, "\(prefix) is not a JSON object"),
            (#""replies""#, "\(prefix) is not a JSON object"),
            (#"{"replies":{"destination":"/topic/a"}}"#, "\(prefix): 'replies' must be an array of objects"),
            (#"{"replies":["/topic/a"]}"#, "\(prefix): 'replies' must be an array of objects"),
            (#"{"replies":[{"destination":"/topic/a"},{"body":"x"}]}"#, "\(prefix): replies[1].destination is missing"),
            (#"{"replies":[{"destination":""}]}"#, "\(prefix): replies[0].destination is missing"),
            (#"{"replies":[{"destination":7}]}"#, "\(prefix): replies[0].destination is missing"),
            (#"{"replies":[{"destination":"/queue/a","user":""}]}"#, "\(prefix): replies[0].user must be a non-empty string"),
            (#"{"replies":[{"destination":"/queue/a","user":["alice"]}]}"#, "\(prefix): replies[0].user must be a non-empty string"),
            (#"{"replies":[{"destination":"/topic/a","target":"everyone"}]}"#, "\(prefix): replies[0].target 'everyone' must be broadcast or sender"),
            // Would route to user "bobx"'s /queue/y.
            (#"{"replies":[{"destination":"x/queue/y","user":"bob"}]}"#, "\(prefix): replies[0].destination must start with / for a user"),
        ]
        for (body, message) in cases {
            #expect(Self.failure(body) == message, "\(body)")
        }
    }

    @Test(arguments: [("42", "42"), ("true", "true"), ("1.5", "1.5"), ("null", "")])
    func scalarJSONBodyIsSentAsItsJSONText(body: String, text: String) throws {
        let reply = try #require(try Self.replies(#"{"replies":[{"destination":"/topic/a","body":\#(body)}]}"#).first)
        #expect(String(buffer: reply.body) == text)
    }

    /// A reply to a user names one of the user destinations: `/topic/x` to a user routes where
    /// no client can subscribe, and is refused (logged) like any reply that reaches nobody.
    @Test func aUserReplyOutsideTheUserDestinationsIsRefused() throws {
        let policy = SessionPolicy(configuration: SessionConfiguration(), routes: RouteTable())
        let toTopic = try Self.replies(#"{"replies":[{"destination":"/topic/x","user":"bob"}]}"#)
        let toQueue = try Self.replies(#"{"replies":[{"destination":"/queue/x","user":"bob"}]}"#)
        #expect(policy.replyProblem(toTopic[0].destination, toSender: false) == "not a user destination (/queue/)")
        #expect(policy.replyProblem(toTopic[0].destination, toSender: true) == "not a user destination (/queue/)")
        #expect(policy.replyProblem(toQueue[0].destination, toSender: false) == nil)
    }
}
