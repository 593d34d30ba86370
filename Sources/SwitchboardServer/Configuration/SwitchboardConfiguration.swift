import Configuration
import SwitchboardCore
import SwitchboardRoutes
import SwitchboardWire

/// Every setting of a gateway instance, by section; docs/configuration.md lists the keys.
///
/// Each section reads its own scope (`ConfigReader.scoped(to:)`): ``HTTPSettings`` `http.*`,
/// ``STOMPSettings`` `stomp.*`, ``Limits`` `limits.*`, and so on. ``ConfigurationSources``
/// builds the reader and checks the keys.
package struct SwitchboardConfiguration: Sendable {
    package var http = HTTPSettings()
    package var stomp = STOMPSettings()
    package var limits = Limits()
    package var destinations = DestinationSettings()
    package var history = HistorySettings()
    package var routes: [RouteConfiguration] = []
    /// `webhooks.*`: the client the webhook routes share.
    package var webhooks = WebhookClient.Settings()
    /// Redis mode is on when set.
    package var redis: RedisSettings?
    package var auth = AuthSettings()
    package var server = ServerSettings()
    package var console = ConsoleSettings()
    package var log = LogSettings()
    /// Presence and lifecycle events (in Redis, or to a webhook on the embedded broker).
    package var events = EventSettings()
    /// Instance id, prefix of message and session ids; random when nil.
    package var instanceID: String?

    package init() {}

    /// A configuration problem, naming the key.
    package struct Invalid: Error, CustomStringConvertible {
        package var description: String
    }

    /// Reads every section from `reader` (YAML file, environment, flags, in that order of weight).
    package init(reader: ConfigReader) throws {
        try Self.checkIntegerBounds(reader)
        http = try HTTPSettings(reader: reader.scoped(to: "http"))
        stomp = try STOMPSettings(reader: reader.scoped(to: "stomp"))
        instanceID = reader.string(forKey: "instance.id")
        // It names the instance in Redis (its client name, which Redis allows only printable
        // without spaces; channels; the canary's payload, whose fields are space-separated;
        // the presence registry's `<id>~<token>`): an empty one or one with a space was never
        // ready.
        if let id = instanceID, id.isEmpty || id.utf8.count > 255 || !id.utf8.allSatisfy({ (0x21...0x7E).contains($0) && !"~{}*?[]".utf8.contains($0) }) {
            throw SwitchboardConfiguration.Invalid(
                description: "instance.id must be 1 to 255 printable ASCII characters without spaces or any of ~ { } * ? [ ], got '\(id)'")
        }
        server = try ServerSettings(reader: reader.scoped(to: "server"), legacyBusyPercent: http.legacyBusyPercent)
        console = try ConsoleSettings(reader: reader.scoped(to: "console"))
        log = try LogSettings(reader: reader.scoped(to: "log"))
        limits = try Limits(reader: reader.scoped(to: "limits"))
        destinations = try DestinationSettings(reader: reader.scoped(to: "destinations"))
        history = try HistorySettings(reader: reader.scoped(to: "history"))
        routes = try RouteConfiguration.read(reader.scoped(to: "routes"), destinations: destinations)
        webhooks = try WebhookClient.Settings(reader: reader.scoped(to: "webhooks"))
        redis = try RedisSettings(reader: reader.scoped(to: "redis"), destinations: destinations)
        for route in routes where redis == nil {
            if case .webhook = route.target { continue }
            throw Invalid(description: "routes.\(route.name).type \(route.target.typeName) needs redis.url")
        }
        events = try EventSettings(reader: reader.scoped(to: "events"))
        if events.webhook != nil, redis != nil {
            throw Invalid(
                description: "events.webhook.url is for the embedded broker: with redis.url, events go to the Redis Stream events.stream; unset one of them")
        }
        if events.enabled, redis == nil, events.webhook == nil {
            throw Invalid(
                description:
                    "events.enabled needs redis.url (events in a Redis Stream) or events.webhook.url (embedded broker: events POSTed to a webhook)")
        }
        if events.enabled, redis?.cluster != nil {
            throw Invalid(
                description:
                    "events.enabled is not available on Redis Cluster (redis.cluster.nodes): the presence registry and its functions update keys of many users, destinations and instances in one atomic step, which a cluster cannot do across slots; unset events.enabled or use one Redis (with Sentinel for failover)"
            )
        }
        auth = try AuthSettings(reader: reader.scoped(to: "auth"), brokerPrefixes: destinations.brokerPrefixes)
    }

    /// The sessions' settings (authentication and access policy are added by the gateway).
    package var session: SessionConfiguration {
        var session = SessionConfiguration()
        stomp.apply(to: &session)
        limits.apply(to: &session)
        destinations.apply(to: &session)
        return session
    }

    /// The largest integer any key takes: no setting needs more (2^40 ms is 34 years, 2^40
    /// bytes 1 TiB), and the gateway's arithmetic on settings (doubling a rate for its burst,
    /// adding a margin to a size or a grace period, milliseconds to nanoseconds) cannot
    /// overflow below it.
    static let largestInteger = 1 << 40

    /// Keys bound lower than ``largestInteger``: by what the system or NIO takes.
    static let integerBounds: [String: Int] = [
        "http.backlog": Int(Int32.max),
        // NIO's WebSocket decoder takes a 32-bit frame size (the STOMP limit plus a margin).
        "limits.max-frame-bytes": 1 << 30,
        "limits.max-body-bytes": 1 << 30,
    ]

    /// Refuses, naming the key, an integer setting above its bound (a value the gateway cannot
    /// use would otherwise trap at start-up or at the first connection). Keys of named entries
    /// (`routes.<name>.timeout-ms`) are checked for every name listed.
    static func checkIntegerBounds(_ reader: ConfigReader) throws {
        for spec in ConfigKeyCatalog.all where spec.type == .integer {
            var keys = [spec.key]
            if let namesKey = spec.namesKey {
                let names = reader.stringArray(forKey: ConfigKey(namesKey), default: [])
                keys = names.map { spec.key.replacingOccurrences(of: ConfigKeySpec.placeholder, with: $0) }
            }
            let bound = integerBounds[spec.key] ?? largestInteger
            for key in keys {
                guard let value = reader.int(forKey: ConfigKey(key)), value > bound else { continue }
                throw Invalid(description: "\(key) must be ≤ \(bound), got \(value)")
            }
        }
    }

    /// Throws naming the first key whose value is below `minimum`.
    static func atLeast(_ minimum: Int, _ values: (String, Int)...) throws {
        for (key, value) in values where value < minimum {
            throw Invalid(description: "\(key) must be ≥ \(minimum), got \(value)")
        }
    }
}

extension SwitchboardConfiguration {
    /// What is open that a deployment with tokens probably means closed, logged at start-up.
    package var securityWarnings: [String] {
        guard !auth.jwt.isEmpty else { return [] }
        var warnings: [String] = []
        if auth.apiKeys.isEmpty {
            warnings.append(
                "auth.api-keys is empty: the HTTP API (publish to any topic or user, presence, the console's publish) answers anyone who reaches the port; "
                    + "configure API keys")
        }
        if OriginName.allowsAny(http.allowedOrigins) {
            warnings.append(
                "http.allowed-origins allows any origin: the auth.handshake-cookie is not read from browsers (a page of any site could open a session with a user's cookie); "
                    + "list your web app's origins to log in with the cookie")
        }
        return warnings
    }
}
