import STOMPCodec
import Testing

@Suite("Version, subprotocol and heart-beat negotiation")
struct NegotiationTests {
    @Test(
        "accept-version negotiation picks the highest common version",
        arguments: [
            (nil, STOMPVersion?.some(.v1_0)),
            ("1.0", .v1_0),
            ("1.1", .v1_1),
            ("1.2", .v1_2),
            ("1.1,1.2", .v1_2),
            ("1.2,1.0", .v1_2),
            ("1.0,1.1", .v1_1),
            ("1.0,2.0", .v1_0),
            ("2.0", nil),
            ("", nil),
            ("1.3,9", nil),
            (",,1.1,", .v1_1),
            // Spaces after the commas (a probe: this negotiated 1.0, other escaping rules).
            ("1.0, 1.1, 1.2", .v1_2),
            (" 1.1 ,\t1.0", .v1_1),
        ] as [(String?, STOMPVersion?)])
    func versionNegotiation(_ accept: String?, _ expected: STOMPVersion?) {
        #expect(STOMPVersion.negotiate(acceptVersion: accept) == expected)
    }

    @Test("a restricted supported set limits the result")
    func restrictedSupported() {
        let only11: Set<STOMPVersion> = [.v1_1]
        #expect(STOMPVersion.negotiate(acceptVersion: "1.0,1.1,1.2", supported: only11) == .v1_1)
        #expect(STOMPVersion.negotiate(acceptVersion: "1.2", supported: only11) == nil)
        #expect(STOMPVersion.negotiate(acceptVersion: nil, supported: only11) == nil)
        let no12: Set<STOMPVersion> = [.v1_0, .v1_1]
        #expect(STOMPVersion.negotiate(acceptVersion: "1.1,1.2", supported: no12) == .v1_1)
        #expect(STOMPVersion.negotiate(acceptVersion: nil, supported: no12) == .v1_0)
        #expect(STOMPVersion.negotiate(acceptVersion: "1.2", supported: []) == nil)
    }

    @Test("versions are ordered and know their escaping")
    func versionProperties() {
        #expect(STOMPVersion.v1_0 < .v1_1)
        #expect(STOMPVersion.v1_1 < .v1_2)
        #expect(STOMPVersion.allCases.sorted() == [.v1_0, .v1_1, .v1_2])
        #expect(!STOMPVersion.v1_0.escapesHeaders)
        #expect(STOMPVersion.v1_1.escapesHeaders)
        #expect(STOMPVersion.v1_2.escapesHeaders)
        #expect(STOMPVersion.allCases.map(\.webSocketSubprotocol) == ["v10.stomp", "v11.stomp", "v12.stomp"])
    }

    @Test(
        "subprotocol negotiation",
        arguments: [
            (["v10.stomp", "v11.stomp", "v12.stomp"], STOMPVersion?.some(.v1_2)),
            (["v12.stomp", "v10.stomp"], .v1_2),
            (["v11.stomp"], .v1_1),
            (["v10.stomp"], .v1_0),
            (["chat", "v11.stomp", "mqtt"], .v1_1),
            (["stomp", "v13.stomp", "V12.STOMP"], nil),
            ([], nil),
        ] as [([String], STOMPVersion?)])
    func subprotocols(_ offered: [String], _ expected: STOMPVersion?) {
        #expect(STOMPVersion.negotiateSubprotocol(offered: offered) == expected)
    }

    @Test("subprotocol negotiation honours the supported set")
    func subprotocolsRestricted() {
        #expect(STOMPVersion.negotiateSubprotocol(offered: ["v10.stomp", "v12.stomp"], supported: [.v1_0, .v1_1]) == .v1_0)
        #expect(STOMPVersion.negotiateSubprotocol(offered: ["v12.stomp"], supported: [.v1_1]) == nil)
    }

    @Test(
        "heart-beat arithmetic follows the specification",
        arguments: [
            // client (cx, cy), server (sx, sy) -> (server sends every, server expects every)
            ((0, 0), (10_000, 10_000), (0, 0)),
            ((0, 5_000), (10_000, 10_000), (10_000, 0)),
            ((5_000, 0), (10_000, 10_000), (0, 10_000)),
            ((1_000, 20_000), (10_000, 3_000), (20_000, 3_000)),
            ((30_000, 2_000), (4_000, 10_000), (4_000, 30_000)),
            ((1_000, 1_000), (0, 0), (0, 0)),
            ((1_000, 1_000), (0, 500), (0, 1_000)),
            ((1_000, 1_000), (500, 0), (1_000, 0)),
            // at most STOMPHeartBeat.maximumInterval (2^31 - 1 ms) in force
            ((Int.max, Int.max), (10_000, 10_000), (2_147_483_647, 2_147_483_647)),
            ((1 << 62, 0), (10_000, 10_000), (0, 2_147_483_647)),
        ] as [((Int, Int), (Int, Int), (Int, Int))])
    func heartBeatArithmetic(_ client: (Int, Int), _ server: (Int, Int), _ expected: (Int, Int)) {
        let result = STOMPHeartBeat.negotiate(
            client: STOMPHeartBeat(send: client.0, receive: client.1),
            server: STOMPHeartBeat(send: server.0, receive: server.1))
        #expect(result.serverSends == expected.0)
        #expect(result.serverExpects == expected.1)
    }

    @Test(
        "heart-beat header parsing",
        arguments: [
            ("0,0", STOMPHeartBeat?.some(STOMPHeartBeat(send: 0, receive: 0))),
            ("10000,5000", STOMPHeartBeat(send: 10_000, receive: 5_000)),
            ("1,2", STOMPHeartBeat(send: 1, receive: 2)),
            ("", nil),
            ("100", nil),
            ("1,2,3", nil),
            ("-1,0", nil),
            ("0,-5", nil),
            ("a,b", nil),
            (" 1,2", nil),
            (",", nil),
        ] as [(String, STOMPHeartBeat?)])
    func heartBeatHeader(_ header: String, _ expected: STOMPHeartBeat?) {
        #expect(STOMPHeartBeat(header: header) == expected)
    }

    @Test("heart-beat header value round-trips")
    func heartBeatHeaderValue() {
        let beat = STOMPHeartBeat(send: 250, receive: 4_000)
        #expect(beat.headerValue == "250,4000")
        #expect(STOMPHeartBeat(header: beat.headerValue) == beat)
        #expect(STOMPHeartBeat.none.headerValue == "0,0")
    }
}
