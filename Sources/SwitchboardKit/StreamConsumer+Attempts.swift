import NIOCore
import Redis
import SwitchboardWire

/// Entries taken again (this consumer's own pending ones, or claimed from another) and their
/// attempt counts.
///
/// Redis's delivery count of a pending entry is the consumer's count of handler attempts: an
/// `XREADGROUP … >` delivery is the first, and each later attempt is counted, just before its
/// handler starts (``countAttempt(_:on:)``). The entries taken again are read without counting
/// (`XPENDING` and `XAUTOCLAIM … JUSTID`, then `XRANGE`): `XREADGROUP … 0` and a plain
/// `XAUTOCLAIM` add one to every entry they return, and the batch-mates of an entry that crashed
/// one replica after another reached the dead-letter limit without their handler ever running.
extension StreamConsumer {
    /// What ``take(_:on:)`` read: entries in order (trimmed ones marked deleted), the hold on
    /// those still this consumer's with their attempt counts, and the cursor to go on from.
    struct Taken {
        var entries: [RedisStreamEntry]
        var lease: BatchLease
        /// The next `XAUTOCLAIM` start (`0-0`: done), or the last own pending entry's id.
        var cursor: String
        /// Pending entries gone from the stream that `XAUTOCLAIM` dropped (Redis 7).
        var deletedIDs: [String]
    }

    enum TakeMode {
        /// This consumer's own pending entries after `cursor` (`0`: from the start).
        case own(after: String)
        /// Entries idle past `claimMinIdle`, from `cursor`.
        case claim(from: String)
    }

    /// Reads up to ``StreamConsumerConfiguration/batchSize`` entries taken again, without
    /// counting an attempt.
    func take(_ mode: TakeMode, on connection: RedisConnection) async throws -> Taken {
        let configuration = self.configuration
        var arguments: [RedisArgument] = [.string(configuration.group), .string(configuration.consumerName), .integer(configuration.batchSize)]
        switch mode {
        case .own(let after): arguments += ["own", .string(after == "0" ? "-" : "(" + after)]
        case .claim(let from): arguments += ["claim", .string(from), .integer(configuration.claimMinIdle.kitMilliseconds)]
        }
        let requestedAt = ContinuousClock.now
        let reply = try await connection.execute(EVAL(script: Self.takeScript, keys: [configuration.stream], arguments: arguments))
        let parts = try [RESPToken](fromRESP: reply)
        guard parts.count == 3 else { throw RESPDecodeError(token: reply, expected: "[cursor, deleted ids, entries]") }
        let cursor = try String(fromRESP: parts[0])
        let deletedIDs = try [String](fromRESP: parts[1])
        var entries: [RedisStreamEntry] = []
        var owned: [String: Int] = [:]
        for item in try [RESPToken](fromRESP: parts[2]) {
            let fields = try [RESPToken](fromRESP: item)
            guard fields.count >= 3 else { throw RESPDecodeError(token: item, expected: "[id, count, deleted, …]") }
            let id = try String(fromRESP: fields[0])
            owned[id] = try Int(fromRESP: fields[1])
            let deleted = try Int(fromRESP: fields[2]) == 1
            var pairs: [(name: String, value: ByteBuffer)] = []
            var index = 3
            while index + 1 < fields.count {
                pairs.append((try String(fromRESP: fields[index]), try ByteBuffer(fromRESP: fields[index + 1])))
                index += 2
            }
            entries.append(RedisStreamEntry(id: id, fields: pairs, isDeleted: deleted))
        }
        return Taken(
            entries: entries, lease: BatchLease(ids: entries.map(\.id), owned: owned, renewedAt: requestedAt, counted: false), cursor: cursor,
            deletedIDs: deletedIDs)
    }

