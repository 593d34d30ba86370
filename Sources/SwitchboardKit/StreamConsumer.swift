import Logging
import NIOConcurrencyHelpers
import NIOCore
import Redis
import STOMPCodec
import SwitchboardWire

/// Reads a gateway outbound stream as one consumer of a consumer group and hands each entry to a
/// handler, acknowledging it only after the handler succeeded.
///
/// What ``run(_:)`` does:
/// - creates the group if it is missing (`XGROUP CREATE <stream> <group> 0 MKSTREAM`); a group
///   that vanishes later (Redis lost its data: `NOGROUP`) is re-created at `0` and reading goes on;
/// - processes this consumer's own pending entries first (`XPENDING`, then `XRANGE`), then reads
///   new ones with a blocking `XREADGROUP … >` on a dedicated connection;
/// - `XACK`s an entry once the handler returned; a throwing handler leaves it pending, and it is
///   retried after ``StreamConsumerConfiguration/retryDelay``, doubled with each failed attempt
///   of the entry up to ``StreamConsumerConfiguration/retryDelayMaximum``;
/// - takes over entries idle past ``StreamConsumerConfiguration/claimMinIdle`` (a crashed
///   replica's) with `XAUTOCLAIM`, at start and every ``StreamConsumerConfiguration/claimInterval``;
/// - while working through a batch, renews its hold on the entries not finished yet every
///   `claimMinIdle / 3` (`XCLAIM … JUSTID` of those still its own), so a live replica keeps them;
/// - moves an entry to ``StreamConsumerConfiguration/deadLetterStream`` (with `original-id`,
///   `deliveries`, `last-error`) and acknowledges it after ``StreamConsumerConfiguration/maxDeliveries``
///   attempts. Redis's delivery count is the count of handler attempts: an entry taken again
///   (re-read or claimed: `XAUTOCLAIM … JUSTID`) is counted just before its handler starts, so an
///   entry that crashes replica after replica reaches the limit, and the entries taken with it
///   (never attempted) do not. A stop in the middle of a batch gives back the attempt
///   `XREADGROUP … >` counted for the entries not started; a crash cannot (they keep one);
/// - reconnects with backoff when the connection is lost.
///
/// Entries are handled one at a time, in order; scale out with more replicas (consumers).
/// Delivery is at least once: an entry is handled twice only when a replica dies (or loses Redis
/// for `claimMinIdle`) after its handler started, or when one handler call runs longer than
/// `claimMinIdle` (its hold is not renewed past that, so a stuck handler cannot keep entries
/// forever). A handler must tolerate seeing an entry again.
///
/// ```swift
/// let consumer = StreamConsumer(client: client, configuration: .init(stream: "GREETING_CHANNEL_OUTBOUND", group: "greeting-service"))
/// try await consumer.run { message in
///     try await consumer.publish(destination: "/topic/greetings", body: "Hello, \(message.bodyString)!")
/// }
/// ```
public final class StreamConsumer: Sendable {
    /// Handles one entry. Returning acknowledges it; throwing leaves it pending for a retry.
    public typealias Handler = @Sendable (IncomingMessage) async throws -> Void

    /// The settings this consumer runs with.
    public let configuration: StreamConsumerConfiguration
    /// The Redis (one server or a cluster): `PUBLISH` and group creation run on it, and it opens the
    /// dedicated reading connection (on a cluster, to the primary owning the stream).
    public let redis: GatewayRedis
    /// Publishes to destinations and sessions, with this consumer's name as origin (and the
    /// configuration's ``StreamConsumerConfiguration/appendfsyncAlways`` and
    /// ``StreamConsumerConfiguration/recordsHistory``).
    public let publisher: SwitchboardPublisher
    let logger: Logger
    let state = NIOLockedValueBox(State())

