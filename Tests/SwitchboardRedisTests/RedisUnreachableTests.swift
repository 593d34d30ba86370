import Redis
import SwitchboardRoutes
import Testing

@testable import SwitchboardRedis

/// Which failures make a `SUBSCRIBE` wait for Redis (`redis.unreachable-wait-ms`) instead of
/// failing at once: Redis unreachable or not answering yet, never a refusal.
@Suite struct RedisUnreachableTests {
    /// (`tooManyRedirects`: a cluster slot migrating for longer than the client's retries
    /// of `TRYAGAIN`, which the history functions get while it lasts.)
    @Test(arguments: [
        RedisClientError.notConnected, .connectionClosed, .commandTimeout, .connectTimeout, .noPrimary, .notPrimary, .clusterUnavailable,
        .queueFull, .tooManyRedirects,
    ])
    func connectionTroubleIsWaitedOut(_ error: RedisClientError) {
        #expect(RedisEngine.isUnreachable(error))
    }

    @Test(arguments: [RedisClientError.shutdown, .protocolViolation, .crossSlot, .invalidConfiguration])
    func clientFailuresThatLastAreNot(_ error: RedisClientError) {
        #expect(!RedisEngine.isUnreachable(error))
    }

    @Test func aRestartedServerStillLoadingOrAFailoverIsWaitedOut() {
        for message in ["LOADING Redis is loading the dataset in memory", "TRYAGAIN", "CLUSTERDOWN The cluster is down", "MASTERDOWN Link with MASTER is down"] {
            #expect(RedisEngine.isUnreachable(RedisServerError(message: message)), "\(message)")
        }
    }

    /// A failed history read is asked again, whatever is buffered, when the failure passes by
    /// itself: Redis unreachable, or refusing for a while (before, an `OOM` refusal of the read
    /// left what this instance missed undelivered until the next publish).
    @Test func historyReadsAreRetriedThroughRefusalsThatPass() {
        for message in [
            "OOM command not allowed when used memory > 'maxmemory'.", "BUSY Redis is busy running a script.",
            "READONLY You can't write against a read only replica.", "MISCONF Errors writing to the AOF file",
            "NOREPLICAS Not enough good replicas to write.", "LOADING Redis is loading the dataset in memory",
        ] {
            #expect(RedisEngine.willPass(RedisServerError(message: message)), "\(message)")
        }
        #expect(RedisEngine.willPass(RedisClientError.connectionClosed))
        for message in ["ERR Function not found", "WRONGTYPE Operation against a key holding the wrong kind of value", "NOPERM"] {
            #expect(!RedisEngine.willPass(RedisServerError(message: message)), "\(message)")
        }
        #expect(!RedisEngine.willPass(RedisClientError.protocolViolation))
    }

    @Test func refusalsAreNot() {
        for message in ["ERR Function not found", "WRONGTYPE Operation against a key holding the wrong kind of value", "NOPERM"] {
            #expect(!RedisEngine.isUnreachable(RedisServerError(message: message)), "\(message)")
        }
        #expect(!RedisEngine.isUnreachable(RouteError(.redisUnavailable, "not a Redis error")))
    }
}
