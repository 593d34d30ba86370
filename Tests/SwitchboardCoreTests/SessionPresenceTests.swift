import NIOCore
import STOMPCodec
import SwitchboardCore
import SwitchboardRoutes
import SwitchboardWire
import Testing

/// `x-presence` on SUBSCRIBE: the header's values, where it is refused (and with which
/// `ERROR`), and the delivery of join/leave notices to the watchers of a destination only.
@Suite("Session: x-presence")
struct SessionPresenceTests {
    typealias Machine = STOMPSessionStateMachine
    typealias M = SessionStateMachineTests

    /// Presence allowed under `/topic/watched.`, subscribing everywhere.
    struct Policy: AccessPolicy {
        func maySubscribe(_ destination: String, identity: SessionIdentity?) -> Bool { true }
        func maySend(_ destination: String, identity: SessionIdentity?) -> Bool { true }
        func mayWatchPresence(_ destination: String, identity: SessionIdentity?) -> Bool { destination.hasPrefix("/topic/watched.") }
    }

    static func connected(notices: Bool = true, policy: (any AccessPolicy)? = Policy()) -> Machine {
        M.connected { config in
            config.presenceNotices = notices
            config.accessPolicy = policy
        }
    }

    static func subscribe(_ destination: String, presence: String?, receipt: String = "r") -> STOMPFrame {
        var headers = [("id", "s"), ("destination", destination), ("receipt", receipt)]
        if let presence { headers.append(("x-presence", presence)) }
        return M.frame(.subscribe, headers)
    }

    /// The subscription a SUBSCRIBE starts, or the ERROR it gets.
    static func outcome(_ m: inout Machine, _ frame: STOMPFrame) -> Result<Machine.Subscription, SessionFailure> {
        m.frameReceived(frame, now: .now())
        while let action = m.nextAction() {
            switch action {
            case .execute(.subscribe(let s), _): return .success(s)
            case .close(let close) where close.failure != nil: return .failure(close.failure!)
            default: continue
            }
        }
        Issue.record("neither a subscribe step nor an ERROR")
        return .failure(SessionFailure("nothing"))
    }

    @Test(
        "header values",
        arguments: [(nil, false), ("false", false), ("true", true)] as [(String?, Bool)])
    func headerValues(_ value: String?, _ watching: Bool) throws {
        var m = Self.connected()
        let s = try Self.outcome(&m, Self.subscribe("/topic/watched.room", presence: value)).get()
        #expect(s.presence == watching)
        #expect(s.destination == "/topic/watched.room")
    }

    @Test(
        "refusals name the header or the rule",
        arguments: [
            ("/topic/watched.room", "yes", true, true, "invalid x-presence 'yes': expected true or false", SessionErrorKind.protocolViolation),
            ("/topic/watched.room", "TRUE", true, true, "invalid x-presence 'TRUE': expected true or false", .protocolViolation),
            (
                "/topic/secret", "true", true, true,
                "permission denied: presence is not allowed for /topic/secret (no auth.rules.presence rule allows it)", .auth
            ),
            (
                "/topic/watched.*", "true", true, true,
                "x-presence needs one destination, not the pattern '/topic/watched.*' (presence is kept per destination)", .protocolViolation
            ),
            (
                "/user/queue/x", "true", true, true,
                "x-presence is not available on user destination /user/queue/x: presence is for broker destinations", .protocolViolation
            ),
            (
                "/topic/watched.room", "true", false, true,
                "x-presence is not available: join/leave notices need redis.url and events.enabled", .protocolViolation
            ),
            (
                "/topic/watched.room", "true", true, false,
                "permission denied: presence is not allowed for /topic/watched.room (no auth.rules.presence rule allows it)", .auth
            ),
        ] as [(String, String, Bool, Bool, String, SessionErrorKind)])
    func refusals(_ destination: String, _ value: String, _ notices: Bool, _ withPolicy: Bool, _ message: String, _ kind: SessionErrorKind) {
        var m = Self.connected(notices: notices, policy: withPolicy ? Policy() : nil)
        guard case .failure(let failure) = Self.outcome(&m, Self.subscribe(destination, presence: value)) else {
            Issue.record("\(destination) x-presence:\(value) was accepted")
            return
        }
        #expect(failure.message == message)
        #expect(failure.kind == kind)
        #expect(failure.receiptID == "r")
        #expect(m.phase == .closed)
    }

    @Test func noPolicyAllowsSubscribingButNoPresence() throws {
        var m = Self.connected(policy: nil)
        let s = try Self.outcome(&m, Self.subscribe("/topic/any", presence: "false")).get()
        #expect(s.presence == false)
        #expect(SessionPolicy(configuration: SessionConfiguration(), routes: RouteTable()).mayWatchPresence("/topic/any", identity: nil) == false)
    }

