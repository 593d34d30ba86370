import Logging
import NIOCore
import RedisClient

extension StreamConsumer {
    // MARK: Connection loop

    /// Connects, runs a reading session, and reconnects with backoff until stopped.
    func loop(_ handler: @escaping Handler) async {
        var attempt = 0
        while !self.isStopRequested {
            var connection: RedisConnection?
            do {
                let opened = try await self.client.makeDedicatedConnection()
                connection = opened
                let attached = self.state.withLockedValue { state -> Bool in
                    guard !state.stopRequested else { return false }
                    state.connection = opened
                    state.statistics.connects += 1
                    return true
                }
                guard attached else { break }
                do {
                    _ = try await opened.execute(self.groupCreateCommand)
                } catch let error as RedisServerError where error.isBusyGroup {}
                attempt = 0
                try await self.session(on: opened, handler)
            } catch {
                if !self.isStopRequested {
                    self.logger.warning("stream consumer connection failed; reconnecting", metadata: ["error": "\(error)"])
                }
            }
            self.state.withLockedValue { state in
                if state.connection === connection { state.connection = nil }
                state.blocking = false
            }
            await connection?.close()
            if self.isStopRequested { break }
            let delay = min(self.configuration.reconnectBackoffMaximum, .milliseconds(100 << min(attempt, 16)))
            attempt += 1
            await self.sleepUnlessStopped(delay)
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

        while !self.isStopRequested {
            if let cursor = pendingCursor {
                let read = XREADGROUP(
                    group: configuration.group, consumer: configuration.consumerName, count: configuration.batchSize,
                    streams: [(configuration.stream, cursor)]
                )
                let entries = try await connection.execute(read)?[configuration.stream] ?? []
                guard let last = entries.last else {
                    pendingCursor = nil
                    continue
                }
                pendingCursor = last.id
                let counts = try await self.deliveryCounts(of: entries.map(\.id), on: connection)
                if try await self.process(entries, counts: counts, on: connection, handler) {
                    retryAt = retryAt ?? clock.now + configuration.retryDelay
                }
                continue
            }
            if clock.now >= nextClaim {
                if try await self.claimPass(on: connection, handler) {
                    retryAt = retryAt ?? clock.now + configuration.retryDelay
                }
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
            do {
                result = try await connection.execute(read)
                self.state.withLockedValue { $0.blocking = false }
            } catch {
                self.state.withLockedValue { $0.blocking = false }
                if self.isStopRequested { return }
                throw error
            }
            let entries = result?[configuration.stream] ?? []
            if entries.isEmpty { continue }
            let counts = Dictionary(entries.map { ($0.id, 1) }, uniquingKeysWith: { a, _ in a })
            if try await self.process(entries, counts: counts, on: connection, handler) {
                retryAt = retryAt ?? clock.now + configuration.retryDelay
            }
        }
    }

    /// Takes over entries idle past `claimMinIdle` and processes them. Returns whether a handler failed.
    func claimPass(on connection: RedisConnection, _ handler: @escaping Handler) async throws -> Bool {
        let configuration = self.configuration
        var cursor = "0-0"
        var rounds = 0
        var failed = false
        repeat {
            let claim = XAUTOCLAIM(
                key: configuration.stream, group: configuration.group, consumer: configuration.consumerName,
                minIdleMilliseconds: configuration.claimMinIdle.kitMilliseconds, start: cursor, count: configuration.batchSize
            )
            let result = try await connection.execute(claim)
            let entries = result.entries.filter { !$0.isDeleted }
            if !result.deletedIDs.isEmpty {
                self.logger.debug("pending entries no longer in the stream dropped", metadata: ["count": "\(result.deletedIDs.count)"])
            }
            if !entries.isEmpty {
                self.logger.info("claimed idle entries", metadata: ["count": "\(entries.count)", "first": "\(entries[0].id)"])
                self.state.withLockedValue { $0.statistics.claimed += entries.count }
                let counts = try await self.deliveryCounts(of: entries.map(\.id), on: connection)
                if try await self.process(entries, counts: counts, on: connection, handler) { failed = true }
            }
            cursor = result.nextStartID
            rounds += 1
        } while cursor != "0-0" && rounds < 10 && !self.isStopRequested
        return failed
    }

    /// Delivery counts of entries pending for this consumer (`XPENDING` extended form, pipelined).
    /// An ID missing from the result is no longer pending for this consumer.
    func deliveryCounts(of ids: [String], on connection: RedisConnection) async throws -> [String: Int] {
        let configuration = self.configuration
        let futures = ids.map { id in
            connection.send(XPENDINGRANGE(
                key: configuration.stream, group: configuration.group, start: id, end: id, count: 1, consumer: configuration.consumerName
            ))
        }
        var counts: [String: Int] = [:]
        for future in futures {
            for pending in try await future.get() { counts[pending.id] = pending.deliveryCount }
        }
        return counts
    }
}
