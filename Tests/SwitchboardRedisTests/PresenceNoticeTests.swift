import NIOCore
import SwitchboardWire
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The join/leave notices of `x-presence`: the JSON the lifecycle functions publish, the
/// presence channel, the routing destination inside a gateway, and the MESSAGE a watcher gets.
@Suite struct PresenceNoticeTests {
    static let naming = RedisChannelNaming()

    @Test func theLuaJSONIsRead() throws {
        // As cjson writes it: any key order, escaped slashes.
        let json = #"{"session":"gw1-s-4","destination":"\/topic\/room","event":"leave","instance":"gw1","time":1764680000123,"user":"bob","reason":"node-lost"}"#
        let notice = try #require(PresenceNotice(json: ByteBuffer(string: json)))
        #expect(
            notice
                == PresenceNotice(
                    event: .leave, destination: "/topic/room", session: "gw1-s-4", user: "bob", instance: "gw1", reason: "node-lost",
                    time: 1_764_680_000_123))
        let anonymous = try #require(PresenceNotice(json: ByteBuffer(string: #"{"event":"join","destination":"/topic/a","session":"s","user":""}"#)))
        #expect(anonymous.user == nil)
    }

    @Test(arguments: [
        "", "not json", "{}", #"{"event":"wave","destination":"/topic/a","session":"s"}"#,
        #"{"event":"join","destination":"","session":"s"}"#, #"{"event":"join","destination":"/topic/a","session":""}"#,
        #"{"event":"join","session":"s"}"#,
    ])
    func whatIsNotANoticeIsRefused(_ text: String) {
        #expect(PresenceNotice(json: ByteBuffer(string: text)) == nil)
    }

    @Test func channelAndRoutingDestination() {
        #expect(Self.naming.presenceChannel(forDestination: "/topic/room") == "switchboard:presence:/topic/room")
        #expect(Self.naming.destination(fromPresenceChannel: "switchboard:presence:/topic/room") == "/topic/room")
        #expect(Self.naming.destination(fromPresenceChannel: "switchboard:dest:/topic/room") == nil)
        #expect(Self.naming.destination(fromChannel: "switchboard:presence:/topic/room") == nil)
        #expect(RedisChannelNaming(prefix: "app1:").presenceChannel(forDestination: "/topic/x") == "app1:presence:/topic/x")
        #expect(PresenceNotice.routing(destination: "/topic/room") == "/~presence/topic/room")
        #expect(PresenceNotice.destination(forRouting: "/~presence/topic/room") == "/topic/room")
        #expect(PresenceNotice.destination(forRouting: "/topic/room") == nil)
        #expect(PresenceNotice.destination(forRouting: "/~presenceX/topic") == nil)
    }

    @Test func noWildcardSubscriptionsGlobReachesAPresenceChannel() throws {
        for pattern in ["/topic/**", "/topic/*", "/**"] {
            let glob = Self.naming.glob(for: try DestinationPattern(pattern))
            #expect(fnmatch(glob, Self.naming.presenceChannel(forDestination: "/topic/room"), 0) != 0, "\(glob)")
        }
    }

    @Test func theMessageShowsTheDestinationAndCarriesTheServerHeaders() {
        let message = PresenceNotice(event: .join, destination: "/topic/room", session: "gw1-s-4", user: "bob", instance: "gw1", time: 5)
            .message(messageID: "gw0-7")
        #expect(message.destination == "/~presence/topic/room")
        #expect(
            message.headers.map { "\($0.name)=\($0.value)" } == [
                "content-type=application/json", "x-presence-event=join", "x-presence-session=gw1-s-4", "x-presence-user=bob",
            ])
        let frame = String(buffer: message.encodeFrame(subscription: "w", ack: nil, escape: true, allocator: ByteBufferAllocator()))
        #expect(frame.hasPrefix("MESSAGE\ndestination:/topic/room\nmessage-id:gw0-7\n"))
        #expect(frame.contains(#"{"destination":"/topic/room","event":"join","instance":"gw1","session":"gw1-s-4","time":5,"user":"bob"}"#))
    }
}