    /// Counts an attempt at `id` before its handler starts (a handler that crashes the process
    /// is counted too): its new attempt count, or nil when the entry is no longer this
    /// consumer's (taken over meanwhile). One `EVAL`: `XPENDING`, then `XCLAIM … RETRYCOUNT n+1
    /// JUSTID` of an entry still its own, which resets its idle time too.
    func countAttempt(_ id: String, on connection: RedisConnection) async throws -> Int? {
        let configuration = self.configuration
        let reply = try await connection.execute(
            EVAL(
                script: Self.attemptScript, keys: [configuration.stream],
                arguments: [.string(configuration.group), .string(configuration.consumerName), .string(id)]))
        let count = try Int(fromRESP: reply)
        return count > 0 ? count : nil
    }

    /// KEYS: stream. ARGV: group, consumer, count, then `own` and the start of the pending range
    /// (`-` or `(<id>`), or `claim`, the `XAUTOCLAIM` start and the minimum idle time (ms).
    /// Replies the cursor, the ids `XAUTOCLAIM` found deleted, and per entry still this
    /// consumer's: id, delivery count, 1 if trimmed from the stream (no fields), fields.
    static let takeScript = """
        local stream, group, me, count = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
        local ids, cursor, deleted = {}, '0-0', {}
        if ARGV[4] == 'own' then
          local p = redis.call('XPENDING', stream, group, ARGV[5], '+', count, me)
          for _, e in ipairs(p) do ids[#ids + 1] = e[1] end
          if #ids > 0 then cursor = ids[#ids] end
        else
          local r = redis.call('XAUTOCLAIM', stream, group, me, tonumber(ARGV[6]), ARGV[5], 'COUNT', count, 'JUSTID')
          cursor = r[1]
          ids = r[2]
          deleted = r[3] or {}
        end
        local out = {}
        for _, id in ipairs(ids) do
          local p = redis.call('XPENDING', stream, group, id, id, 1, me)
          if #p > 0 then
            local item = {id, p[1][4]}
            local e = redis.call('XRANGE', stream, id, id)
            if #e == 0 then
              item[3] = 1
            else
              item[3] = 0
              for _, v in ipairs(e[1][2]) do item[#item + 1] = v end
              -- Held again (its idle time reset, its count kept), as a renewal does; a trimmed
              -- entry is not claimed (Redis 7 would drop it from the pending list unseen).
              if ARGV[4] == 'own' then redis.call('XCLAIM', stream, group, me, 0, id, 'JUSTID') end
            end
            out[#out + 1] = item
          end
        end
        return {cursor, deleted, out}
        """

    /// Gives back the attempt `XREADGROUP … >` counted for entries of its batch whose handler
    /// did not start (a stop in the middle of the batch): taken again, they are counted when
    /// they are attempted, and a limit of one attempt does not dead-letter them unhandled. (A
    /// crash cannot give it back: the entries read with the one in flight keep one attempt.)
    ///
    /// On the reading connection or, when that fails short of an answer, on the client's (which
    /// reconnects by itself), as an acknowledgement.
    @discardableResult
    func uncount(_ ids: [String], on connection: RedisConnection?) async -> Bool {
        guard !ids.isEmpty else { return true }
        let configuration = self.configuration
        let command = EVAL(
            script: Self.uncountScript, keys: [configuration.stream],
            arguments: [.string(configuration.group), .string(configuration.consumerName)] + ids.map { RedisArgument.string($0) })
        do {
            do {
                guard let connection else { throw SwitchboardKitError("no reading connection") }
                _ = try await connection.execute(command)
            } catch let error as RedisServerError where !Self.isRedirect(error) {
                throw error
            } catch {
                _ = try await self.redis.execute(command)
            }
            return true
        } catch {
            self.logger.debug("giving back the attempts of entries not started failed", metadata: ["error": "\(error)"])
            return false
        }
    }

