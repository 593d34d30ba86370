import STOMPCodec
import SwitchboardRoutes
import SwitchboardWire

/// What sessions may do: which destinations exist, the access rules, and the limits.
///
/// One instance is shared by every session of a gateway (it is immutable). The
/// ``STOMPSessionStateMachine`` consults it for every frame; it performs no I/O.
package final class SessionPolicy: Sendable {
    /// The settings the rules come from.
    package let configuration: SessionConfiguration
    /// The `/app` routes, to tell whether a destination has one and whether its backend keeps order.
    package let routes: RouteTable

    package init(configuration: SessionConfiguration, routes: RouteTable) {
        self.configuration = configuration
        self.routes = routes
    }

    /// What a destination is.
    package enum DestinationKind: Equatable {
        /// A broker destination (`/topic/...`): published to every subscriber.
        case broker
        /// An application destination (`/app/...`): routed to a backend.
        case application
        /// A user destination (`/user/queue/...`): only subscribable.
        case user
        /// None of these.
        case notAllowed
    }

    /// Classifies `destination`; user destinations first, as their prefix may overlap.
    /// Presence notices' routing destinations (`/~presence/...`) are none of them, whatever
    /// the prefixes: only the gateway delivers there.
    package func kind(of destination: String) -> DestinationKind {
        if configuration.isUserDestination(destination) { return .user }
        if destination.hasPrefix(PresenceNotice.routingPrefix) { return .notAllowed }
        if configuration.isBrokerDestination(destination) { return .broker }
        if configuration.isApplicationDestination(destination) { return .application }
        return .notAllowed
    }

    /// Why a backend's reply to `destination` cannot be delivered (nil when it can): a
    /// broadcast goes to a named broker destination (not a bare prefix), a reply to the sender
    /// to a broker or user destination; neither with a wildcard, a control character, over the
    /// name limit or not in NFC.
    package func replyProblem(_ destination: String, toSender: Bool) -> String? {
        let kind = kind(of: destination)
        // A reply to a user (`"user": "alice"`) arrives routed already: `/~user/alice/queue/…`.
        let routedAs = UserDestinations.clientDestination(forRouting: destination)
        if let routedAs, !configuration.isUserDestination(routedAs) {
            // `/topic/x` to a user routes where no client can subscribe.
            return "not a user destination (\(configuration.userDestinationPrefixes.joined(separator: " or ")))"
        }
        guard kind == .broker || routedAs != nil || (toSender && kind == .user) else {
            return toSender ? "not a broker or user destination" : "not a broker destination"
        }
        if destination.contains("*") { return "a wildcard" }
        // As every other way in refuses them: a destination (or a user) not in NFC is another
        // name than the subscribers' in Redis, and reached nobody there.
        if let problem = DestinationPattern.nameProblem(destination) { return "the destination \(problem)" }
        if !DestinationPattern.isNormalized(destination) { return "not in Unicode normalization form C (NFC)" }
        if configuration.brokerPrefixes.contains(destination) { return "a bare prefix" }
        return nil
    }

    package func maySend(_ destination: String, identity: SessionIdentity?) -> Bool {
        configuration.accessPolicy?.maySend(destination, identity: identity) ?? true
    }

    package func maySubscribe(_ destination: String, identity: SessionIdentity?) -> Bool {
        configuration.accessPolicy?.maySubscribe(destination, identity: identity) ?? true
    }

    /// Whether `identity` may get join/leave notices of `destination`: only where an access
    /// policy allows it (no policy: nowhere).
    package func mayWatchPresence(_ destination: String, identity: SessionIdentity?) -> Bool {
        configuration.accessPolicy?.mayWatchPresence(destination, identity: identity) ?? false
    }

    /// Whether a SEND may be pipelined: a valid SEND outside a transaction to a destination
    /// whose backend keeps the order of what it is handed. A SEND that will be refused is not:
    /// its `ERROR` must come after the receipts of the frames before it. (Every check of the
    /// SEND's arrival is repeated here: one left out let such a SEND's `ERROR` overtake them.)
    package func isPipelinable(_ frame: STOMPFrame, identity: SessionIdentity?) -> Bool {
        guard frame.command == .send, frame.headers["transaction"] == nil,
            let destination = frame.headers["destination"],
            DestinationPattern.isNormalized(destination), DestinationPattern.nameProblem(destination) == nil
        else { return false }
        guard maySend(destination, identity: identity) else { return false }
        // Classified as `handleSend` does (user destinations first: with a broker prefix `/`
        // a user destination is refused there, and its ERROR overtook the receipts before it).
        switch kind(of: destination) {
        case .broker:
            if let key = frame.headers["idempotency-key"], IdempotencyTokens.problem(key) != nil { return false }
            return !destination.contains("*")
        case .application:
            return routes.route(for: destination)?.keepsOrderWhenPipelined ?? false
        default:
            return false
        }
    }

    /// The message refusing a destination that is none of the known kinds, for `command`.
    package func notAllowedMessage(_ destination: String, subscribe: Bool) -> String {
        if subscribe {
            if configuration.isApplicationDestination(destination) {
                return "cannot SUBSCRIBE to application destination \(destination)"
            }
            return "destination \(destination) is not allowed: SUBSCRIBE to \(configuration.brokerPrefixes.joined(separator: " or "))"
        }
        let allowed = (configuration.brokerPrefixes + configuration.applicationPrefixes).joined(separator: ", ")
        return "destination \(destination) is not allowed: SEND to \(allowed)"
    }
}
