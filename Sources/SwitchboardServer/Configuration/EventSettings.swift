import Configuration
import SwitchboardRoutes
import SwitchboardWire

/// `events.*`: presence and lifecycle events, in a Redis Stream (Redis mode) or POSTed to a
/// webhook (`events.webhook.*`, on the embedded broker).
package struct EventSettings: Sendable, Equatable {
    /// `events.webhook.*`: where the embedded broker POSTs the events.
    package struct Webhook: Sendable, Equatable {
        package var url: String
        /// The deadline of one POST.
        package var timeoutMs = 5_000
        /// The wait before the first retry of a failed POST; doubles with each failure in a row.
        package var backoffMs = 100
        /// The longest wait between retries.
        package var backoffMaxMs = 5_000
        /// At a graceful stop, the longest wait for the queued events to be delivered.
        package var drainTimeoutMs = 5_000

        package init(url: String) { self.url = url }
    }

    package var enabled = false
    package var stream = "switchboard:events"
    package var maxLength = 100_000
    /// The event types written; empty: all.
    package var types: Set<LifecycleEventType> = []
    /// Facts queued per event loop while Redis is slow or away (events queued for the webhook,
    /// on the embedded broker); past it they are dropped.
    package var maxQueued = 10_000
    /// Most facts in one `FCALL` (events in one POST, on the embedded broker).
    package var maxBatch = 256
    package var leaseTTLMs = 5_000
    package var leaseRenewMs = 1_000
    /// How long after its lease expired a dead instance's sessions are reaped.
    package var graceMs = 0
    /// Most users listed by `GET /api/presence/{destination}`.
    package var presenceMaxUsers = 1_000
    /// Set with `events.webhook.url`.
    package var webhook: Webhook?

    package init() {}

    /// Reads the `events` scope.
    init(reader: ConfigReader) throws {
        enabled = reader.bool(forKey: "enabled", default: enabled)
        stream = reader.string(forKey: "stream", default: stream)
        guard !stream.isEmpty else { throw SwitchboardConfiguration.Invalid(description: "events.stream must not be empty") }
        maxLength = reader.int(forKey: "max-length", default: maxLength)
        let names = reader.stringArray(forKey: "types", default: [])
        var types: Set<LifecycleEventType> = []
        for name in names {
            guard let type = LifecycleEventType(rawValue: name) else {
                let known = LifecycleEventType.allCases.map(\.rawValue).joined(separator: ", ")
                throw SwitchboardConfiguration.Invalid(description: "events.types: unknown event type '\(name)' (known: \(known))")
            }
            types.insert(type)
        }
        self.types = types
        maxQueued = reader.int(forKey: "max-queued", default: maxQueued)
        maxBatch = reader.int(forKey: "max-batch", default: maxBatch)
        leaseTTLMs = reader.int(forKey: "lease-ttl-ms", default: leaseTTLMs)
        leaseRenewMs = reader.int(forKey: "lease-renew-ms", default: leaseRenewMs)
        graceMs = reader.int(forKey: "grace-ms", default: graceMs)
        presenceMaxUsers = reader.int(forKey: "presence-max-users", default: presenceMaxUsers)
        try SwitchboardConfiguration.atLeast(
            1, ("events.max-length", maxLength), ("events.max-queued", maxQueued), ("events.max-batch", maxBatch),
            ("events.lease-renew-ms", leaseRenewMs), ("events.presence-max-users", presenceMaxUsers))
        try SwitchboardConfiguration.atLeast(0, ("events.grace-ms", graceMs))
        webhook = try Self.readWebhook(reader.scoped(to: "webhook"))
        guard leaseTTLMs >= 2 * leaseRenewMs else {
            throw SwitchboardConfiguration.Invalid(
                description: "events.lease-ttl-ms must be at least twice events.lease-renew-ms, got \(leaseTTLMs) and \(leaseRenewMs)")
        }
    }

    /// Reads `events.webhook.*` (every key, so that each is known whether or not a URL is set).
    static func readWebhook(_ reader: ConfigReader) throws -> Webhook? {
        let url = reader.string(forKey: "url").flatMap { $0.isEmpty ? nil : $0 }
        var webhook = Webhook(url: url ?? "")
        webhook.timeoutMs = reader.int(forKey: "timeout-ms", default: webhook.timeoutMs)
        webhook.backoffMs = reader.int(forKey: "backoff-ms", default: webhook.backoffMs)
        webhook.backoffMaxMs = reader.int(forKey: "backoff-max-ms", default: webhook.backoffMaxMs)
        webhook.drainTimeoutMs = reader.int(forKey: "drain-timeout-ms", default: webhook.drainTimeoutMs)
        guard let url else { return nil }
        do { _ = try WebhookRoute.components(of: url) } catch {
            throw SwitchboardConfiguration.Invalid(description: "events.webhook.url: \(error)")
        }
        try SwitchboardConfiguration.atLeast(
            1, ("events.webhook.timeout-ms", webhook.timeoutMs), ("events.webhook.backoff-ms", webhook.backoffMs))
        try SwitchboardConfiguration.atLeast(0, ("events.webhook.drain-timeout-ms", webhook.drainTimeoutMs))
        guard webhook.backoffMaxMs >= webhook.backoffMs else {
            throw SwitchboardConfiguration.Invalid(
                description:
                    "events.webhook.backoff-max-ms must be at least events.webhook.backoff-ms, got \(webhook.backoffMaxMs) and \(webhook.backoffMs)")
        }
        return webhook
    }
}
