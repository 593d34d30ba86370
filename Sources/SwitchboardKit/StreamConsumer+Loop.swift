import Logging
import NIOCore
import Redis
import SwitchboardWire

extension StreamConsumer {
    // MARK: Connection loop

    /// Connects, runs a reading session, and reconnects with backoff until stopped.
    func loop(_ handler: @escaping Handler) async {
        var attempt = 0
        // The configured start applies to the group's first creation only: a group found missing
        // later (Redis lost its data) is re-created at 0, so no entry stored meanwhile is skipped.
        var groupStartID = self.configuration.groupStartID
        var connectedBefore = false
        var retryAtOnce = false
        while !self.isStopRequested {
            var connection: RedisConnection?
            do {
                let opened = try await self.openConnection()
                connection = opened
                let attached = self.state.withLockedValue { state -> Bool in
                    guard !state.stopRequested else { return false }
                    state.connection = opened
                    state.statistics.connects += 1
                    return true
                }
                guard attached else {
                    await opened.close()
                    break
                }
                // Its id, for `stop()` to end a blocked read with `CLIENT UNBLOCK`.
                let id = try? await Int(fromRESP: opened.execute(RawCommand("CLIENT", "ID")))
                self.state.withLockedValue { state in
                    if state.connection === opened { state.connectionID = id }
                }
                if try await self.createGroupIfMissing(at: groupStartID, on: opened), connectedBefore {
                    self.logger.notice("consumer group re-created at 0", metadata: ["group": "\(self.configuration.group)"])
                }
                groupStartID = "0"
                connectedBefore = true
                // The backoff starts over once the session made progress (a read or an
                // acknowledgement), not at every connection: a session that fails the same way
                // each time (a refused script, say) reconnected every 100 ms for good.
                let progressBefore = self.progressMarker
                defer { if self.progressMarker != progressBefore { attempt = 0 } }
                try await self.session(on: opened, handler)
                // Stopped with the connection in order (not closed under a read Redis did not
                // end): the name goes unless entries are pending for it.
                if self.isStopRequested { await self.removeOwnNameIfIdle(on: opened) }
            } catch let error as RedisServerError where error.isNoGroup {
                self.logger.warning(
                    "consumer group missing (Redis lost its data?); re-creating it at 0",
                    metadata: ["stream": "\(self.configuration.stream)", "group": "\(self.configuration.group)"]
                )
                retryAtOnce = true
            } catch {
                if !self.isStopRequested {
                    self.logger.warning("stream consumer connection failed; reconnecting", metadata: ["error": "\(error)"])
                }
            }
            self.state.withLockedValue { state in
                if state.connection === connection {
                    state.connection = nil
                    state.connectionID = nil
                }
                state.blocking = false
            }
            await connection?.close()
            if self.isStopRequested { break }
            if retryAtOnce {
                retryAtOnce = false
                continue
            }
            await self.sleepUnlessStopped(min(self.configuration.reconnectBackoffMaximum, .milliseconds(100 << min(attempt, 16))))
            attempt += 1
        }
        await self.settleAtStop()
    }

    /// The reading connection: to the server, or to the primary owning the stream's slot (a
    /// `MOVED` later ends the session, and the next connection goes to the new owner).
    func openConnection() async throws -> RedisConnection {
        switch self.redis {
        case .single(let client):
            return try await client.makeDedicatedConnection()
        case .cluster(let client):
            if self.statistics.connects > 0 { _ = try? await client.refreshTopology() }
            return try await client.makeDedicatedConnection(forKeys: [self.configuration.stream])
        }
    }

    func sleepUnlessStopped(_ duration: Duration) async {
        let clock = ContinuousClock()
        let deadline = clock.now + duration
        while !self.isStopRequested, clock.now < deadline, !Task.isCancelled {
            try? await Task.sleep(for: min(.milliseconds(50), deadline - clock.now))
        }
    }

    // MARK: Reading session