    /// Keeps `ids` for the next session (or the stop) to give their attempt back.
    func keepAttemptsToGiveBack(_ ids: [String]) {
        self.state.withLockedValue { state in
            state.attemptsToGiveBack.append(contentsOf: ids)
            if state.attemptsToGiveBack.count > Self.retriesKept { state.attemptsToGiveBack.removeFirst(state.attemptsToGiveBack.count - Self.retriesKept) }
        }
    }

    /// At the stop, no next session gives back the attempts of entries not started, or
    /// acknowledges entries handled whose `XACK` failed (Redis away, the reading connection
    /// lost): done here, on the client's connection. Left, the entries were taken over by
    /// another replica with an attempt counted (dead-lettered unhandled at a limit of one), and
    /// a handled one was handled again.
    func settleAtStop() async {
        let (giveBack, unacknowledged) = self.state.withLockedValue { ($0.attemptsToGiveBack, $0.unacknowledged) }
        // Side by side: while Redis is away each waits for the client's reconnect wait, and
        // one after the other the stop took twice that.
        async let acknowledged = self.acknowledgeAtStop(unacknowledged)
        async let givenBack = self.uncount(giveBack, on: nil)
        if await acknowledged {
            self.state.withLockedValue { $0.unacknowledged.removeAll() }
        }
        if await givenBack {
            self.state.withLockedValue { $0.attemptsToGiveBack.removeAll() }
        } else {
            self.logger.warning(
                "stopping: the attempts of entries not started could not be given back; they keep one",
                metadata: ["entries": "\(giveBack.count)"])
        }
    }

    /// The `XACK` of handled entries left unacknowledged, at the stop; false (with a warning)
    /// when it failed.
    private func acknowledgeAtStop(_ ids: [String]) async -> Bool {
        guard !ids.isEmpty else { return true }
        do {
            _ = try await self.redis.execute(XACK(key: self.configuration.stream, group: self.configuration.group, ids: ids))
            return true
        } catch {
            self.logger.warning(
                "stopping: entries handled could not be acknowledged; another consumer may handle them again",
                metadata: ["entries": "\(ids.count)", "error": "\(error)"])
            return false
        }
    }

    /// Gives back the attempts of entries whose handler had not started when an earlier session
    /// ended (``process(_:lease:on:_:)``), before this one takes its pending entries again.
    /// Throws when that fails: the session ends, and the next one tries again before it takes
    /// anything (taken with the attempt still counted, they could be dead-lettered unhandled).
    func giveBackAttemptsOfEndedSession(on connection: RedisConnection) async throws {
        let ids = self.state.withLockedValue { $0.attemptsToGiveBack }
        guard !ids.isEmpty else { return }
        guard await self.uncount(ids, on: connection) else {
            throw SwitchboardKitError("giving back the attempts of entries not started failed")
        }
        self.state.withLockedValue { state in
            // Kept if a stop's batch added more meanwhile (none: one session at a time).
            state.attemptsToGiveBack.removeFirst(min(ids.count, state.attemptsToGiveBack.count))
        }
    }

    /// KEYS: stream. ARGV: group, consumer, ids. Sets the count of those still this consumer's
    /// (and in the stream) to 0.
    static let uncountScript = """
        for i = 3, #ARGV do
          local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
          if #p > 0 and #redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i]) > 0 then
            redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'RETRYCOUNT', 0, 'JUSTID')
          end
        end
        return 0
        """

    /// KEYS: stream. ARGV: group, consumer, id. The entry's attempt count after counting one
    /// more, or 0 when it is not pending for this consumer. An entry trimmed from the stream
    /// since it was read is left as it is: `XCLAIM` would drop it from the pending list (Redis
    /// 7), and a failed attempt then went unseen; kept, the next read of the pending entries
    /// finds it gone and counts it as trimmed.
    static let attemptScript = """
        local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
        if #p == 0 then return 0 end
        local n = p[1][4] + 1
        if #redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3]) > 0 then
          redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'RETRYCOUNT', n, 'JUSTID')
        end
        return n
        """
}
