import Foundation
import NIOCore
import SwitchboardCore
import SwitchboardWire
import Testing

@testable import SwitchboardServer

/// The JSON the embedded broker POSTs to `events.webhook.url`: an array of events with the
/// fields of the Redis stream entry (absent when empty) and an id.
@Suite struct EventsWebhookEncodingTests {
    @Test func eventsAreAJSONArrayWithTheStreamEntryFields() throws {
        var presence = LocalPresenceState(instance: "gw0", idPrefix: "gw0-e-k3f9xq-")
        let events =
            presence.apply(LifecycleFact(session: "gw0-s-1", kind: .connected(user: "alice"), time: 1_700_000_000_000))
            + presence.apply(LifecycleFact(session: "gw0-s-2", kind: .connected(user: nil), time: 1_700_000_000_001))
            + presence.apply(LifecycleFact(session: "gw0-s-2", kind: .subscribed(id: "sub-0", destination: "/topic/a/b"), time: 1_700_000_000_002))
            + presence.apply(LifecycleFact(session: "gw0-s-1", kind: .disconnected(.heartbeatTimeout), time: 1_700_000_000_003))
        let body = try WebhookLifecycle.encode(events)
        let text = String(buffer: body)
        #expect(text.contains("\"/topic/a/b\""))  // slashes not escaped
        let all = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]])
        // The process's first event: a presence-reset, numbered 0.
        #expect(all.first?["type"] as? String == "presence-reset" && all.first?["id"] as? String == "gw0-e-k3f9xq-0")
        #expect(all.first?["gen"] as? Int == 1_700_000_000_000_000 && Set(all.first?.keys ?? [:].keys) == ["id", "type", "instance", "time", "gen"])
        let decoded = Array(all.dropFirst())
        #expect(decoded.count == 7)
        let first = decoded[0]
        #expect(first["id"] as? String == "gw0-e-k3f9xq-1" && first["type"] as? String == "connected")
        #expect(first["session"] as? String == "gw0-s-1" && first["user"] as? String == "alice" && first["instance"] as? String == "gw0")
        #expect(first["time"] as? Int == 1_700_000_000_000 && first["gen"] as? Int == 1_700_000_000_000_000)  // the time in µs
        #expect(Set(first.keys) == ["id", "type", "session", "user", "instance", "time", "gen"])
        let anonymous = decoded[2]
        #expect(anonymous["type"] as? String == "connected" && anonymous["user"] == nil && anonymous["gen"] == nil)
        let subscribed = decoded[3]
        #expect(subscribed["destination"] as? String == "/topic/a/b" && subscribed["subscription"] as? String == "sub-0")
        #expect(
            decoded.map { $0["type"] as? String } == [
                "connected", "user-online", "connected", "subscribed", "destination-occupied", "disconnected", "user-offline",
            ])
        #expect(decoded[5]["reason"] as? String == "heartbeat-timeout" && decoded[6]["reason"] as? String == "heartbeat-timeout")
        #expect(decoded[5]["gen"] as? Int == 1_700_000_000_000_002 && decoded[6]["gen"] as? Int == 1_700_000_000_000_003)
    }
}
