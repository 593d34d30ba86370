import SwitchboardWire

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Settings of a ``StreamConsumer``: which stream and consumer group it reads, how, and how it
/// retries, takes over and dead-letters entries.
///
/// Only ``stream`` and ``group`` are required; every other setting has a default suited to a
/// backend replica. Durations are rounded to whole milliseconds when sent to Redis.
public struct StreamConsumerConfiguration: Sendable {
    /// The stream the gateway writes `/app` messages to (e.g. `GREETING_CHANNEL_OUTBOUND`).
    public var stream: String
    /// The consumer group shared by all replicas of one backend service.
    public var group: String
    /// This replica's consumer name. Must be unique per running replica (the default is
    /// ``defaultConsumerName()``); reusing the name of a crashed replica makes this one resume its
    /// pending entries at start.
    public var consumerName: String
    /// Maximum number of entries fetched by one `XREADGROUP` or `XAUTOCLAIM` (`COUNT`), 1 to 1,000:
    /// the hold on a batch's unfinished entries is renewed in one command.
    public var batchSize: Int
    /// How long one blocking `XREADGROUP … BLOCK` waits for new entries before the loop looks
    /// at claims, retries and stop requests again.
    public var blockTime: Duration
    /// Pending entries idle for longer than this (delivered to some consumer but not acknowledged,
    /// and not renewed) are taken over with `XAUTOCLAIM`. A live consumer renews its hold on its
    /// batch every `claimMinIdle / 3`, except while one handler call has run for `claimMinIdle`:
    /// so this must exceed the longest handler call, or that entry may be processed twice. Use the
    /// same value in every replica.
    public var claimMinIdle: Duration
    /// How often the consumer scans the group for entries to take over (it also scans at start).
    public var claimInterval: Duration
    /// How long after an entry's first failed attempt this consumer tries it again. The delay
    /// doubles with each further failed attempt of the entry, up to ``retryDelayMaximum``, so a
    /// dependency that is down for a while does not use up ``maxDeliveries`` within seconds.
    /// Every delay, the first too, is at most `claimMinIdle / 2`
    /// (``delayBeforeRetry(afterAttempt:)``).
    public var retryDelay: Duration
    /// The longest delay before an entry is tried again. The delay used never exceeds
    /// `claimMinIdle / 2` either: an entry waiting for its retry is idle, and this consumer tries it again before
    /// another replica may take it over, unless the entries it handles meanwhile keep it busy
    /// for the rest of `claimMinIdle` (the other replica then tries it at once).
    public var retryDelayMaximum: Duration
    /// How many times an entry is handed to the handler at most. After the last failed attempt, or
    /// when an entry arrives with a higher delivery count (replicas kept crashing on it), it is
    /// moved to ``deadLetterStream`` and acknowledged.
    public var maxDeliveries: Int
    /// Where entries go after ``maxDeliveries`` failed attempts. Default: `<stream>:dead`.
    public var deadLetterStream: String
    /// Approximate `MAXLEN` for the dead-letter stream, at least 1; `nil` (default) keeps every entry.
    public var deadLetterMaxLength: Int?
    /// The ID the group starts at if this consumer creates it first: `0` (default) for the whole
    /// stream, so no entry the gateway stored before the group existed is skipped; `$` for entries
    /// added from now on. A group found missing later is always re-created at `0`.
    public var groupStartID: String
    /// How gateway channels are named in Redis (must match the gateway's prefix).
    public var channelNaming: RedisChannelNaming
    /// Upper bound of the delay between reconnect attempts of the reading connection.
    public var reconnectBackoffMaximum: Duration
    /// The consumer's publisher's ``SwitchboardPublisher/appendfsyncAlways``: set it as the
    /// gateway's `redis.appendfsync-always`. Default false.
    public var appendfsyncAlways = false
    /// The consumer's publisher's ``SwitchboardPublisher/recordsHistory``. Default true.
    public var recordsHistory = true
    /// Consumers of the group with nothing pending that have been idle this long (`XINFO
    /// CONSUMERS`: no read tried; before Redis 7.2, no entry read) are deleted from the group by
    /// the claim pass, and a consumer stopping with nothing pending deletes its own name.
    /// Default one hour; `nil` keeps every name. A live consumer deleted while idle is created
    /// again by its next read; no pending entry is ever dropped. At least 1 ms.
    public var removeIdleConsumersAfter: Duration? = .seconds(3600)

