import Logging
import NIOCore
import Redis
import SwitchboardWire

extension StreamConsumer {
    /// Handles `entries` in order: acknowledges successes, dead-letters exhausted entries and
    /// leaves failures pending, each until its retry is due
    /// (``StreamConsumerConfiguration/delayBeforeRetry(afterAttempt:)``; an entry taken again before
    /// then is left as it is). Stops early (leaving the rest pending) when a stop was requested.
    /// Renews `lease` meanwhile, so no other replica takes these entries over while this one is
    /// alive and its handler calls end within `claimMinIdle` (see ``BatchLease``).
    ///
    /// - Parameter lease: the entries still pending for this consumer, with their delivery
    ///   counts; an entry not in it (acknowledged or taken over meanwhile) is skipped.
    /// - Returns: when the first entry left pending for a retry is due, if any.
    func process(
        _ entries: [RedisStreamEntry], lease: BatchLease, on connection: RedisConnection, _ handler: @escaping Handler
    ) async throws -> ContinuousClock.Instant? {
        // Unstructured, like the handler call: cancelling `run` must not stop the renewal while
        // the handler in flight finishes (another replica could take its entry over meanwhile).
        let renewal = Task { await self.keepRenewing(lease, on: connection) }
        defer { renewal.cancel() }
        var firstNotStarted = 0
        do {
            return try await self.processEntries(entries, lease: lease, on: connection, firstNotStarted: &firstNotStarted, handler)
        } catch {
            // The session ends (a lost connection, most often): the entries of a batch read by
            // `XREADGROUP … >` whose handler did not start keep the attempt it counted until
            // the next session gives it back, before it takes them again. Else, with Redis
            // restarted meanwhile, they reached the dead-letter limit unattempted.
            if lease.counted, firstNotStarted < entries.count { self.keepAttemptsToGiveBack(entries[firstNotStarted...].map(\.id)) }
            throw error
        }
    }

    private func processEntries(
        _ entries: [RedisStreamEntry], lease: BatchLease, on connection: RedisConnection, firstNotStarted: inout Int, _ handler: @escaping Handler
    ) async throws -> ContinuousClock.Instant? {
        let configuration = self.configuration
        var due: ContinuousClock.Instant?
        for (index, entry) in entries.enumerated() {
            firstNotStarted = index
            if self.isStopRequested {
                if lease.counted {
                    let ids = entries[index...].map(\.id)
                    // Failed on both connections: given back at the stop, once more.
                    if !(await self.uncount(ids, on: connection)) { self.keepAttemptsToGiveBack(ids) }
                }
                break
            }
            defer { lease.finished(entry.id) }
            if !lease.isFresh(at: .now, within: configuration.claimMinIdle / 2) {
                try await self.renew(lease.remaining, on: connection, lease: lease)
            }
            guard var deliveries = lease.deliveries(of: entry.id) else {
                self.logger.debug("entry no longer pending for this consumer; skipped", metadata: ["entry": "\(entry.id)"])
                self.forgetRetry(of: entry.id)
                continue
            }
            if self.state.withLockedValue({ $0.handled.contains(entry.id) }) {
                // Handled here already; its acknowledgement did not last. Acknowledge it again.
                self.logger.info("entry handled already; acknowledged again", metadata: ["entry": "\(entry.id)"])
                try await self.acknowledge(entry.id, on: connection)
                self.state.withLockedValue { $0.unacknowledged.removeAll { $0 == entry.id } }
                self.forgetRetry(of: entry.id)
                continue
            }
            if entry.isDeleted {
                // Trimmed from the stream while pending, before this consumer read its fields (a
                // re-read of its pending entries): nothing left to handle, and lost.
                try await self.acknowledge(entry.id, on: connection)
                self.forgetRetry(of: entry.id)
                self.state.withLockedValue { $0.statistics.trimmed += 1 }
                self.logger.warning("pending entry trimmed from the stream before it was handled (max-length reached?): lost", metadata: ["id": "\(entry.id)"])
                continue
            }
            // Taken again: `deliveries` attempts were made (by this replica or others); the
            // next one is counted before it starts, unless none is left, or its retry is not due.
            if !lease.counted {
                let now = ContinuousClock.now
                if let notBefore = self.state.withLockedValue({ $0.retryNotBefore[entry.id] }), notBefore > now {
                    due = min(due ?? notBefore, notBefore)
                    continue
                }
                if deliveries >= configuration.maxDeliveries {
                    let lastError =
                        self.state.withLockedValue { $0.lastErrors[entry.id] }
                        ?? "attempted \(deliveries) times without success (consumers failed or crashed)"
                    if let notBefore = try await self.deadLetterOrKeep(entry, deliveries: deliveries, lastError: lastError, on: connection) {
                        due = min(due ?? notBefore, notBefore)
                    }
                    continue
                }
                guard let attempt = try await self.countAttempt(entry.id, on: connection) else {
                    self.logger.debug("entry no longer pending for this consumer; skipped", metadata: ["entry": "\(entry.id)"])
                    self.forgetRetry(of: entry.id)
                    continue
                }
                deliveries = attempt
            }
            lease.handlerStarted(at: .now)
            firstNotStarted = index + 1
            let message = IncomingMessage(entry: entry, stream: configuration.stream, deliveryCount: deliveries)
            // An unstructured task: cancelling `run` must not cancel the handler in flight.
            let outcome = await Task { try await handler(message) }.result
            switch outcome {
            case .success:
                self.state.withLockedValue { state in
                    state.statistics.processed += 1
                    state.lastErrors[entry.id] = nil
                    state.retryNotBefore[entry.id] = nil
                    state.handled.insert(entry.id)
                }
                do {
                    try await self.acknowledge(entry.id, on: connection)
                } catch {
                    self.state.withLockedValue { state in
                        state.unacknowledged.append(entry.id)
                        if state.unacknowledged.count > Self.retriesKept { state.unacknowledged.removeFirst() }
                    }
                    throw error
                }
            case .failure(let error):
                let description = String(describing: error)
                self.state.withLockedValue { state in
                    state.statistics.failures += 1
                    if state.lastErrors.count >= 10_000 { state.lastErrors.removeAll() }
                    state.lastErrors[entry.id] = description
                }
                self.logger.warning(
                    "handler failed",
                    metadata: ["entry": "\(entry.id)", "deliveries": "\(deliveries)", "error": "\(description)"]
                )
                if deliveries >= configuration.maxDeliveries {
                    if let notBefore = try await self.deadLetterOrKeep(entry, deliveries: deliveries, lastError: description, on: connection) {
                        due = min(due ?? notBefore, notBefore)
                    }
                } else {
                    let now = ContinuousClock.now
                    let notBefore = now + configuration.delayBeforeRetry(afterAttempt: deliveries)
                    self.state.withLockedValue { Self.keepRetry(entry.id, notBefore: notBefore, now: now, in: &$0) }
                    due = min(due ?? notBefore, notBefore)
                }
            }
        }
        return due
    }