    /// Reads on one connection until stopped (returns) or the connection fails (throws).
    func session(on connection: RedisConnection, _ handler: @escaping Handler) async throws {
        let configuration = self.configuration
        let clock = ContinuousClock()
        var pendingCursor: String? = "0"  // own pending entries first: left over from an earlier run
        var nextClaim = clock.now
        var retryAt: ContinuousClock.Instant?
        var lastRetryPass: ContinuousClock.Instant?
        // Entries left for a retry are due one by one (their delays differ); a retry pass reads
        // all of this consumer's pending entries again, so a pass starts at least `retryDelay`
        // after the last one ended, as with one delay for all.
        func retry(at due: ContinuousClock.Instant) {
            var at = min(retryAt ?? due, due)
            if let last = lastRetryPass { at = max(at, last + configuration.retryDelay) }
            retryAt = at
        }

        try await self.giveBackAttemptsOfEndedSession(on: connection)
        while !self.isStopRequested {
            if let cursor = pendingCursor {
                let taken = try await self.take(.own(after: cursor), on: connection)
                guard !taken.entries.isEmpty else {
                    // The pass is over: the next one at least `retryDelay` after its end (a pass
                    // longer than that, its handlers failing slowly, was followed at once by the
                    // next, and new entries were not read until the failures were dead-lettered).
                    pendingCursor = nil
                    lastRetryPass = clock.now
                    if let at = retryAt { retryAt = max(at, clock.now + configuration.retryDelay) }
                    continue
                }
                pendingCursor = taken.cursor
                if let due = try await self.process(taken.entries, lease: taken.lease, on: connection, handler) { retry(at: due) }
                continue
            }
            if clock.now >= nextClaim {
                if let due = try await self.claimPass(on: connection, handler) { retry(at: due) }
                nextClaim = clock.now + configuration.claimInterval
                continue
            }
            if let due = retryAt, clock.now >= due {
                retryAt = nil
                pendingCursor = "0"
                continue
            }
            var wait = min(configuration.blockTime, nextClaim - clock.now)
            if let due = retryAt { wait = min(wait, due - clock.now) }
            let read = XREADGROUP(
                group: configuration.group, consumer: configuration.consumerName, count: configuration.batchSize,
                blockMilliseconds: max(1, wait.kitMilliseconds), streams: [(configuration.stream, ">")]
            )
            let blocking = self.state.withLockedValue { state -> Bool in
                guard !state.stopRequested else { return false }
                state.blocking = true
                return true
            }
            guard blocking else { break }
            let result: RedisStreamReadResult?
            let readAt = clock.now
            do {
                result = try await connection.execute(read)
                self.state.withLockedValue { state in
                    state.blocking = false
                    state.reads &+= 1
                }
            } catch {
                self.state.withLockedValue { $0.blocking = false }
                if self.isStopRequested { return }
                throw error
            }
            let entries = result?[configuration.stream] ?? []
            if entries.isEmpty { continue }
            let lease = BatchLease(newlyRead: entries.map(\.id), readAt: readAt)
            if let due = try await self.process(entries, lease: lease, on: connection, handler) { retry(at: due) }
        }
    }

    /// Takes over entries idle past `claimMinIdle` and processes them, for at most 10 rounds of
    /// `XAUTOCLAIM` (each scans at most 10 × ``StreamConsumerConfiguration/batchSize`` pending
    /// entries). Returns when the first entry left for a retry is due, if any.
    ///
    /// The next pass goes on where this one stopped, and starts from the beginning once Redis
    /// said the scan was over: one starting from the beginning each time never reached idle
    /// entries behind more than 10 rounds of busy ones.
    func claimPass(on connection: RedisConnection, _ handler: @escaping Handler) async throws -> ContinuousClock.Instant? {
        var cursor = self.state.withLockedValue { $0.claimCursor }
        defer { self.state.withLockedValue { [cursor] in $0.claimCursor = cursor } }
        var rounds = 0
        var due: ContinuousClock.Instant?
        repeat {
            let taken = try await self.take(.claim(from: cursor), on: connection)
            if !taken.deletedIDs.isEmpty {
                self.state.withLockedValue { $0.statistics.trimmed += taken.deletedIDs.count }
                self.logger.warning(
                    "pending entries trimmed from the stream before they were handled (max-length reached?): lost",
                    metadata: ["count": "\(taken.deletedIDs.count)", "first": "\(taken.deletedIDs[0])"])
            }
            if !taken.entries.isEmpty {
                self.logger.info("claimed idle entries", metadata: ["count": "\(taken.entries.count)", "first": "\(taken.entries[0].id)"])
                self.state.withLockedValue { $0.statistics.claimed += taken.entries.count }
                if let next = try await self.process(taken.entries, lease: taken.lease, on: connection, handler) {
                    due = min(due ?? next, next)
                }
            }
            cursor = taken.cursor
            rounds += 1
        } while cursor != "0-0" && rounds < 10 && !self.isStopRequested
        await self.removeIdleConsumers(on: connection)
        return due
    }
}
