import SwitchboardWire

/// One configuration key the gateway reads: its name, value type, default and meaning.
///
/// ``ConfigKeyCatalog`` is the one list of them: the unknown-key check, its did-you-mean
/// suggestion and `docs/configuration.md` (``ConfigKeyCatalog/markdown()``) come from it.
/// A `<name>` segment stands for each name of the list in ``namesKey``
/// (`routes.<name>.url` → `routes.greet.url` with `routes.names: [greet]`).
package struct ConfigKeySpec: Sendable {
    package enum ValueType: String, Sendable {
        case string, integer, number, boolean, list
    }

    package var key: String
    package var type: ValueType
    /// Markdown: a literal in backticks, or words (`cores`, `random`, `—` for none).
    package var defaultValue: String
    package var meaning: String
    /// Values never echoed in errors or logs.
    package var isSecret: Bool

    init(_ key: String, _ type: ValueType, _ defaultValue: String, _ meaning: String, secret: Bool = false) {
        self.key = key
        self.type = type
        self.defaultValue = defaultValue
        self.meaning = meaning
        self.isSecret = secret
    }

    static let placeholder = "<name>"

    /// The list naming the `<name>` segment (`routes.<name>.url` → `routes.names`), if any.
    package var namesKey: String? {
        guard let range = key.range(of: "." + Self.placeholder + ".") else { return nil }
        return key[..<range.lowerBound] + ".names"
    }
}