    /// Creates a configuration for `stream`/`group` with defaults for everything else.
    public init(
        stream: String,
        group: String,
        consumerName: String = StreamConsumerConfiguration.defaultConsumerName(),
        batchSize: Int = 16,
        blockTime: Duration = .seconds(2),
        claimMinIdle: Duration = .seconds(30),
        claimInterval: Duration = .seconds(5),
        retryDelay: Duration = .seconds(1),
        retryDelayMaximum: Duration = .seconds(30),
        maxDeliveries: Int = 5,
        deadLetterStream: String? = nil,
        deadLetterMaxLength: Int? = nil,
        groupStartID: String = "0",
        channelNaming: RedisChannelNaming = RedisChannelNaming(),
        reconnectBackoffMaximum: Duration = .seconds(5)
    ) {
        self.stream = stream
        self.group = group
        self.consumerName = consumerName
        self.batchSize = batchSize
        self.blockTime = blockTime
        self.claimMinIdle = claimMinIdle
        self.claimInterval = claimInterval
        self.retryDelay = retryDelay
        self.retryDelayMaximum = retryDelayMaximum
        self.maxDeliveries = maxDeliveries
        self.deadLetterStream = deadLetterStream ?? stream + ":dead"
        self.deadLetterMaxLength = deadLetterMaxLength
        self.groupStartID = groupStartID
        self.channelNaming = channelNaming
        self.reconnectBackoffMaximum = reconnectBackoffMaximum
        self = self.normalized()
    }

    /// The settings within their bounds, as a ``StreamConsumer`` runs with them (`init` applies
    /// them, and the consumer applies them again to fields set afterwards): `batchSize` 1 to
    /// 1,000 (`XAUTOCLAIM` refuses a count of 0); `claimMinIdle` at least 1 ms (0 would take every
    /// entry of the other replicas, being handled or not), `claimInterval` and `blockTime` at
    /// least 10 ms and `reconnectBackoffMaximum` at least 100 ms (0 made a busy loop: reads
    /// every millisecond, reconnects without a pause); delays not negative, and `retryDelayMaximum` at least `retryDelay`;
    /// `maxDeliveries` at least 1 (0 dead-lettered entries taken again without a handler call);
    /// `deadLetterMaxLength` at least 1 (Redis refuses a negative `MAXLEN`, and every dead-letter
    /// attempt failed); durations at most a year (their milliseconds must fit Redis's arguments).
    public func normalized() -> StreamConsumerConfiguration {
        var c = self
        let longest = Duration.seconds(365 * 24 * 3600)
        func bounded(_ d: Duration, atLeast floor: Duration) -> Duration { min(max(floor, d), longest) }
        c.batchSize = min(max(1, c.batchSize), 1_000)
        c.blockTime = bounded(c.blockTime, atLeast: .milliseconds(10))
        c.claimMinIdle = bounded(c.claimMinIdle, atLeast: .milliseconds(1))
        c.claimInterval = bounded(c.claimInterval, atLeast: .milliseconds(10))
        c.retryDelay = bounded(c.retryDelay, atLeast: .zero)
        c.retryDelayMaximum = bounded(c.retryDelayMaximum, atLeast: c.retryDelay)
        c.reconnectBackoffMaximum = bounded(c.reconnectBackoffMaximum, atLeast: .milliseconds(100))
        c.maxDeliveries = max(1, c.maxDeliveries)
        c.deadLetterMaxLength = c.deadLetterMaxLength.map { max(1, $0) }
        c.removeIdleConsumersAfter = c.removeIdleConsumersAfter.map { bounded($0, atLeast: .milliseconds(1)) }
        return c
    }

    /// A consumer name unique per replica: `<hostname>-<pid>-<random>`, e.g. `web-7f9c-4211-k3q9z2`.
    public static func defaultConsumerName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        let host: String
        if gethostname(&buffer, buffer.count - 1) == 0 {
            host = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        } else {
            host = "host"
        }
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
        let random = String((0..<6).map { _ in alphabet.randomElement()! })
        return "\(host.isEmpty ? "host" : host)-\(getpid())-\(random)"
    }
}

extension StreamConsumerConfiguration {
    /// How long after its `attempt`-th failed attempt (1 for the first) an entry is tried again:
    /// ``retryDelay`` doubled per attempt after the first, at most ``retryDelayMaximum`` and
    /// `claimMinIdle / 2`.
    public func delayBeforeRetry(afterAttempt attempt: Int) -> Duration {
        let cap = min(self.retryDelayMaximum, self.claimMinIdle / 2)
        var delay = self.retryDelay
        for _ in 1..<max(1, attempt) {
            guard delay > .zero, delay < cap else { break }
            delay *= 2
        }
        return min(delay, cap)
    }
}

extension Duration {
    /// Whole milliseconds, rounded up.
    var kitMilliseconds: Int {
        let (seconds, attoseconds) = self.components
        // Saturating: a duration of Int64.max seconds trapped on the multiplication.
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1000)
        if overflow { return seconds < 0 ? 0 : Int(Int64.max / 2) }
        let ms = whole.addingReportingOverflow((attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
        if ms.overflow { return Int(Int64.max / 2) }
        return Int(max(0, ms.partialValue))
    }
}
