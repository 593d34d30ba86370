import SwitchboardWire
import Synchronization

/// The instance's bound on HTTP API publishes in flight (`http.max-publish-bytes`): the bytes
/// of the messages accepted and not yet answered, on every API connection and port together.
///
/// Each connection answers at most 256 requests at a time, and each body is at most
/// `http.max-body-bytes`, but many connections times that had no bound: publishes waiting for
/// Redis (a reconnect, a failover: up to `redis.reconnect-wait-ms`) or for the fan-out backlog
/// (up to `server.publish-admission-timeout-ms`) kept their bodies meanwhile. Past the bound a
/// publish is answered `503` at once, not published, and the caller retries later.
///
/// A publish is counted from its admission until its answer is decided. With nothing in
/// flight one publish is always admitted, whatever its size, so the bound never refuses
/// everything.
final class PublishBytesBudget: Sendable {
    /// 0: no bound.
    let limit: Int
    private let used = Atomic<Int>(0)
    private let refusals = Atomic<Int>(0)

    init(limit: Int) {
        self.limit = limit
    }

    /// Bytes of publishes in flight.
    var inFlight: Int { used.load(ordering: .relaxed) }

    /// Publishes refused for the bound.
    var refusedCount: Int { refusals.load(ordering: .relaxed) }

    /// Counts `bytes` in, or returns `false` (counting a refusal) when they would take the
    /// total past ``limit`` and something is in flight already.
    func reserve(_ bytes: Int) -> Bool {
        // No bound: no shared counter touched on every publish.
        guard limit > 0 else { return true }
        var current = used.load(ordering: .relaxed)
        while true {
            if current > 0, bytes > limit - current {
                refusals.add(1, ordering: .relaxed)
                return false
            }
            let (exchanged, original) = used.compareExchange(expected: current, desired: current + bytes, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
    }

    /// Counts out `bytes` reserved before.
    func release(_ bytes: Int) {
        guard limit > 0 else { return }
        used.subtract(bytes, ordering: .relaxed)
    }

    /// What a publish of `message` counts: its body, destination and headers, and a fixed part
    /// for the rest of what it holds (the answer, the command, the futures).
    static func cost(of message: PublishedMessage) -> Int {
        var bytes = 256 + message.body.readableBytes + message.destination.utf8.count
        for header in message.headers { bytes += header.name.utf8.count + header.value.utf8.count + 32 }
        return bytes
    }
}