    /// Acknowledges a handled entry on the reading connection or, when that fails short of an
    /// answer (the connection was lost while the handler ran), on the client's connection, which
    /// reconnects by itself, as a renewal does. Left pending while this consumer reconnected, the
    /// entry could be taken over by another replica, and handled again, once idle past
    /// `claimMinIdle`. When both fail, the first error ends the session; the entry is then
    /// acknowledged, not handled again, when this consumer takes its own pending entries again.
    func acknowledge(_ id: String, on connection: RedisConnection) async throws {
        let command = XACK(key: self.configuration.stream, group: self.configuration.group, ids: [id])
        do {
            _ = try await connection.execute(command)
        } catch let error as RedisServerError where !Self.isRedirect(error) {
            throw error
        } catch {
            guard (try? await self.redis.execute(command)) != nil else { throw error }
            self.logger.info("acknowledged on the client's connection; the reading connection failed", metadata: ["entry": "\(id)"])
        }
    }

    /// How many retry times are kept at most (``State/retryNotBefore``).
    static var retriesKept: Int { 10_000 }

    /// Retry times pruned below `limit`: those due already say nothing more; past that, the
    /// ones due first go (their entries are retried at the next pass, a little early).
    static func pruned(
        _ times: [String: ContinuousClock.Instant], at now: ContinuousClock.Instant, limit: Int
    ) -> [String: ContinuousClock.Instant] {
        let waiting = times.filter { $0.value > now }
        guard waiting.count >= limit else { return waiting }
        let kept = waiting.sorted { $0.value > $1.value }.prefix(limit * 9 / 10)
        return Dictionary(uniqueKeysWithValues: kept.map { ($0.key, $0.value) })
    }

    /// The entry is done with here: no retry time kept for it.
    func forgetRetry(of id: String) {
        self.state.withLockedValue { _ = $0.retryNotBefore.removeValue(forKey: id) }
    }

    /// On a Redis Cluster, the reading connection's node no longer serves the stream's slot
    /// (it moved, or is moving, or the node failed over): the client's connection follows it.
    static func isRedirect(_ error: RedisServerError) -> Bool {
        ["MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"].contains(error.code)
    }