    @Test func routingDestinationsOfNoticesCannotBeSubscribedToOrSentTo() {
        var config = SessionConfiguration()
        config.brokerPrefixes = ["/"]
        let policy = SessionPolicy(configuration: config, routes: RouteTable())
        #expect(policy.kind(of: "/~presence/topic/room") == .notAllowed)
        #expect(policy.kind(of: "/topic/room") == .broker)
    }

    // MARK: Delivery, through a session on an embedded loop

    static func gateway() -> TestGateway {
        var config = SessionConfiguration()
        config.presenceNotices = true
        config.accessPolicy = Policy()
        return TestGateway(configuration: config)
    }

    static func notice(_ event: PresenceNotice.Event, session: String, user: String? = "bob") -> PublishedMessage {
        PresenceNotice(event: event, destination: "/topic/watched.room", session: session, user: user, instance: "gw1", time: 1_700_000_000_000)
            .message(messageID: "n-\(event)-\(session)")
    }

    @Test func watchersGetJoinsAndLeavesOfOthersOnTheirSubscription() throws {
        let gw = Self.gateway()
        defer { gw.shutdown() }
        let watcher = try gw.client()
        try watcher.connect()
        try watcher.send(.subscribe, ["id": "w", "destination": "/topic/watched.room", "x-presence": "true", "receipt": "r"])
        #expect(try watcher.frames().map(\.command) == [.receipt])
        let plain = try gw.client()
        try plain.connect()
        try plain.send(.subscribe, ["id": "p", "destination": "/topic/watched.room", "receipt": "r"])
        #expect(try plain.frames().map(\.command) == [.receipt])

        gw.hub.deliver(Self.notice(.join, session: "gw1-s-9"), scope: .exact)
        gw.hub.deliver(Self.notice(.join, session: watcher.session.sessionID), scope: .exact)  // its own: not told
        gw.hub.deliver(Self.notice(.leave, session: "gw1-s-9", user: nil), scope: .exact)
        gw.loop.run()
        let got = try watcher.frames()
        #expect(got.map(\.command) == [.message, .message])
        let join = try #require(got.first)
        #expect(join.headers["destination"] == "/topic/watched.room")
        #expect(join.headers["subscription"] == "w")
        #expect(join.headers["x-presence-event"] == "join")
        #expect(join.headers["x-presence-session"] == "gw1-s-9")
        #expect(join.headers["x-presence-user"] == "bob")
        #expect(join.headers["content-type"] == "application/json")
        #expect(
            join.bodyString
                == #"{"destination":"/topic/watched.room","event":"join","instance":"gw1","session":"gw1-s-9","time":1700000000000,"user":"bob"}"#)
        let leave = got[1]
        #expect(leave.headers["x-presence-event"] == "leave")
        #expect(leave.headers["x-presence-user"] == nil)
        // A subscriber without the header sees no notice; ordinary messages reach both.
        #expect(try plain.frames().isEmpty)
        gw.hub.deliver(PublishedMessage(destination: "/topic/watched.room", messageID: "m1", headers: [:], body: ByteBuffer(string: "hi")))
        gw.loop.run()
        #expect(try watcher.frames().map(\.bodyString) == ["hi"])
        #expect(try plain.frames().map(\.bodyString) == ["hi"])
        // After UNSUBSCRIBE: no more notices.
        try watcher.send(.unsubscribe, ["id": "w"])
        gw.hub.deliver(Self.notice(.join, session: "gw1-s-10"), scope: .exact)
        gw.loop.run()
        #expect(try watcher.frames().isEmpty)
        #expect(!gw.hub.hasSubscribers(for: PresenceNotice.routing(destination: "/topic/watched.room")))
    }

    @Test func aClosedWatcherLeavesNoInterestBehind() throws {
        let gw = Self.gateway()
        defer { gw.shutdown() }
        let watcher = try gw.client()
        try watcher.connect()
        try watcher.send(.subscribe, ["id": "w", "destination": "/topic/watched.room", "x-presence": "true"])
        #expect(gw.hub.hasSubscribers(for: "/~presence/topic/watched.room"))
        _ = try? watcher.channel.close().wait()
        gw.loop.run()
        #expect(!gw.hub.hasSubscribers(for: "/~presence/topic/watched.room"))
        #expect(!gw.hub.hasSubscribers(for: "/topic/watched.room"))
    }

    @Test func publishersCannotForgeNotices() {
        let forged = PublishedMessage(
            destination: "/topic/watched.room", messageID: "m",
            headers: ["x-presence-event": "join", "x-presence-session": "s", "x-presence-user": "eve", "x": "y"], body: ByteBuffer())
        #expect(forged.headers.map(\.name) == ["x"])
    }
}
