import Foundation
import NIOCore
import STOMPCodec

/// A join or leave of one session on one destination, for the subscribers that asked for them
/// with `x-presence: true` on `SUBSCRIBE` (see docs/lifecycle.md).
///
/// The lifecycle functions (``LifecycleFunctions``) decide joins and leaves as they update
/// presence — a session joins with its first subscription written exactly as the destination
/// and leaves with its last (an `UNSUBSCRIBE`, a disconnect, or its instance reaped as
/// `node-lost`) — and `PUBLISH` each one as JSON on the destination's presence channel
/// (`<prefix>presence:<destination>`), only while some instance listens there (`PUBSUB
/// NUMSUB`). An instance listens while it has a local watcher of the destination; it delivers
/// the notice as a `MESSAGE` on the watcher's subscription, routed inside the gateway as
/// `/~presence<destination>` so that only watchers get it.
public struct PresenceNotice: Sendable, Equatable, Codable {
    public enum Event: String, Sendable, Equatable, Codable {
        case join
        case leave
    }

    public var event: Event
    /// The destination, as subscribers wrote it in `SUBSCRIBE`.
    public var destination: String
    /// The session that joined or left.
    public var session: String
    /// Its user; nil for an anonymous session.
    public var user: String?
    /// The instance that held the session.
    public var instance: String?
    /// For a leave: `unsubscribe`, or why the session ended (`client`, `node-lost`, …).
    public var reason: String?
    /// Wall-clock ms when it happened.
    public var time: Int64?

    public init(
        event: Event, destination: String, session: String, user: String? = nil, instance: String? = nil, reason: String? = nil,
        time: Int64? = nil
    ) {
        self.event = event
        self.destination = destination
        self.session = session
        self.user = user
        self.instance = instance
        self.reason = reason
        self.time = time
    }

    /// Headers of a notice's `MESSAGE`: `join` or `leave`, the session, and the user (absent
    /// for an anonymous session). Reserved: no publisher can set them.
    public static let eventHeader = "x-presence-event"
    public static let sessionHeader = "x-presence-session"
    public static let userHeader = "x-presence-user"

    /// Where notices of a destination route inside a gateway: `/~presence/topic/x` for
    /// `/topic/x`, a space no client destination reaches.
    public static let routingPrefix = "/~presence"

    public static func routing(destination: String) -> String { routingPrefix + destination }

    /// `/topic/x` for `/~presence/topic/x`; nil for any other destination.
    public static func destination(forRouting routed: String) -> String? {
        guard routed.hasPrefix(routingPrefix + "/") else { return nil }
        return String(routed.dropFirst(routingPrefix.count))
    }

    /// Parses the JSON the lifecycle functions publish; nil when it is not a notice.
    public init?(json: ByteBuffer) {
        guard let notice = try? JSONDecoder().decode(PresenceNotice.self, from: Data(json.readableBytesView)),
            !notice.destination.isEmpty, !notice.session.isEmpty
        else { return nil }
        self = notice
        if user == "" { user = nil }
    }

    /// The JSON body of the notice's `MESSAGE` (sorted keys, absent fields left out).
    public var json: ByteBuffer {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return ByteBuffer(bytes: (try? encoder.encode(self)) ?? Data("{}".utf8))
    }

    /// The notice as a message routed to the destination's watchers.
    public func message(messageID: String) -> PublishedMessage {
        var headers: STOMPHeaders = [Self.eventHeader: event.rawValue, Self.sessionHeader: session]
        if let user { headers.add(Self.userHeader, user) }
        return PublishedMessage(
            destination: Self.routing(destination: destination), messageID: messageID,
            headers: ["content-type": "application/json"], body: json, serverHeaders: headers)
    }
}
