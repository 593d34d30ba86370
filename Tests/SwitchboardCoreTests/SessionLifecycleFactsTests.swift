import NIOConcurrencyHelpers
import NIOCore
import STOMPCodec
import SwitchboardCore
import SwitchboardWire
import Testing

/// The lifecycle facts a session hands to the recorder: connected, subscribed, unsubscribed,
/// and disconnected with the reason its end had.
@Suite("Session: lifecycle facts")
struct SessionLifecycleFactsTests {
    final class Recorder: LifecycleRecorder {
        let facts = NIOLockedValueBox<[LifecycleFact.Kind]>([])
        func record(_ fact: LifecycleFact, on loop: any EventLoop) { facts.withLockedValue { $0.append(fact.kind) } }
        var kinds: [LifecycleFact.Kind] { facts.withLockedValue { $0 } }
    }

    @Test func aSessionsFactsInOrderAndADisconnect() throws {
        let recorder = Recorder()
        let gw = TestGateway(lifecycle: recorder)
        defer { gw.shutdown() }
        let c = try gw.client()
        _ = try c.connect()
        try c.send(.subscribe, ["id": "0", "destination": "/topic/a"])
        try c.send(.unsubscribe, ["id": "0"])
        try c.send(.unsubscribe, ["id": "unknown"])
        try c.send(.disconnect, ["receipt": "bye"])
        #expect(recorder.kinds == [.connected(user: nil), .subscribed(id: "0", destination: "/topic/a"), .unsubscribed(id: "0"), .disconnected(.client)])
    }

    @Test(
        "the reason of the end",
        arguments: [
            ("error", DisconnectReason.error), ("shutdown", .drain), ("lease-lost", .nodeLost), ("closed", .client), ("never-connected", nil),
        ] as [(String, DisconnectReason?)])
    func reasons(_ end: String, _ reason: DisconnectReason?) throws {
        let recorder = Recorder()
        let gw = TestGateway(lifecycle: recorder)
        defer { gw.shutdown() }
        let c = try gw.client()
        if end != "never-connected" { _ = try c.connect() }
        switch end {
        case "error": try c.send(.send, [:], body: "no destination")
        case "shutdown":
            c.session.close(reason: "server shutting down, reconnect", waitForStep: true, kind: .shutdown)
            c.loop.run()
        case "lease-lost":
            c.session.close(reason: "this instance lost its presence lease in Redis, reconnect", waitForStep: true, kind: .leaseLost)
            c.loop.run()
        default: _ = try? c.channel.close().wait()
        }
        c.loop.run()
        let ends = recorder.kinds.filter { if case .disconnected = $0 { true } else { false } }
        #expect(ends == (reason.map { [.disconnected($0)] } ?? []))
    }
}
