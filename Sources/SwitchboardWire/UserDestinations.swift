/// User destinations, following Spring's convention.
///
/// A client subscribes to `/user/queue/<name>`; a backend addresses user `U` at
/// `/queue/<name>`. Internally both become the routing destination `/~user/<U>/queue/<name>`
/// (with `/`, `.`, `*` and `%` in `U` percent-encoded), which is an ordinary broker
/// destination: exact subscriptions, interest-based Redis channels
/// (`switchboard:dest:/~user/alice/queue/news`). The `MESSAGE` a client gets carries the
/// destination it subscribed to, `/user/queue/<name>`.
public enum UserDestinations {
    /// What clients subscribe to.
    public static let prefix = "/user/"
    /// What messages route by internally (never seen by clients).
    public static let routingPrefix = "/~user/"

    /// Percent-encodes the characters that would split or widen a destination.
    public static func escapeUser(_ user: String) -> String {
        var out = ""
        for c in user.unicodeScalars {
            switch c {
            case "%": out += "%25"
            case "/": out += "%2F"
            case ".": out += "%2E"
            case "*": out += "%2A"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }

    /// `/~user/<U>/queue/x` for user `U` and destination `/queue/x`.
    public static func routing(user: String, destination: String) -> String {
        routingPrefix + escapeUser(user) + destination
    }

    /// The routing form of a client's `/user/queue/x` for `user`.
    public static func routing(user: String, clientDestination: String) -> String? {
        guard clientDestination.hasPrefix(prefix) else { return nil }
        return routing(user: user, destination: String(clientDestination.dropFirst(prefix.count - 1)))
    }

    /// `/user/queue/x` for a routing destination `/~user/<U>/queue/x` (or `/~session/…`); nil for others.
    public static func clientDestination(forRouting destination: String) -> String? {
        let rest: Substring
        if destination.hasPrefix(routingPrefix) {
            rest = destination.dropFirst(routingPrefix.count)
        } else if destination.hasPrefix(sessionRoutingPrefix) {
            rest = destination.dropFirst(sessionRoutingPrefix.count)
        } else {
            return nil
        }
        guard let slash = rest.firstIndex(of: "/") else { return nil }
        return "/user" + rest[slash...]
    }

    /// Where an anonymous session's `/user/...` subscriptions route: `/~session/<id>/queue/x`,
    /// a space no user name can reach (so a token with `sub` "~<id>" cannot share it).
    public static let sessionRoutingPrefix = "/~session/"

    /// The routing form of `/user/queue/x` for a session: its user's, or its own if anonymous.
    public static func routing(user: String?, session: String, clientDestination: String) -> String? {
        if let user { return routing(user: user, clientDestination: clientDestination) }
        guard clientDestination.hasPrefix(prefix) else { return nil }
        return sessionRoutingPrefix + escapeUser(session) + String(clientDestination.dropFirst(prefix.count - 1))
    }
}