    struct State {
        var running = false
        var stopRequested = false
        var connection: RedisConnection?
        /// The reading connection's `CLIENT ID` (nil: not known).
        var connectionID: Int?
        var blocking = false
        var lastErrors: [String: String] = [:]
        /// When an entry that failed here may be tried again (at most 10,000 kept: past that,
        /// those due already go, then the ones due first, retried at the next pass).
        var retryNotBefore: [String: ContinuousClock.Instant] = [:]
        var statistics = StreamConsumerStatistics()
        /// Blocking reads that succeeded (progress, for the reconnect backoff).
        var reads = 0
        /// Entries whose handler succeeded lately (see ``HandledEntries``).
        var handled = HandledEntries()
        /// Entries of a batch read by `XREADGROUP … >` whose handler had not started when its
        /// session ended: the next session gives their attempt back first (at most 10,000).
        var attemptsToGiveBack: [String] = []
        /// Entries handled whose `XACK` failed on both connections: acknowledged when this
        /// consumer takes its pending entries again, or at its stop (at most 10,000).
        var unacknowledged: [String] = []
        /// Entries added to the dead-letter stream whose `XACK` failed (the two-step way), with
        /// the dead-letter entry's id: a later try only acknowledges them (at most 10,000).
        var deadLetterAdded: [String: String] = [:]
        /// Where the next claim pass starts (`0-0`: at the beginning of the pending entries).
        var claimCursor = "0-0"
        /// When ``removeIdleConsumers(on:)`` may run next.
        var nextConsumerSweep: ContinuousClock.Instant?
        var consumerSweepFailed = false
    }

    /// Keeps when `id` may be tried again (at most ``retriesKept`` times kept, pruned past it).
    static func keepRetry(_ id: String, notBefore: ContinuousClock.Instant, now: ContinuousClock.Instant, in state: inout State) {
        if state.retryNotBefore.count >= Self.retriesKept {
            state.retryNotBefore = Self.pruned(state.retryNotBefore, at: now, limit: Self.retriesKept)
        }
        state.retryNotBefore[id] = notBefore
    }

    /// The last entries whose handler succeeded here, oldest first out. An entry that comes back
    /// pending for this consumer after its handler succeeded (its `XACK` failed, e.g. a `MOVED`
    /// while its slot moved or a lost connection, or was lost with a primary that died before
    /// replicating it) is acknowledged again instead of handled again.
    struct HandledEntries {
        static let limit = 10_000
        private var ids: Set<String> = []
        private var order: [String] = []
        private var head = 0

        func contains(_ id: String) -> Bool { ids.contains(id) }

        mutating func insert(_ id: String) {
            guard ids.insert(id).inserted else { return }
            order.append(id)
            if ids.count > Self.limit {
                ids.remove(order[head])
                head += 1
                if head > Self.limit {
                    order.removeFirst(head)
                    head = 0
                }
            }
        }
    }

    /// This consumer's name in the group.
    public var name: String { self.configuration.consumerName }

    /// Counters since this consumer was created.
    public var statistics: StreamConsumerStatistics { self.state.withLockedValue { $0.statistics } }

    /// Whether ``run(_:)`` is executing.
    public var isRunning: Bool { self.state.withLockedValue { $0.running } }

    /// - Parameters:
    ///   - client: a started ``RedisClient`` (pub/sub is not needed: `enableSubscriptions: false` is fine).
    ///   - configuration: stream, group and tuning.
    public convenience init(
        client: RedisClient, configuration: StreamConsumerConfiguration, logger: Logger = Logger(label: "SwitchboardKit.StreamConsumer")
    ) {
        self.init(redis: .single(client), configuration: configuration, logger: logger)
    }

