import NIOCore
import SwitchboardWire

/// Who a session is, once authenticated.
package struct SessionIdentity: Sendable, Equatable {
    /// The user (the token's `sub`).
    package var user: String
    /// Configured claims kept from the token (e.g. `roles`), as string lists.
    package var claims: [String: [String]]
    /// When the credential expires; the session is closed then.
    package var expiresAt: NIODeadline?

    package init(user: String, claims: [String: [String]] = [:], expiresAt: NIODeadline? = nil) {
        self.user = user
        self.claims = claims
        self.expiresAt = expiresAt
    }
}

/// Why authentication failed; the session answers `ERROR` "authentication failed: <reason>".
package struct AuthenticationFailure: Error, Sendable, Equatable, CustomStringConvertible {
    package var reason: String
    package init(_ reason: String) { self.reason = reason }
    package var description: String { reason }
}

/// Checks the credential a client presents on `CONNECT` (or at the WebSocket handshake).
package protocol SessionAuthenticator: Sendable {
    func authenticate(token: String, on eventLoop: any EventLoop) -> EventLoopFuture<SessionIdentity>
}

/// What a session may do, decided per destination.
package protocol AccessPolicy: Sendable {
    /// Whether `identity` (nil: anonymous) may `SUBSCRIBE` to `destination` (as the client wrote it).
    func maySubscribe(_ destination: String, identity: SessionIdentity?) -> Bool
    /// Whether `identity` may `SEND` to `destination`.
    func maySend(_ destination: String, identity: SessionIdentity?) -> Bool
    /// Whether `identity` may ask for join/leave notices of `destination` (`x-presence: true`
    /// on SUBSCRIBE), on top of being allowed to subscribe to it.
    func mayWatchPresence(_ destination: String, identity: SessionIdentity?) -> Bool
}

extension AccessPolicy {
    /// Presence is opt-in: a policy that says nothing about it allows it nowhere.
    package func mayWatchPresence(_ destination: String, identity: SessionIdentity?) -> Bool { false }
}