/// Every configuration key, by section.
package enum ConfigKeyCatalog {
    package struct Section: Sendable {
        package var title: String
        package var keys: [ConfigKeySpec]
    }

    package static let all: [ConfigKeySpec] = sections.flatMap(\.keys)

    package static func spec(named key: String) -> ConfigKeySpec? { all.first { $0.key == key } }

    /// The `log.levels.<subsystem>` subsystems.
    package static let logSubsystems = ["server", "session", "http", "redis", "routes"]

    package static let sections: [Section] = [
        Section(
            title: "HTTP",
            keys: [
                .init("http.host", .string, "`0.0.0.0`", "listen address"),
                .init("http.port", .integer, "`8080`", "listen port (HTTP API and WebSocket), 0…65535"),
                .init(
                    "http.api-port", .integer, "— (none)",
                    "a second listen port for the HTTP API only (publish, presence, health, metrics, console; WebSocket upgrades get 404 there), served by event loops of its own that never run fan-out, so API round trips stay short while the session loops are saturated; point backends and the load balancer's API backend at it (examples/haproxy.cfg). The API stays on `http.port` too"
                ),
                .init("http.api-threads", .integer, "`1`", "event loop threads of `http.api-port`, 1…64"),
                .init("http.max-body-bytes", .integer, "`1048576`", "largest API request body (413 beyond)"),
                .init("http.max-batch-items", .integer, "`1000`", "most notifications in one `POST /api/notifications` (413 beyond)"),
                .init(
                    "http.max-publish-bytes", .integer, "`67108864`",
                    "bytes of API publishes in flight (accepted and not answered yet: waiting for Redis, for the fan-out backlog) on the whole instance, counted per message (body, destination, headers, 256 bytes more); past it a publish is answered 503 at once and not published (a batch is counted whole: all its items are taken, or all get a 503 result), so a retry is safe. With none in flight one is always taken. 0: no bound"
                ),
                .init("http.backlog", .integer, "`4096`", "TCP accept backlog"),
                .init(
                    "http.max-connections", .integer, "`10000`",
                    "plain-HTTP (API) connections open on each listening port (`http.port`, `http.api-port`; WebSocket sessions count against `limits.max-connections` instead); past it a new one is answered 503 JSON and closed, except a health check (`GET /health…`), which may take one of 16 more places: answered once, then closed. 0: no limit"
                ),
                .init(
                    "http.tcp-nodelay", .boolean, "`true`",
                    "`TCP_NODELAY` on accepted connections (Nagle only while a loop is in busy mode, `server.busy-percent`): every write leaves at once (lowest latency). `false` lets the kernel's Nagle algorithm hold small writes while earlier data is unacknowledged, always: 20–40 % less CPU per fan-out delivery and 2.4× the saturation throughput in our benchmark (docs/benchmarks.md), at the price of up to one delayed-ACK interval (40 ms on Linux, 200 ms on Windows clients) on busy connections; nginx/nchan runs its WebSockets this way"
                ),
                .init("http.nagle-when-busy-percent", .integer, "—", "the old name of `server.busy-percent`, read when that is not set"),
                .init(
                    "http.handshake-timeout-ms", .integer, "`10000`",
                    "a connection must complete its first request (upgrade or API call) in time, and every HTTP request its head and body, "
                        + "plus 1 s per 500 bytes of body read (slowloris); else it is closed"
                ),
                .init("http.idle-timeout-ms", .integer, "`60000`", "idle keep-alive HTTP connections are closed"),
                .init("http.allowed-origins", .list, "`[]` (any)", "allowed browser origins (WebSocket and CORS)"),
                .init("http.tls.certificate-file", .string, "—", "PEM certificate chain; with `http.tls.key-file` the port speaks TLS only (https://, wss://)"),
                .init("http.tls.key-file", .string, "—", "PEM private key, set together with `http.tls.certificate-file`", secret: true),
            ]),
        Section(
            title: "STOMP",
            keys: [
                .init("stomp.path", .string, "`/stomp`", "WebSocket endpoint path"),
                .init("stomp.heartbeat.send-ms", .integer, "`10000`", "server heart-beat offer `sx`: it can send every sx ms (0: never)"),
                .init("stomp.heartbeat.receive-ms", .integer, "`10000`", "server heart-beat offer `sy`: it wants client data every sy ms (0: never)"),
                .init("stomp.heartbeat.tolerance", .number, "`2.0`", "a client silent for tolerance × the negotiated interval is closed (≥ 1)"),
                .init(
                    "stomp.heartbeat.resolution-ms", .integer, "`250`",
                    "tick of the shared per-event-loop heart-beat timer (a timing wheel: a session is visited only when its next heart-beat, read timeout, token expiry or CONNECT deadline is due; ≥ 10)"
                ),
                .init("stomp.connect-timeout-ms", .integer, "`10000`", "a connection that sends no `CONNECT` in time is closed"),
            ]),
        Section(
            title: "Limits",
            keys: [
                .init("limits.max-frame-bytes", .integer, "`262144`", "largest STOMP frame (headers + body)"),
                .init("limits.max-headers", .integer, "`64`", "most header lines in a frame"),
                .init("limits.max-header-line-bytes", .integer, "`8192`", "longest header line"),
                .init(
                    "limits.max-header-bytes", .integer, "`65536`",
                    "largest header block (command and all headers); plus 4 KiB, what a connection may send before its `CONNECT` frame is read"),
                .init("limits.max-body-bytes", .integer, "`limits.max-frame-bytes`", "largest body"),
                .init("limits.max-subscriptions", .integer, "`256`", "subscriptions per session"),
                .init("limits.max-pending-bytes", .integer, "`4194304`", "outbound bytes queued for one connection before it is a slow consumer"),
                .init(
                    "limits.max-pending-bytes-total", .integer, "half the memory (the machine's, or the cgroup's limit)",
                    "outbound bytes not yet taken by all connections together; past it (checked every second) each event loop closes its connections falling behind (holding 64 KiB or more, and no less outstanding, the kernel's unsent bytes counted, than a second before), those holding the most first, as slow consumers, until its share of the excess is shed; `0`: no cap"
                ),
                .init(
                    "limits.replay-stall-timeout-ms", .integer, "`10000`",
                    "a resume's replay is written as the socket drains; a connection that takes not one chunk (64 KiB, or a quarter of limits.max-pending-bytes) of it for this long is a slow consumer (the replay is held in memory meanwhile)"
                ),
                .init("limits.max-transaction-frames", .integer, "`1000`", "frames held in one transaction"),
                .init(
                    "limits.max-transaction-bytes", .integer, "`4194304`",
                    "bytes (bodies' storage, headers, 320 per frame and 32 per header) held by one session's open transactions together"),
                .init("limits.max-connections", .integer, "`100000`", "WebSocket connections per instance (429)"),
                .init(
                    "limits.max-connections-per-ip", .integer, "`10000`",
                    "per client address (429); an IPv6 client per `limits.ipv6-prefix-length` prefix"),
                .init(
                    "limits.max-pending-connections-per-ip", .integer, "`limits.max-connections-per-ip`",
                    "connections from one address still in their first request (TCP or TLS handshake, request not in); past it closed at accept "
                        + "(lower it where clients connect directly, not through a proxy), `0`: no limit"),
                .init(
                    "limits.ipv6-prefix-length", .integer, "`64`",
                    "the per-address limits count an IPv6 client by its first this many bits (its /64: one holder has 2^64 addresses); `128`: each address, 1 to 128"),
                .init("limits.max-sessions-per-user", .integer, "`100`", "per authenticated user, per instance"),
                .init(
                    "limits.frames-per-second", .integer, "`2000`",
                    "per connection, token bucket (burst 2×); frames that waited unread while the server held reads back are allowed at the rate over that wait (at most 5 s worth)"
                ),
                .init(
                    "limits.bytes-per-second", .integer, "`4194304`",
                    "inbound bytes per connection (each WebSocket frame counts 64 bytes on top of its payload), token bucket (burst 2×, and at least one frame of `limits.max-frame-bytes`)"
                ),
            ]),
        Section(
            title: "Destinations",
            keys: [
                .init("destinations.broker-prefixes", .list, "`[/topic/]`", "broker destination prefixes"),
                .init("destinations.app-prefixes", .list, "`[/app/]`", "application destination prefixes"),
                .init("destinations.user-destinations", .boolean, "`true`", "`/user/...` subscriptions"),
                .init("destinations.user-destination-prefixes", .list, "`[/queue/]`", "what may follow `/user`"),
            ]),
        Section(
            title: "History and resume",
            keys: [
                .init(
                    "history.enabled", .boolean, "`true`",
                    "keep a history per destination (in memory on the embedded broker, in Redis in Redis mode: see docs/recovery.md) that `SUBSCRIBE` with `x-resume-from` or `x-last` replays; every delivery carries `x-position`"
                ),
                .init("history.max-length", .integer, "`100`", "messages kept per destination"),
                .init("history.ttl-ms", .integer, "`300000`", "messages older than this are dropped from history"),
                .init(
                    "history.max-destinations", .integer, "`10000`",
                    "destinations with a history on the embedded broker (a `SUBSCRIBE` creates one too); beyond it, a hundredth of them is dropped: those holding no message first, then those published to least recently (a dropped destination's next message starts a new epoch). Expired messages are dropped every 2 s, also of idle destinations. In Redis mode a destination's keys expire instead: the log `ttl` after its last publish, the sequence a day after"
                ),
                .init(
                    "history.max-bytes", .integer, "`268435456`",
                    "bytes of history kept over every destination on the embedded broker (bodies' storage, headers and 256 bytes per message); past it the oldest messages over all destinations are dropped, down to nine tenths, (a resume from a dropped position gets `x-recovered:false`). In Redis mode Redis's `maxmemory` bounds it"
                ),
                .init("history.disabled-prefixes", .list, "`[]`", "destinations starting with one of these keep no history (e.g. `[/topic/ticks.]`)"),
                .init("history.windows.names", .list, "`[]`", "names of other history windows, by destination prefix"),
                .init("history.windows.<name>.prefix", .string, "—", "destinations starting with it (as clients name them) use this window; the longest matching prefix wins"),
                .init("history.windows.<name>.max-length", .integer, "`history.max-length`", "messages kept per destination in this window"),
                .init("history.windows.<name>.ttl-ms", .integer, "`history.ttl-ms`", "time to live in this window"),
            ]),
        Section(
            title: "`/app` routes",
            keys: [
                .init("routes.names", .list, "`[]`", "names of the `/app` routes below"),
                .init("routes.<name>.destination", .string, "—", "application destination or wildcard pattern, e.g. `/app/greet`, `/app/chat.**`"),
                .init("routes.<name>.type", .string, "`webhook`", "`webhook`, `redis-stream` or `redis-pubsub`"),
                .init("routes.<name>.url", .string, "—", "`webhook`: the URL (`http://` or `https://`)"),
                .init("routes.<name>.timeout-ms", .integer, "`5000`", "`webhook`: deadline (connect + request + reply)"),
                .init("routes.<name>.stream", .string, "—", "`redis-stream`: target stream"),
                .init("routes.<name>.max-length", .integer, "`100000`", "`redis-stream`: `XADD MAXLEN ~ n`"),
                .init("routes.<name>.groups", .list, "`[]`", "`redis-stream`: consumer groups created at start-up (`MKSTREAM`; an existing group is fine)"),
                .init(
                    "routes.<name>.wait-replicas", .integer, "`redis.wait-replicas`",
                    "`redis-stream`: the replicas that must acknowledge an entry before its `RECEIPT` (0: the primary alone); overrides `redis.wait-replicas` for this route"
                ),
                .init("routes.<name>.channel", .string, "—", "`redis-pubsub`: `PUBLISH` channel"),
                .init(
                    "routes.<name>.require-subscriber", .boolean, "`false`",
                    "`redis-pubsub`: a `PUBLISH` that reached no subscriber is an `ERROR` (the session closes), not a `RECEIPT`; single server and Sentinel only (subscribers on replicas are not counted)"
                ),
                .init("webhooks.tls.ca-file", .string, "system trust roots", "PEM file of the CAs trusted for `https://` webhooks"),
                .init(
                    "webhooks.max-connections-per-host", .integer, "`64`",
                    "webhook calls in flight, so keep-alive connections, per backend (a hard limit); calls beyond it wait for a free one within their deadline, then fail unsent"),
                .init(
                    "webhooks.idle-timeout-ms", .integer, "`4000`",
                    "a pooled connection idle this long is closed; keep it below the backends' keep-alive timeout (Node's default is 5 s)"),
                .init("webhooks.max-reply-bytes", .integer, "`1048576`", "a larger webhook reply fails the `SEND`"),
            ]),
        Section(
            title: "Redis",
            keys: [
                .init(
                    "redis.url", .string, "unset (embedded broker)",
                    "`redis://[user:password@]host[:port][/db]` (`rediss://` for TLS, `user:` for an ACL user); Redis mode is on when set (a password in it is not echoed in errors)"
                ),
                .init("redis.channel-prefix", .string, "`switchboard:`", "prefix of the gateway's own channels and keys, without `{` or `}`"),
                .init("redis.command-timeout-ms", .integer, "`2000`", "a command not answered in time fails (and its connection is reset)"),
                .init(
                    "redis.canary-interval-ms", .integer, "`1000`",
                    "the delivery canary: each instance publishes one on `<prefix>canary` (on a Redis Cluster, on every shard) this often and watches it come back through its subscriber connection; 0: off"
                ),
                .init(
                    "redis.canary-timeout-ms", .integer, "`3000`",
                    "an instance whose newest own canary back was sent longer ago than this is not ready (`/health/ready` 503 with the reason): Redis stalled, or the subscriber path is broken or late; at least twice `redis.canary-interval-ms`"
                ),
                .init(
                    "redis.connection-per-loop", .boolean, "`true`",
                    "a command connection per event loop besides the shared one: a session's or request's commands and their replies stay on its loop (no thread hop); the shared connection takes over while a loop's is down"
                ),
                .init(
                    "redis.appendfsync-always", .boolean, "`false`",
                    "say so when every Redis primary runs with `appendonly yes` and `appendfsync always` (it loses nothing it acknowledged when it restarts): history then keeps its positions across a Redis restart. Otherwise the first use of a destination after a restart moves its sequence ahead by 1,000,000, as after a failover, so positions lost with the writes an RDB snapshot or `appendfsync everysec` did not keep are never issued again (subscribers see the hole, a resume across it is `x-recovered: false`)"
                ),
                .init("redis.connect-timeout-ms", .integer, "`2000`", "connect deadline; reconnects back off exponentially with jitter"),
                .init(
                    "redis.reconnect-wait-ms", .integer, "`1000`",
                    "while the command connection reconnects (after a `CLIENT KILL`, a restart or a failover), a command (a publish, a stream route's `XADD`), or one the closing connection could not write (Redis never got it), waits this long for it, in all however many connections fail to write it, and is sent, in order, once it is back; past it the publish fails (`503`/`ERROR`, not published), and so does every command held behind it (none is sent after an earlier one was refused). At most 10,000 commands wait; more fail at once. 0: fail at once. With a Redis Cluster, a node's commands wait for its connection, and are retried, up to `redis.command-timeout-ms`"
                ),
                .init(
                    "redis.subscriber-ping-interval-ms", .integer, "`5000`",
                    "the subscriber connections (and a sentinel watch) write nothing of their own, so a Redis gone without closing the connection (a power loss, a partition) would look connected and deliver nothing: one that received nothing for this long sends `PING`, and when nothing at all arrives within `redis.command-timeout-ms` (a reply, an error reply, a message) it is closed (it reconnects, subscribes again, and history repairs what it missed). Not while its reads are paused for the fan-out backlog. 0: never"
                ),
                .init(
                    "redis.unreachable-wait-ms", .integer, "`5000`",
                    "while Redis is unreachable, a client's step that needs it waits this long for Redis to be back, then fails with an `ERROR` saying so: a `SUBSCRIBE` to a destination with history (its position and any replay are read there) and, with `events.enabled`, a `CONNECT` or a receipted `SUBSCRIBE` (their facts are stored there); 0: they fail at once (once the command has waited `redis.reconnect-wait-ms` for a reconnecting connection)"
                ),
                .init(
                    "redis.wait-replicas", .integer, "`0`",
                    "an `/app` message routed to a Redis Stream (`redis-stream`) gets its `RECEIPT` only once this many replicas acknowledged the entry (`WAIT`, on connections of their own); fewer within `redis.wait-replicas-timeout-ms`: an `ERROR` saying so (the primary has the entry, a failover may lose it). 0: the `RECEIPT` once the primary stored it. Per route: `routes.<name>.wait-replicas`"
                ),
                .init(
                    "redis.wait-replicas-timeout-ms", .integer, "`1000`",
                    "with `redis.wait-replicas`: how long a write waits for its replicas before it fails"
                ),
                .init("redis.tls.ca-file", .string, "system trust roots", "with `rediss://`: PEM file of the CAs trusted to sign the server's certificate"),
                .init(
                    "redis.tls.cert-file", .string, "—",
                    "with `rediss://`: PEM client certificate chain for servers that require one (mTLS, `tls-auth-clients yes`); set together with `redis.tls.key-file`"),
                .init("redis.tls.key-file", .string, "—", "PEM private key of `redis.tls.cert-file`"),
                .init(
                    "redis.tls.verify-server-name", .boolean, "`true`",
                    "check that the server's certificate names the host (or `redis.tls.server-name`); `false` still verifies the certificate chain"),
                .init("redis.tls.server-name", .string, "the URL's host", "name sent in SNI and expected in the server's certificate (SNI is not sent for an IP address)"),
                .init(
                    "redis.sentinel.nodes", .list, "`[]`",
                    "Redis Sentinel: the sentinels (`host:port`) asked for the primary of `redis.sentinel.master-name`; with them the host and port of `redis.url` are not used (its scheme, user, password and database are), and the gateway follows failovers (`+switch-master`)"
                ),
                .init("redis.sentinel.master-name", .string, "—", "the monitored primary's name (`sentinel monitor <name> …`); required with `redis.sentinel.nodes`"),
                .init("redis.sentinel.username", .string, "—", "ACL user for the sentinels themselves, if they require one"),
                .init("redis.sentinel.password", .string, "—", "password for the sentinels themselves (their `requirepass`), if any"),
                .init(
                    "redis.cluster.nodes", .list, "`[]`",
                    "Redis Cluster: seed nodes (`host:port`) asked for the slot map; with them the host and port of `redis.url` are not used (its scheme — `rediss://` is TLS to every node —, user and password are; database must be 0). Destinations use sharded Pub/Sub; wildcard subscriptions and `events.enabled` are not available (see docs/scaling.md)"
                ),
                .init("redis.inbound.names", .list, "`[]`", "inbound routes (backend → browsers)"),
                .init(
                    "redis.inbound.<name>.type", .string, "`channel`",
                    "`channel` (payload = body, byte for byte), `broadcast` (`{\"topic\",\"message\"}` JSON), `stream` (entries with `topic` and `message` fields)"),
                .init("redis.inbound.<name>.channel", .string, "—", "Pub/Sub channel (`channel`, `broadcast`)"),
                .init("redis.inbound.<name>.destination", .string, "—", "destination for a `channel` route, e.g. `/topic/greetings`"),
                .init("redis.inbound.<name>.stream", .string, "—", "stream for a `stream` route"),
            ]),
        Section(
            title: "Presence and lifecycle events",
            keys: [
                .init(
                    "events.enabled", .boolean, "`false`",
                    "keep presence and emit lifecycle events (docs/lifecycle.md): in Redis mode to a Redis Stream, with presence in Redis; on the embedded broker (no `redis.url`) POSTed to `events.webhook.url`, with presence in process"
                ),
                .init("events.stream", .string, "`switchboard:events`", "Redis mode: the events stream"),
                .init("events.max-length", .integer, "`100000`", "Redis mode: `XADD MAXLEN ~` of the events stream"),
                .init(
                    "events.types", .list, "all",
                    "event types written: `connected`, `disconnected`, `subscribed`, `unsubscribed`, `user-online`, `user-offline`, `destination-occupied`, `destination-vacated` (presence is kept whatever the list)"
                ),
                .init(
                    "events.max-queued", .integer, "`10000`",
                    "facts queued per event loop while Redis is slow or unreachable (embedded broker: events queued for the webhook, one queue per instance); past it new ones are dropped and counted (`switchboard_lifecycle_facts_dropped_total`)"
                ),
                .init("events.max-batch", .integer, "`256`", "most facts in one pipelined `FCALL` (embedded broker: most events in one POST)"),
                .init(
                    "events.lease-ttl-ms", .integer, "`5000`",
                    "Redis mode: the instance's lease in Redis expires this long after its last renewal (at least twice `events.lease-renew-ms`)"),
                .init("events.lease-renew-ms", .integer, "`1000`", "Redis mode: how often the lease is renewed and expired instances are looked for"),
                .init(
                    "events.grace-ms", .integer, "`0`",
                    "Redis mode: extra time after a lease expired before the dead instance's sessions become `disconnected(node-lost)` (absorbs flapping)"),
                .init("events.presence-max-users", .integer, "`1000`", "most users listed by `GET /api/presence/{destination}`"),
                .init(
                    "events.webhook.url", .string, "—",
                    "embedded broker only (refused with `redis.url`): with `events.enabled`, the events are POSTed here as JSON arrays, one batch per POST, at least once (`http://` or `https://`; the `webhooks.*` client settings apply)"
                ),
                .init("events.webhook.timeout-ms", .integer, "`5000`", "deadline of one events POST (connect + request + reply); a later reply counts as a failure"),
                .init(
                    "events.webhook.backoff-ms", .integer, "`100`",
                    "wait before retrying a failed events POST (not 2xx, timeout, connection error); doubles with each failure in a row. The batch is retried unchanged until it succeeds, later events queue behind it; only a batch rejected with a 4xx other than 408/425/429 five times in a row is dropped (logged, `switchboard_lifecycle_events_rejected_total`)"
                ),
                .init("events.webhook.backoff-max-ms", .integer, "`5000`", "longest wait between two attempts (at least `events.webhook.backoff-ms`)"),
                .init(
                    "events.webhook.drain-timeout-ms", .integer, "`5000`",
                    "at a graceful stop, how long the gateway waits for queued events (the sessions' `disconnected` with reason `drain` among them) to be delivered"
                ),
            ]),
        Section(
            title: "Authentication and access",
            keys: [
                .init("auth.jwt.hmac-secret", .string, "—", "HS256 secret", secret: true),
                .init("auth.jwt.public-key-files", .list, "`[]`", "PEM public keys or certificates (RSA → RS256, P-256 → ES256)"),
                .init("auth.jwt.jwks-file", .string, "—", "JWKS JSON file"),
                .init("auth.jwt.claims", .list, "`[]`", "claims kept on the session (e.g. `roles`)"),
                .init("auth.jwt.audience", .string, "—", "required `aud`"),
                .init("auth.jwt.issuer", .string, "—", "required `iss`"),
                .init("auth.jwt.leeway-seconds", .integer, "`30`", "clock skew allowed on `exp`/`nbf`"),
                .init("auth.allow-anonymous", .boolean, "`true` without keys, `false` with", "sessions without a token"),
                .init("auth.handshake-cookie", .string, "`access_token`", "cookie read at the handshake (from a browser only when `http.allowed-origins` lists origins)"),
                .init("auth.rules.subscribe", .list, "`[]`", "subscribe access rules (empty: all allowed)"),
                .init("auth.rules.send", .list, "`[]`", "send access rules (empty: all allowed)"),
                .init(
                    "auth.rules.presence", .list, "`[]`",
                    "where `x-presence: true` on SUBSCRIBE gets join/leave notices (empty: nowhere; needs `events.enabled`)"),
                .init("auth.api-keys.names", .list, "`[]`", "API key names"),
                .init("auth.api-keys.<name>.sha256", .string, "—", "SHA-256 (hex) of the key (`switchboard --hash-api-key KEY` prints it)"),
                .init("auth.api-keys.<name>.scopes", .list, "broker prefixes", "destination prefixes the key may publish to (at a `/` or `.` boundary)"),
            ]),
        Section(
            title: "Server",
            keys: [
                .init(
                    "instance.id", .string, "random",
                    "instance id, prefix of message and session ids (then followed by the process's own token); 1 to 255 printable ASCII characters without spaces or any of `~ { } * ? [ ]`"
                ),
                .init("server.threads", .integer, "cores", "event loop threads"),
                .init(
                    "server.shutdown-grace-ms", .integer, "`5000`",
                    "how long shutdown waits for sessions to close (those still busy with a step are then closed without its receipt), then for HTTP connections' answers owed"
                ),
                .init("server.drain-delay-ms", .integer, "`1000`", "not-ready time before sessions are told to reconnect"),
                .init(
                    "server.write-coalesce-us", .integer, "`0`",
                    "flush passes of one event loop below saturation are at least this far apart (0…100000), so a connection gets several messages per `write` at the price of up to this much delay; an isolated message is never delayed. `0`: each batch is flushed as soon as the deliveries already queued on the loop have run (a saturated loop spaces its passes by `server.write-coalesce-busy-us` anyway)"
                ),
                .init(
                    "server.write-coalesce-busy-us", .integer, "`10000`",
                    "the spacing of flush passes of an event loop in busy mode (0…100000, at least `server.write-coalesce-us`)"),
                .init(
                    "server.busy-percent", .integer, "`50`",
                    "when an event loop is saturated — for 3 windows of 100 ms in a row (one, if it left busy mode less than 10 s ago) its thread is on the CPU at least this share of the time, or never once waits for work (which also catches loops that cannot get a whole core: more `server.threads` than cores, a CPU quota, busy neighbours) — it enters **busy mode**: its flush passes are spaced by `server.write-coalesce-busy-us` and, with `http.tcp-nodelay`, its connections switch to Nagle (several messages per TCP segment). Saturated, latency is queueing delay anyway; both cut the CPU per delivery severalfold. Back to normal after 5 windows below half of it, at once after an idle spell, or by a retry after 5 s while the loop is no longer saturated (the wait doubles, up to 60 s, while retries fail). `0`: never. Read from `http.nagle-when-busy-percent` (its old name) when not set"
                ),
                .init(
                    "server.max-fanout-backlog-bytes", .integer, "`67108864`",
                    "messages one event loop may have queued for delivery (handed over by the other loops or by Redis, not delivered yet; bodies plus 256 bytes each) before **publishes through this instance wait**: while a loop's backlog is over it, a STOMP `SEND` to a broker destination (its `RECEIPT` and the session's next frames), a backend's broadcast replies to an `/app` `SEND` (its `RECEIPT` too) and an HTTP publish wait until every backlog is under it again, so publishers slow down to what the instance delivers. In Redis mode the instance also stops reading messages from its Redis subscriber connections meanwhile (the replies to its own commands are still read): messages from other instances wait in Redis (past Redis's `client-output-buffer-limit pubsub` Redis drops the connection, and the resubscription reads the gap from history). `0`: no limit"
                ),
                .init(
                    "server.publish-admission-timeout-ms", .integer, "`10000`",
                    "how long a publish waits for the fan-out backlog (`server.max-fanout-backlog-bytes`); then it is refused, nothing published: a STOMP session gets an `ERROR` (`gateway overloaded: …`; for a backend's reply, that the backend accepted the message but its reply was not published) and closes, an HTTP publish gets a `503` JSON error (`gateway overloaded: …`; a batch item, its own 503 result)"
                ),
                .init("console.enabled", .boolean, "`true`", "serve the console"),
                .init("console.path", .string, "`/console`", "where"),
            ]),
        Section(
            title: "Logs",
            keys: [
                .init("log.level", .string, "`info`", "`trace`, `debug`, `info`, `notice`, `warning`, `error` or `critical`"),
                .init("log.format", .string, "`text`", "`text` or `json` (one object per line)"),
            ]
                + logSubsystems.map {
                    .init("log.levels.\($0)", .string, "`log.level`", "level of the `switchboard.\($0)` logs")
                }),
    ]

    /// `docs/configuration.md`: every key by section (`switchboard --configuration-reference`
    /// prints it; a test fails when the committed file differs).
    package static func markdown() -> String {
        var out = """
            # Configuration reference

            Generated from `ConfigKeyCatalog` (Sources/SwitchboardServer/Configuration/ConfigKeyCatalog.swift) by
            `switchboard --configuration-reference > docs/configuration.md`; do not edit by hand.

            Settings come from, weakest first: defaults, a YAML file (`--config file.yaml`),
            environment variables (`SWITCHBOARD_` plus the key in upper case with `.` and `-` as `_`,
            e.g. `SWITCHBOARD_STOMP_HEARTBEAT_SEND_MS=5000`), and flags (`--set key=value`; `--host`,
            `--port`, `--stomp-path`, `--log-level` are shortcuts). Lists are YAML sequences, or
            comma-separated in environment variables and flags. A `<name>` segment stands for each
            name of the section's `names` list.

            An unknown key in the YAML file or in `--set`, a value of the wrong type and a value out
            of range stop start-up with an error naming the key (and, for an unknown key, the closest
            known one: `unknown key redis.ulr; did you mean redis.url?`). An unknown `SWITCHBOARD_*`
            environment variable is logged as a warning at start-up (except `SWITCHBOARD_BIN` and
            `SWITCHBOARD_BENCH_BIN`, which the test and benchmark scripts read).

            """
        for section in sections {
            out += "\n## \(section.title)\n\n| key | type | default | meaning |\n| --- | --- | --- | --- |\n"
            for spec in section.keys {
                out += "| `\(spec.key)` | \(spec.type.rawValue) | \(spec.defaultValue) | \(spec.meaning) |\n"
            }
        }
        return out
    }
}