    /// - Parameters:
    ///   - redis: one server (``GatewayRedis/single(_:)``, a started ``RedisClient``) or a Redis
    ///     Cluster (``GatewayRedis/cluster(_:)``, a started ``RedisClusterClient``: the group's
    ///     commands go to the primary owning the stream, and replies use sharded Pub/Sub).
    ///   - configuration: stream, group and tuning.
    public init(redis: GatewayRedis, configuration: StreamConsumerConfiguration, logger: Logger = Logger(label: "SwitchboardKit.StreamConsumer")) {
        self.redis = redis
        let configuration = configuration.normalized()
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "consumer"] = "\(configuration.consumerName)"
        self.logger = logger
        var publisher = SwitchboardPublisher(redis: redis, origin: configuration.consumerName, naming: configuration.channelNaming)
        publisher.appendfsyncAlways = configuration.appendfsyncAlways
        publisher.recordsHistory = configuration.recordsHistory
        self.publisher = publisher
    }

    /// Grows whenever a session makes progress: a read, an entry handled, dead-lettered or
    /// found trimmed.
    var progressMarker: Int {
        self.state.withLockedValue { $0.reads &+ $0.statistics.processed &+ $0.statistics.deadLettered &+ $0.statistics.trimmed }
    }

    // MARK: Running

    /// Consumes the stream until ``stop()`` is called or the calling task is cancelled.
    ///
    /// Connection problems are logged and retried, so this returns only once stopped. On stop the
    /// handler call in flight (which does not see the cancellation) finishes and its entry is
    /// acknowledged; entries read but not yet handled stay pending and are taken over by another
    /// replica after `claimMinIdle`, or by this consumer name at its next start. With nothing
    /// pending, the consumer name is deleted from the group
    /// (``StreamConsumerConfiguration/removeIdleConsumersAfter`` not nil).
    /// - Throws: ``SwitchboardKitError/alreadyRunning`` if called twice concurrently.
    public func run(_ handler: @escaping Handler) async throws {
        try self.state.withLockedValue { state in
            guard !state.running else { throw SwitchboardKitError.alreadyRunning }
            state.running = true
        }
        defer { self.state.withLockedValue { $0.running = false } }
        self.logger.info("stream consumer starting", metadata: ["stream": "\(self.configuration.stream)", "group": "\(self.configuration.group)"])
        await withTaskCancellationHandler {
            await self.loop(handler)
        } onCancel: {
            self.stop()
        }
        self.logger.info("stream consumer stopped")
    }

    /// Asks ``run(_:)`` to return: a blocking read is interrupted at once (`CLIENT UNBLOCK`: a
    /// batch Redis delivered meanwhile is given back, its attempt uncounted), a running handler is
    /// allowed to finish (and its entry acknowledged). Returns immediately; await `run` to know
    /// when the consumer has stopped. Calling it before `run` makes `run` return immediately; a
    /// stopped consumer does not run again (create a new one).
    public func stop() {
        let blocked = self.state.withLockedValue { state -> (connection: RedisConnection, id: Int?)? in
            state.stopRequested = true
            guard state.blocking, let connection = state.connection else { return nil }
            return (connection, state.connectionID)
        }
        guard let blocked else { return }
        guard let id = blocked.id else {
            // Closing interrupts `XREADGROUP BLOCK`; nothing else is in flight on this connection then.
            blocked.connection.channel.close(promise: nil)
            return
        }
        // `CLIENT UNBLOCK` ends the read as its timeout would: Redis answers it empty, or with
        // the entries it had just delivered, which the stop gives back (their attempt
        // uncounted). Closing the connection under the read lost such a batch's reply: its
        // entries waited for a claim, an attempt used up. Closed after all when the read is
        // not blocked in Redis yet after a few tries, or Redis does not answer.
        // Within 2 s at most (Redis hung, the id looked up on another server after a failover,
        // an ACL refusing it): then closed. (Half a second was too short on a loaded machine:
        // the read was closed under a Redis that was only slow, and the name it would have
        // removed at a clean end stayed.) Once Redis said it unblocked the read, its
        // answer (maybe a batch, given back by the stop) is on its way: closed only if it has
        // not come 2 s later.
        let stream = self.configuration.stream
        let connection = blocked.connection
        let stillBlocked: @Sendable () -> Bool = { self.state.withLockedValue { $0.blocking && $0.connection === connection } }
        let unblocked = NIOLockedValueBox<Bool?>(nil)  // nil: no answer yet; false: refused
        Task {
            let unblocking = Task {
                while !Task.isCancelled, stillBlocked() {
                    let unblock = RawCommand(arguments: ["CLIENT", "UNBLOCK", .integer(id)], keys: [stream])
                    do {
                        if try await Int(fromRESP: self.redis.execute(unblock)) == 1 {
                            unblocked.withLockedValue { $0 = true }
                            return
                        }
                    } catch is RedisServerError {
                        unblocked.withLockedValue { $0 = false }  // refused for good (an ACL)
                        return
                    } catch {}
                    try? await Task.sleep(for: .milliseconds(20))
                }
            }
            let deadline = ContinuousClock.now + .seconds(2)
            while ContinuousClock.now < deadline, stillBlocked(), unblocked.withLockedValue({ $0 }) == nil {
                try? await Task.sleep(for: .milliseconds(10))
            }
            unblocking.cancel()
            // Unblocked: the read's answer is on its way, unless another server's client of the
            // same id was (a failover moved the command connection): closed after 2 s then.
            if unblocked.withLockedValue({ $0 }) == true {
                let answered = ContinuousClock.now + .seconds(2)
                while ContinuousClock.now < answered, stillBlocked() { try? await Task.sleep(for: .milliseconds(10)) }
            }
            if stillBlocked() { connection.channel.close(promise: nil) }
        }
    }

    var isStopRequested: Bool { self.state.withLockedValue { $0.stopRequested } }

    /// Creates the consumer group (`XGROUP CREATE … MKSTREAM`, at
    /// ``StreamConsumerConfiguration/groupStartID``) unless it exists. `run` does this too.
    public func createGroup() async throws {
        _ = try await self.createGroupIfMissing(at: self.configuration.groupStartID, on: nil)
    }

    /// Creates the group at `startID` unless it exists, on `connection` (or the client's). Returns
    /// whether it had to be created.
    func createGroupIfMissing(at startID: String, on connection: RedisConnection?) async throws -> Bool {
        let command = XGROUPCREATE(key: self.configuration.stream, group: self.configuration.group, id: startID, makeStream: true)
        do {
            if let connection { _ = try await connection.execute(command) } else { _ = try await self.redis.execute(command) }
            return true
        } catch let error as RedisServerError where error.isBusyGroup {
            return false
        }
    }

    // MARK: Publishing

    /// Publishes to every subscriber of `destination` on every gateway instance
    /// (`PUBLISH switchboard:dest:<destination>`). See ``SwitchboardPublisher``.
    @discardableResult
    public func publish(destination: String, body: ByteBuffer, headers: STOMPHeaders = [:], contentType: String? = nil) async throws -> Int {
        try await self.publisher.publish(destination: destination, body: body, headers: headers, contentType: contentType)
    }

    /// Publishes a text body to every subscriber of `destination`.
    @discardableResult
    public func publish(destination: String, body: String, headers: STOMPHeaders = [:], contentType: String? = "text/plain") async throws -> Int {
        try await self.publisher.publish(destination: destination, body: body, headers: headers, contentType: contentType)
    }

    /// Answers only the session that sent `message`, on its subscriptions matching `destination`
    /// (`PUBLISH switchboard:instance:<message.instance>` with a `session` header).
    @discardableResult
    public func reply(
        to message: IncomingMessage, destination: String, body: ByteBuffer, headers: STOMPHeaders = [:], contentType: String? = nil
    ) async throws -> Int {
        try await self.publisher.reply(to: message, destination: destination, body: body, headers: headers, contentType: contentType)
    }

    /// Answers only the session that sent `message`, with a text body.
    @discardableResult
    public func reply(
        to message: IncomingMessage, destination: String, body: String, headers: STOMPHeaders = [:], contentType: String? = "text/plain"
    ) async throws -> Int {
        try await self.publisher.reply(to: message, destination: destination, body: body, headers: headers, contentType: contentType)
    }
}

/// Counters of a ``StreamConsumer``.
public struct StreamConsumerStatistics: Sendable, Hashable {
    /// Entries whose handler succeeded (counted just before their `XACK`).
    public var processed = 0
    /// Handler calls that threw.
    public var failures = 0
    /// Entries moved to the dead-letter stream.
    public var deadLettered = 0
    /// Entries taken over from idle consumers with `XAUTOCLAIM`.
    public var claimed = 0
    /// Times the reading connection was (re)opened.
    public var connects = 0
    /// Pending entries found trimmed from the stream before they were handled (the route's
    /// `max-length` reached while backends were behind, or an `XTRIM`/`XDEL`): lost, not handled.
    public var trimmed = 0
    /// Moves to the dead-letter stream that Redis refused (an ACL, a key of another type,
    /// `OOM`): each entry stays pending and is tried again.
    public var deadLetterFailures = 0
    /// Idle consumers with nothing pending removed from the group
    /// (``StreamConsumerConfiguration/removeIdleConsumersAfter``).
    public var consumersRemoved = 0

    /// All zero.
    public init() {}
}
