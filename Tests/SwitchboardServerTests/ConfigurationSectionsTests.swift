import NIOCore
import SwitchboardCore
import SwitchboardWire
import Testing

@testable import SwitchboardServer

/// Each section reads its own scope; routes are an enum with the payload their type needs.
@Suite struct ConfigurationSectionsTests {
    @Test func routesAndInboundRoutesCarryWhatTheirTypeNeeds() async throws {
        let configuration = try await ConfigurationCheckTests().load(
            ConfigurationCatalogTests.everything + ["routes.stream.groups=a,b", "routes.stream.wait-replicas=2"]
        ).configuration
        #expect(
            configuration.routes.map(\.target) == [
                .webhook(url: "http://127.0.0.1:9/x", timeoutMs: 5_000),
                .redisStream(stream: "S", maxLength: 100_000, groups: ["a", "b"], waitReplicas: 2),
                .redisPubSub(channel: "P"),
            ])
        #expect(
            configuration.redis?.inbound == [
                RedisInboundSetting(name: "chan", route: .channel(channel: "C", destination: "/topic/c")),
                RedisInboundSetting(name: "bc", route: .broadcast(channel: "B")),
                RedisInboundSetting(name: "st", route: .stream(stream: "T")),
            ])
        #expect(configuration.auth.apiKeys.map(\.scopes) == [["/topic/"]])
        #expect(configuration.http.tls == HTTPSettings.TLSFiles(certificateFile: "/nonexistent.pem", keyFile: "/nonexistent.key"))
        #expect(configuration.log.level == .debug)
    }

    /// An empty scope (an empty entry of an environment list) allowed every destination.
    @Test func anAPIKeyScopeMustBeADestinationPrefix() async {
        let key = ["auth.api-keys.names=k", "auth.api-keys.k.sha256=" + String(repeating: "a", count: 64)]
        for scopes in [",/topic/", "topic/"] {
            let error = await ConfigurationCheckTests().loadError(key + ["auth.api-keys.k.scopes=\(scopes)"])
            #expect(
                error?.hasPrefix("auth.api-keys.k.scopes: '") == true && error?.hasSuffix("' must be a destination prefix starting with /") == true, "\(String(describing: error))")
        }
    }

    /// "No anonymous clients" without a key to check tokens with let every client in as
    /// anonymous (nothing checked a token at all).
    @Test func noAnonymousClientsNeedsAKey() async {
        let error = await ConfigurationCheckTests().loadError(["auth.allow-anonymous=false"])
        #expect(error?.hasPrefix("auth.allow-anonymous=false needs a key to check tokens with") == true, "\(String(describing: error))")
        #expect(await ConfigurationCheckTests().loadError(["auth.allow-anonymous=false", "auth.jwt.hmac-secret=" + String(repeating: "s", count: 32)]) == nil)
    }

    /// Token checks configured without a key to check with let every client in as anonymous
    /// (a key variable misspelt and dropped with a warning).
    @Test(arguments: ["auth.jwt.audience=api", "auth.jwt.issuer=https://id.example", "auth.jwt.claims=team"])
    func tokenChecksNeedAKey(_ setting: String) async {
        let name = setting.split(separator: "=")[0].dropFirst("auth.jwt.".count)
        let error = await ConfigurationCheckTests().loadError([setting])
        #expect(error == "auth.jwt.\(name) is set but no key checks tokens: set auth.jwt.hmac-secret, auth.jwt.public-key-files or auth.jwt.jwks-file")
        #expect(await ConfigurationCheckTests().loadError([setting, "auth.jwt.hmac-secret=" + String(repeating: "s", count: 32)]) == nil)
        // Blank (a template's empty variable): unset.
        let variable = "SWITCHBOARD_AUTH_JWT_" + name.uppercased()
        #expect(await ConfigurationCheckTests().loadError(environment: [variable: ""]) == nil)
    }

    /// With JWT keys, an API open to anyone and a cookie login from any origin are warned of.
    @Test func openPartsOfATokenDeploymentAreWarnedOf() async throws {
        let secret = "auth.jwt.hmac-secret=" + String(repeating: "s", count: 32)
        let open = try await ConfigurationCheckTests().load([secret]).warnings
        #expect(open.count == 2 && open[0].hasPrefix("auth.api-keys is empty") && open[1].hasPrefix("http.allowed-origins allows any origin"), "\(open)")
        let closed = try await ConfigurationCheckTests().load([
            secret, "http.allowed-origins=https://app.example", "auth.api-keys.names=ci", "auth.api-keys.ci.sha256=" + String(repeating: "a", count: 64),
        ]).warnings
        #expect(closed.isEmpty, "\(closed)")
        // Without JWT nothing is closed to begin with (the quick start): no warning.
        #expect(try await ConfigurationCheckTests().load([]).warnings.isEmpty)
    }

    /// A name with a capital (`ciBot`): the library looks its keys up as `CI_BOT`, the check
    /// and the `--set` table spelt them `CIBOT`, and the value was silently ignored (the key's
    /// scopes fell back to every broker prefix).
    @Test func keysOfANameWithACapitalAreRead() async throws {
        let yaml = """
            auth:
              api-keys:
                names: [ciBot]
                ciBot:
                  sha256: \(String(repeating: "a", count: 64))
            """
        let flagged = try await ConfigurationCheckTests().load(["auth.api-keys.ciBot.scopes=/topic/ci/"], yaml: yaml)
        #expect(flagged.configuration.auth.apiKeys.map(\.scopes) == [["/topic/ci/"]])
        let environment = try await ConfigurationCheckTests().load(yaml: yaml, environment: ["SWITCHBOARD_AUTH_API_KEYS_CI_BOT_SCOPES": "/topic/env/"])
        #expect(environment.configuration.auth.apiKeys.map(\.scopes) == [["/topic/env/"]])
        #expect(environment.warnings.isEmpty, "\(environment.warnings)")
    }

    /// An empty `instance.id` or one with a space left the instance never ready in Redis mode
    /// (its own canary read as a peer's; Redis refuses such a client name).
    @Test(arguments: ["", "eu west 1", "a~b", "gw{1}", String(repeating: "x", count: 256)])
    func anInstanceIDIsAName(_ id: String) async {
        let error = await ConfigurationCheckTests().loadError(environment: ["SWITCHBOARD_INSTANCE_ID": id])
        #expect(error?.hasPrefix("instance.id must be 1 to 255 printable ASCII characters") == true, "\(String(describing: error))")
    }

    /// What deployments use stays accepted: a pod name, host:port, a long FQDN.
    @Test(arguments: ["Switchboard-0", "gw-1:8080", "switchboard-2.switchboard-headless.realtime-production.svc.cluster.local"])
    func usualInstanceIDsAreAccepted(_ id: String) async {
        #expect(await ConfigurationCheckTests().loadError(environment: ["SWITCHBOARD_INSTANCE_ID": id]) == nil)
    }

    /// An empty entry (an empty environment list, a trailing comma) matched every destination:
    /// history off everywhere, every `/user/…` a user destination. Empty entries are dropped; an
    /// entry without `/` is refused.
    @Test(arguments: ["history.disabled-prefixes", "destinations.user-destination-prefixes"])
    func prefixListsHoldDestinationPrefixes(_ key: String) async throws {
        let error = await ConfigurationCheckTests().loadError(["\(key)=topic/"])
        #expect(error == "\(key): 'topic/' must be a destination prefix starting with /", "\(String(describing: error))")
        let variable = "SWITCHBOARD_" + key.uppercased().replacing(".", with: "_").replacing("-", with: "_")
        for (value, expected) in [("/topic/ticks.,", ["/topic/ticks."]), ("", []), (" , /a/", ["/a/"])] {
            let loaded = try await ConfigurationCheckTests().load(environment: [variable: value]).configuration
            let read = key.hasPrefix("history") ? loaded.history.disabledPrefixes : loaded.destinations.userDestinationPrefixes
            #expect(read == expected, "\(value)")
        }
    }

    /// The broker and application prefix lists drop empty entries too (an empty one made every
    /// destination a broker destination).
    @Test func brokerAndApplicationPrefixListsDropEmptyEntries() async throws {
        let loaded = try await ConfigurationCheckTests().load(environment: [
            "SWITCHBOARD_DESTINATIONS_BROKER_PREFIXES": "/topic/,", "SWITCHBOARD_DESTINATIONS_APP_PREFIXES": ",/app/",
        ]).configuration
        #expect(loaded.destinations.brokerPrefixes == ["/topic/"] && loaded.destinations.applicationPrefixes == ["/app/"])
        let error = await ConfigurationCheckTests().loadError(environment: ["SWITCHBOARD_DESTINATIONS_BROKER_PREFIXES": ""])
        #expect(error == "destinations.broker-prefixes holds only blank entries (an empty variable?): name a prefix (e.g. /topic/), or [] in a file for none")
        let none = try await ConfigurationCheckTests().load(yaml: "destinations:\n  broker-prefixes: []\n").configuration
        #expect(none.destinations.brokerPrefixes.isEmpty)
    }

    /// The console on one of the gateway's own paths trapped at start-up (a duplicate route).
    @Test(arguments: ["/metrics", "/health/", "/health/ready", "/api/presence", "/metrics//", "//health", "/api/presence/**"])
    func theConsoleCannotTakeTheGatewaysOwnPaths(_ path: String) async {
        let error = await ConfigurationCheckTests().loadError(["console.path=\(path)"])
        #expect(error?.hasPrefix("console.path must not be one of the gateway's own paths") == true, "\(String(describing: error))")
        #expect(await ConfigurationCheckTests().loadError(["console.path=/api/console"]) == nil)
    }

    @Test func redisRoutesNeedRedis() async {
        let error = await ConfigurationCheckTests().loadError(["routes.names=p", "routes.p.destination=/app/p", "routes.p.type=redis-pubsub", "routes.p.channel=C"])
        #expect(error == "routes.p.type redis-pubsub needs redis.url")
    }

    @Test func eventSettingsAreReadAndChecked() async throws {
        let redis = "redis.url=redis://127.0.0.1:6379"
        let events = try await ConfigurationCheckTests().load([
            redis, "events.enabled=true", "events.types=user-online,user-offline", "events.lease-ttl-ms=3000", "events.grace-ms=500",
        ]).configuration.events
        #expect(events.enabled && events.types == [.userOnline, .userOffline] && events.leaseTTLMs == 3000 && events.graceMs == 500)
        #expect(events.stream == "switchboard:events" && events.leaseRenewMs == 1000)
        let cases: [([String], String)] = [
            (["events.enabled=true"], "events.enabled needs redis.url (events in a Redis Stream) or events.webhook.url"),
            ([redis, "events.enabled=true", "events.webhook.url=http://127.0.0.1:9/events"], "events.webhook.url is for the embedded broker"),
            (["events.enabled=true", "events.webhook.url=ftp://x/y"], "events.webhook.url: the webhook url must be an absolute http:// or https:// URL"),
            (["events.webhook.url=http://h/e", "events.webhook.timeout-ms=0"], "events.webhook.timeout-ms must be ≥ 1, got 0"),
            (
                ["events.webhook.url=http://h/e", "events.webhook.backoff-ms=500", "events.webhook.backoff-max-ms=100"],
                "events.webhook.backoff-max-ms must be at least events.webhook.backoff-ms, got 100 and 500"
            ),
            ([redis, "events.types=user-online,user-gone"], "events.types: unknown event type 'user-gone'"),
            ([redis, "events.lease-ttl-ms=1500"], "events.lease-ttl-ms must be at least twice events.lease-renew-ms, got 1500 and 1000"),
            ([redis, "events.max-queued=0"], "events.max-queued must be ≥ 1, got 0"),
        ]
        for (settings, message) in cases {
            let error = await ConfigurationCheckTests().loadError(settings)
            #expect(error?.hasPrefix(message) == true, "\(settings): \(error ?? "no error")")
        }
    }

    @Test func theEventsWebhookIsReadOnTheEmbeddedBroker() async throws {
        let events = try await ConfigurationCheckTests().load([
            "events.enabled=true", "events.webhook.url=http://127.0.0.1:9/events", "events.webhook.backoff-ms=50", "events.max-queued=7",
        ]).configuration.events
        var expected = EventSettings.Webhook(url: "http://127.0.0.1:9/events")
        expected.backoffMs = 50
        #expect(events.enabled && events.webhook == expected && events.maxQueued == 7)
        #expect(expected.timeoutMs == 5_000 && expected.backoffMaxMs == 5_000 && expected.drainTimeoutMs == 5_000)
        let none = try await ConfigurationCheckTests().load(["events.webhook.url="]).configuration.events
        #expect(none.webhook == nil && !none.enabled)
    }

    @Test func sessionViewComesFromStompLimitsAndDestinations() async throws {
        let configuration = try await ConfigurationCheckTests().load([
            "stomp.heartbeat.send-ms=1000", "stomp.connect-timeout-ms=3000", "limits.max-frame-bytes=1000",
            "limits.max-subscriptions=7", "limits.frames-per-second=0", "destinations.user-destinations=false",
            "destinations.app-prefixes=/svc/",
        ]).configuration
        let session = configuration.session
        #expect(session.heartBeat.send == 1000 && session.heartBeat.receive == 10_000)
        #expect(session.connectTimeout == .milliseconds(3000))
        #expect(session.decoderLimits.maxFrameBytes == 1000 && session.decoderLimits.maxBodyBytes == 1000)
        #expect(session.maxSubscriptionsPerSession == 7 && session.maxFramesPerSecond == 0)
        #expect(session.userPrefix == nil && session.applicationPrefixes == ["/svc/"])
    }

    @Test func defaultsAreTheSessionDefaults() {
        let session = SwitchboardConfiguration().session
        let defaults = SessionConfiguration()
        #expect(session.heartBeat == defaults.heartBeat && session.connectTimeout == defaults.connectTimeout)
        #expect(session.decoderLimits == defaults.decoderLimits && session.maxPendingOutboundBytes == defaults.maxPendingOutboundBytes)
        #expect(session.maxSessionsPerUser == defaults.maxSessionsPerUser && session.maxBytesPerSecond == defaults.maxBytesPerSecond)
        #expect(session.userPrefix == defaults.userPrefix && session.brokerPrefixes == defaults.brokerPrefixes)
    }
}