    /// Dead-letters `entry` (``deadLetter(_:deliveries:lastError:on:)``). When Redis refuses it
    /// (an ACL without the dead-letter stream, a key of another type there, `OOM`), the entry
    /// stays pending and is tried again after a retry's delay: returns when. A refusal used to
    /// end the session, and the next one met the same entry first, so the replica stopped
    /// reading for good. A lost connection still ends the session.
    func deadLetterOrKeep(
        _ entry: RedisStreamEntry, deliveries: Int, lastError: String, on connection: RedisConnection
    ) async throws
        -> ContinuousClock.Instant?
    {
        do {
            try await self.deadLetter(entry, deliveries: deliveries, lastError: lastError, on: connection)
            return nil
        } catch let error as RedisServerError where !Self.isRedirect(error) {
            let now = ContinuousClock.now
            // At least a second apart (a retry delay of 0 retried in a loop that never read
            // new entries again).
            let notBefore = now + max(.seconds(1), self.configuration.delayBeforeRetry(afterAttempt: deliveries))
            let failures = self.state.withLockedValue { state in
                state.statistics.deadLetterFailures += 1
                Self.keepRetry(entry.id, notBefore: notBefore, now: now, in: &state)
                return state.statistics.deadLetterFailures
            }
            // At error level the first time and every 100th (each pending entry is tried again).
            self.logger.log(
                level: failures % 100 == 1 ? .error : .debug,
                "moving an entry to the dead-letter stream failed; it stays pending and is tried again",
                metadata: [
                    "entry": "\(entry.id)", "dead-letter-stream": "\(self.configuration.deadLetterStream)", "error": "\(error)",
                ])
            return notBefore
        }
    }

    /// Arguments of the dead-letter `EVAL` at most: Lua's `unpack` of more (an entry of about
    /// 4,000 fields) fails with "too many results to unpack"; such an entry takes the two-step
    /// way (`XADD`, then `XACK`).
    static var deadLetterScriptArguments: Int { 7_000 }

    /// Atomically (one `EVAL`) appends the entry to the dead-letter stream and acknowledges it (on
    /// a Redis Cluster, when the two streams share no hash tag: `XADD`, then `XACK`).
    /// The dead-letter entry has the original fields, then `original-id`, `original-stream`,
    /// `deliveries`, `last-error` and `dead-lettered-by` (the consumer name).
    func deadLetter(_ entry: RedisStreamEntry, deliveries: Int, lastError: String, on connection: RedisConnection) async throws {
        let configuration = self.configuration
        var arguments: [RedisArgument] = [.string(configuration.group), .string(entry.id)]
        if let maxLength = configuration.deadLetterMaxLength {
            arguments += ["MAXLEN", "~", .integer(maxLength)]
        }
        arguments.append("*")
        let added: Set<String> = ["original-id", "original-stream", "deliveries", "last-error", "dead-lettered-by"]
        for (name, value) in entry.fields where !added.contains(name) {
            arguments += [.string(name), .bytes(value)]
        }
        arguments += [
            "original-id", .string(entry.id),
            "original-stream", .string(configuration.stream),
            "deliveries", .string(String(deliveries)),
            "last-error", .string(lastError),
            "dead-lettered-by", .string(configuration.consumerName),
        ]
        let deadID: String
        let oneScript = HashSlot(key: configuration.stream) == HashSlot(key: configuration.deadLetterStream) || !self.redis.isCluster
        if oneScript && arguments.count <= Self.deadLetterScriptArguments {
            let reply = try await connection.execute(
                EVAL(
                    script: Self.deadLetterScript, keys: [configuration.stream, configuration.deadLetterStream], arguments: arguments
                ))
            deadID = (try? String(fromRESP: reply)) ?? "?"
        } else {
            // On a cluster the two streams are in different slots (no shared hash tag), or the
            // entry is too large for the script: the entry is added to the dead-letter stream
            // first, then acknowledged (a crash in between dead-letters it twice, never loses it).
            // Added already by an earlier try whose XACK failed: only acknowledged now (each try
            // added another copy).
            if let added = self.state.withLockedValue({ $0.deadLetterAdded[entry.id] }) {
                deadID = added
            } else {
                let reply = try await self.redis.execute(
                    RawCommand(arguments: ["XADD", .string(configuration.deadLetterStream)] + arguments.dropFirst(2), keys: [configuration.deadLetterStream]))
                let id = (try? String(fromRESP: reply)) ?? "?"
                self.state.withLockedValue { state in
                    if state.deadLetterAdded.count >= Self.retriesKept { state.deadLetterAdded.removeAll() }
                    state.deadLetterAdded[entry.id] = id
                }
                deadID = id
            }
            try await self.acknowledge(entry.id, on: connection)
        }
        self.state.withLockedValue { state in
            state.deadLetterAdded[entry.id] = nil
            state.statistics.deadLettered += 1
            state.lastErrors[entry.id] = nil
            state.retryNotBefore[entry.id] = nil
        }
        self.logger.error(
            "entry moved to the dead-letter stream",
            metadata: [
                "entry": "\(entry.id)", "deliveries": "\(deliveries)", "dead-letter-stream": "\(configuration.deadLetterStream)",
                "dead-letter-id": "\(deadID)", "error": "\(lastError)",
            ]
        )
    }

    /// KEYS: stream, dead-letter stream. ARGV: group, entry ID, then the XADD arguments after the key.
    static let deadLetterScript = """
        local id = redis.call('XADD', KEYS[2], unpack(ARGV, 3))
        redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
        return id
        """
}
