import Logging
import Redis

/// The group's consumer names. Every replica has its own (by default a new random one per
/// process), and Redis keeps a consumer name in the group until it is deleted: without the
/// clean-up below, each restart or crash left a name behind for good (`XINFO CONSUMERS` grew,
/// and so did every tool listing it).
///
/// - A consumer that stops with nothing pending deletes its own name.
/// - The claim pass deletes other consumers with nothing pending that have been idle for
///   ``StreamConsumerConfiguration/removeIdleConsumersAfter`` (the replicas that crashed or
///   were scaled away, once their entries were taken over). Redis before 7.2 does not count a
///   read that found nothing as activity, so there a live replica of a stream quiet for that
///   long is deleted too, and created again by its next read (nothing is lost; the count and
///   the log line say it).
///
/// Both check "nothing pending" and delete in one script, so no entry is ever dropped with a
/// name (`XGROUP DELCONSUMER` drops the consumer's pending entries). A live consumer deleted
/// while idle is created again by its next read.
extension StreamConsumer {
    /// Deletes consumer `ARGV[2]` of group `ARGV[1]` if it has no pending entry; -1 if it has.
    static let removeOwnNameScript = """
        if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return -1 end
        return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
        """

    /// Deletes the consumers of group `ARGV[1]` other than `ARGV[3]` that have no pending entry
    /// and have been idle (no read or claim tried) for at least `ARGV[2]` ms; returns how many.
    static let removeIdleConsumersScript = """
        local removed = 0
        for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
          local f = {}
          for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
          if f['name'] ~= ARGV[3] and f['pending'] == 0 and f['idle'] >= tonumber(ARGV[2]) then
            redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
            removed = removed + 1
          end
        end
        return removed
        """

    /// At a clean stop, on the reading connection: this consumer's name is deleted unless entries
    /// are pending for it (they wait for a replica's claim, or for this name's next start).
    func removeOwnNameIfIdle(on connection: RedisConnection) async {
        let configuration = self.configuration
        guard configuration.removeIdleConsumersAfter != nil else { return }
        let script = EVAL(
            script: Self.removeOwnNameScript, keys: [configuration.stream],
            arguments: [.string(configuration.group), .string(configuration.consumerName)])
        do {
            if try await Int(fromRESP: connection.execute(script)) == 0 {
                self.logger.debug("consumer name removed from the group at stop")
            }
        } catch {
            self.logger.debug("could not remove the consumer name at stop", metadata: ["error": "\(error)"])
        }
    }

    /// Deletes the group's idle consumers with nothing pending, at most once per
    /// `min(removeIdleConsumersAfter, 1 min)`. A failure (an ACL without `XINFO`) is logged once
    /// and does not end the session.
    func removeIdleConsumers(on connection: RedisConnection) async {
        let configuration = self.configuration
        guard let after = configuration.removeIdleConsumersAfter else { return }
        let now = ContinuousClock.now
        let due = self.state.withLockedValue { state -> Bool in
            if let next = state.nextConsumerSweep, now < next { return false }
            state.nextConsumerSweep = now + min(after, .seconds(60))
            return true
        }
        guard due else { return }
        let script = EVAL(
            script: Self.removeIdleConsumersScript, keys: [configuration.stream],
            arguments: [.string(configuration.group), .integer(after.kitMilliseconds), .string(configuration.consumerName)])
        do {
            let removed = try await Int(fromRESP: connection.execute(script))
            guard removed > 0 else { return }
            self.state.withLockedValue { $0.statistics.consumersRemoved += removed }
            self.logger.info("removed idle consumers with nothing pending from the group", metadata: ["count": "\(removed)"])
        } catch let error as RedisServerError where error.isNoGroup || error.message.contains("no such key") {
            return  // Redis lost the stream or the group: the session's next read re-creates them
        } catch {
            let first = self.state.withLockedValue { state -> Bool in
                defer { state.consumerSweepFailed = true }
                return !state.consumerSweepFailed
            }
            if first {
                self.logger.warning(
                    "cannot remove idle consumers from the group (needs XINFO and XGROUP DELCONSUMER in scripts); names pile up",
                    metadata: ["error": "\(error)"])
            }
        }
    }
}
