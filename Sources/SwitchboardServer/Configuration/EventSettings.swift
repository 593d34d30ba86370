import Configuration
import SwitchboardWire

/// `events.*`: presence and lifecycle events (Redis mode).
package struct EventSettings: Sendable, Equatable {
    package var enabled = false
    package var stream = "switchboard:events"
    package var maxLength = 100_000
    /// The event types written; empty: all.
    package var types: Set<LifecycleEventType> = []
    /// Facts queued per event loop while Redis is slow or away; past it they are dropped.
    package var maxQueued = 10_000
    /// Most facts in one `FCALL`.
    package var maxBatch = 256
    package var leaseTTLMs = 5_000
    package var leaseRenewMs = 1_000
    /// How long after its lease expired a dead instance's sessions are reaped.
    package var graceMs = 0
    /// Most users listed by `GET /api/presence/{destination}`.
    package var presenceMaxUsers = 1_000

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
        guard leaseTTLMs >= 2 * leaseRenewMs else {
            throw SwitchboardConfiguration.Invalid(
                description: "events.lease-ttl-ms must be at least twice events.lease-renew-ms, got \(leaseTTLMs) and \(leaseRenewMs)")
        }
    }
}
