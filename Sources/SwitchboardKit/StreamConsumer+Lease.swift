import NIOConcurrencyHelpers
import NIOCore
import Redis
import SwitchboardWire

/// This consumer's hold on the entries of the batch it works through.
///
/// An entry read or claimed by a consumer can be taken over by another replica once it was idle
/// (not delivered, claimed or renewed) for `claimMinIdle`. While a batch is processed, a renewal
/// (``StreamConsumer/renew(_:on:)``) resets the idle time of the entries not yet finished, every
/// `claimMinIdle / 3`, but only of those still pending for this consumer: it never takes an entry
/// back from another one. An entry whose hold was last renewed less than `claimMinIdle / 2` ago
/// is this consumer's for sure; otherwise the hold is renewed before the entry is handled, and an
/// entry lost meanwhile is skipped.
///
/// Renewal pauses while one handler call has run for `claimMinIdle` or longer, so a stuck handler
/// does not hold its batch forever: the other entries, and the stuck one, become claimable.
final class BatchLease: Sendable {
    struct State {
        /// Entries not finished yet (the one being handled included).
        var remaining: [String]
        /// Delivery count of each entry still pending for this consumer.
        var owned: [String: Int]
        /// When the request behind `owned` was sent: no other consumer can have claimed an owned
        /// entry before `renewedAt + claimMinIdle`.
        var renewedAt: ContinuousClock.Instant
        var handlerStartedAt: ContinuousClock.Instant?
    }

    let state: NIOLockedValueBox<State>
    /// Whether the delivery counted each entry's attempt already (`XREADGROUP … >`: the first);
    /// otherwise (entries taken again) an attempt is counted before each handler call.
    let counted: Bool

    init(ids: [String], owned: [String: Int], renewedAt: ContinuousClock.Instant, counted: Bool = false) {
        self.state = NIOLockedValueBox(State(remaining: ids, owned: owned, renewedAt: renewedAt))
        self.counted = counted
    }

    /// A batch just delivered by `XREADGROUP … >`, requested at `readAt`: each entry's first delivery.
    convenience init(newlyRead ids: [String], readAt: ContinuousClock.Instant) {
        self.init(ids: ids, owned: Dictionary(ids.map { ($0, 1) }, uniquingKeysWith: { a, _ in a }), renewedAt: readAt, counted: true)
    }

    func isFresh(at now: ContinuousClock.Instant, within age: Duration) -> Bool {
        self.state.withLockedValue { now - $0.renewedAt < age }
    }

    func deliveries(of id: String) -> Int? { self.state.withLockedValue { $0.owned[id] } }

    var remaining: [String] { self.state.withLockedValue { $0.remaining } }

    /// The entries to renew now, or `[]` while a handler call has been running for `limit` or more.
    func idsToRenew(at now: ContinuousClock.Instant, handlerLimit limit: Duration) -> [String] {
        self.state.withLockedValue { state in
            if let started = state.handlerStartedAt, now - started >= limit { return [] }
            return state.remaining
        }
    }

    func renewed(_ owned: [String: Int], requestedAt: ContinuousClock.Instant) {
        self.state.withLockedValue { state in
            state.owned = owned
            state.renewedAt = requestedAt
        }
    }

    func handlerStarted(at now: ContinuousClock.Instant) {
        self.state.withLockedValue { $0.handlerStartedAt = now }
    }

    /// The entry is done with (acknowledged, dead-lettered, skipped or left for a retry).
    func finished(_ id: String) {
        self.state.withLockedValue { state in
            state.handlerStartedAt = nil
            if let index = state.remaining.firstIndex(of: id) { state.remaining.remove(at: index) }
        }
    }
}

extension StreamConsumer {
    /// How often the hold on a batch's entries is renewed.
    var renewalInterval: Duration { max(self.configuration.claimMinIdle / 3, .milliseconds(10)) }

    /// Renews the hold on `ids` that are still pending for this consumer (one `EVAL`: `XPENDING`
    /// per entry, then `XCLAIM … 0 … JUSTID` of the owned ones, which resets their idle time and
    /// keeps their delivery count). Returns the lease of the entries still owned.
    ///
    /// - Parameter connection: the reading connection; nil: the client's (a renewal goes on while
    ///   the reading connection is lost, see ``keepRenewing(_:on:)``).
    @discardableResult
    func renew(_ ids: [String], on connection: RedisConnection?, lease: BatchLease? = nil) async throws -> BatchLease {
        let requestedAt = ContinuousClock.now
        var owned: [String: Int] = [:]
        if !ids.isEmpty {
            let configuration = self.configuration
            let command = EVAL(
                script: Self.renewScript, keys: [configuration.stream],
                arguments: [.string(configuration.group), .string(configuration.consumerName)] + ids.map { RedisArgument.string($0) }
            )
            let reply: RESPToken
            if let connection { reply = try await connection.execute(command) } else { reply = try await self.redis.execute(command) }
            let flat = try [String](fromRESP: reply)
            var index = 0
            while index + 1 < flat.count {
                owned[flat[index]] = Int(flat[index + 1]) ?? 1
                index += 2
            }
        }
        if let lease {
            lease.renewed(owned, requestedAt: requestedAt)
            return lease
        }
        return BatchLease(ids: ids, owned: owned, renewedAt: requestedAt)
    }

    /// Renews `lease` every ``renewalInterval`` until cancelled. A renewal that fails on the
    /// reading connection (lost while a handler runs: its failure shows only at the entry's
    /// `XACK`) is made on the client's connection, which reconnects by itself: the handler in
    /// flight keeps its entry although the reading connection is gone. A renewal failing there
    /// too is logged; the next entry then finds the hold stale and renews it itself (and fails
    /// the batch if it can't).
    func keepRenewing(_ lease: BatchLease, on connection: RedisConnection) async {
        let clock = ContinuousClock()
        var reading: RedisConnection? = connection
        while true {
            do { try await Task.sleep(for: self.renewalInterval) } catch { return }
            let ids = lease.idsToRenew(at: clock.now, handlerLimit: self.configuration.claimMinIdle)
            if ids.isEmpty { continue }
            do {
                try await self.renew(ids, on: reading, lease: lease)
            } catch {
                if Task.isCancelled { return }
                guard reading != nil else {
                    self.logger.warning("renewing the hold on pending entries failed", metadata: ["error": "\(error)"])
                    continue
                }
                // The reading connection is gone (or failing): from now on, the client's.
                reading = nil
                do {
                    try await self.renew(ids, on: nil, lease: lease)
                } catch {
                    if Task.isCancelled { return }
                    self.logger.warning("renewing the hold on pending entries failed", metadata: ["error": "\(error)"])
                }
            }
        }
    }

    /// KEYS: stream. ARGV: group, consumer, entry IDs. Claims (resetting the idle time, keeping the
    /// delivery count) the entries still pending for this consumer; replies `id, deliveries, …`.
    ///
    /// An entry still pending for this consumer but trimmed from the stream is owned too, and not
    /// claimed (`XCLAIM` would drop it from the pending list, on Redis 7, and the consumer would
    /// skip it silently): this consumer holds its fields when it read them before the trim, and
    /// handles it; when it did not, it counts it as lost (``StreamConsumerStatistics/trimmed``).
    static let renewScript = """
        local owned = {}
        for i = 3, #ARGV do
          local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
          if #p > 0 then
            local kept = #redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i]) > 0
            if not kept or #redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID') > 0 then
              owned[#owned + 1] = ARGV[i]
              owned[#owned + 1] = tostring(p[1][4])
            end
          end
        end
        return owned
        """
}
