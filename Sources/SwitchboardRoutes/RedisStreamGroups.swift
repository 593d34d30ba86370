import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import Redis
import SwitchboardWire

/// Keeps the consumer groups of one stream route in existence, so that no entry the gateway
/// answered with a `RECEIPT` goes unread.
///
/// - A group is created with `XGROUP CREATE <stream> <group> 0 MKSTREAM` (an existing group is
///   left as it is): a group the gateway creates starts at the beginning of the stream, so an
///   entry stored before the group existed (Redis lost its data, the gateway wrote a few entries,
///   then noticed) is still delivered.
/// - The groups count as *verified* for one connection to Redis: after every reconnect (Redis
///   restarted, failed over to an empty replica; on a cluster, a lost connection to a node) they
///   are checked again, and the route's `XADD`s
///   wait until that is done (``whenVerified(on:)``).
/// - ``maintain(logger:)`` checks again every ``checkInterval`` anyway, which catches data lost
///   without a reconnect (`FLUSHALL`); entries written meanwhile are not skipped, as the group is
///   re-created at `0`.
/// - ``notReadyReason`` feeds `/health/ready`: the gateway is not ready while a group is unverified.
/// - Every ``lagInterval`` it reads each group's lag (`XINFO GROUPS`: entries not delivered to
///   the group yet) into `switchboard_redis_stream_group_lag{stream,group}`, and warns when a
///   group is within a tenth of the route's `max-length` of its end: `XADD … MAXLEN ~` then
///   trims entries that were answered with a `RECEIPT` before the group read them.
package final class RedisStreamGroups: Sendable {
    package let stream: String
    package let groups: [String]
    /// The route's `max-length` (entries past it are trimmed, read or not).
    package let maxLength: Int?
    let redis: GatewayRedis
    let eventLoop: any EventLoop
    /// How often ``maintain(logger:)`` reads the groups' lag.
    package static let lagInterval: Duration = .seconds(5)
    let lagGauges: [String: Metrics.Gauge]
    let pendingGauges: [String: Metrics.Gauge]
    /// How often ``maintain(logger:)`` re-creates missing groups when nothing else asks for it.
    package static let checkInterval: Duration = .seconds(1)

    struct State {
        /// The ``GatewayRedis/generation`` when the groups were last seen or created.
        var verifiedGeneration: Int?
        var inFlight: EventLoopFuture<[String]>?
        /// SENDs waiting for a verification before their `XADD`; while any waits, later SENDs
        /// wait too, so one session's entries keep their order.
        var waiting = 0
        var lastError: String?
        /// The last verification that succeeded, and on which connection: a SEND that finds
        /// others still waiting after it goes behind them, not through another verification.
        var lastPassed: (generation: Int, future: EventLoopFuture<[String]>)?
    }

    private let state = NIOLockedValueBox(State())

    /// - Parameter eventLoop: where verifications complete.
    package init(stream: String, groups: [String], maxLength: Int? = nil, redis: GatewayRedis, eventLoop: any EventLoop) {
        self.stream = stream
        self.groups = groups
        self.maxLength = maxLength
        self.redis = redis
        self.eventLoop = eventLoop
        var lag: [String: Metrics.Gauge] = [:]
        var pending: [String: Metrics.Gauge] = [:]
        for group in groups {
            lag[group] = Metrics.Gauge(label: "switchboard_redis_stream_group_lag", dimensions: [("stream", stream), ("group", group)])
            pending[group] = Metrics.Gauge(label: "switchboard_redis_stream_group_pending", dimensions: [("stream", stream), ("group", group)])
        }
        self.lagGauges = lag
        self.pendingGauges = pending
    }

    /// Reads the groups' lag and pending counts into their gauges; returns the groups within a
    /// tenth of ``maxLength`` of the stream's end (their lag), in the order of ``groups``.
    package func readLag() async throws -> [(group: String, lag: Int)] {
        let infos = try await self.redis.send(XINFOGROUPS(key: self.stream)).get()
        var near: [(group: String, lag: Int)] = []
        for group in self.groups {
            guard let info = infos.first(where: { $0.name == group }) else { continue }
            self.pendingGauges[group]?.record(info.pending)
            guard let lag = info.lag else { continue }
            self.lagGauges[group]?.record(lag)
            if let maxLength, lag >= maxLength - maxLength / 10 { near.append((group, lag)) }
        }
        return near
    }

    /// Whether the groups were verified on the current Redis connection.
    package var isVerified: Bool {
        let generation = self.redis.generation
        return self.state.withLockedValue { $0.verifiedGeneration == generation }
    }

    /// Why the route is not ready, or `nil` when its groups are verified.
    package var notReadyReason: String? {
        let generation = self.redis.generation
        return self.state.withLockedValue { state in
            guard state.verifiedGeneration != generation else { return nil }
            let names = self.groups.joined(separator: ", ")
            return "consumer groups \(names) of stream \(self.stream) not verified yet" + (state.lastError.map { " (\($0))" } ?? "")
        }
    }

    /// Runs `send` at once while the groups are verified; otherwise first verifies them
    /// (creating missing ones), then runs `send` on `eventLoop`. Fails if they cannot be verified.
    ///
    /// A SEND that comes while others still wait for a verification that has passed goes
    /// behind them (their order is kept) without verifying again: after a reconnect under
    /// steady traffic, SENDs kept coming while some waited, and each started a new round of
    /// `XGROUP CREATE` before its `XADD`, for as long as the traffic lasted.
    func whenVerified<T: Sendable>(on eventLoop: any EventLoop, _ send: @escaping @Sendable () -> EventLoopFuture<T>) -> EventLoopFuture<T> {
        let generation = self.redis.generation
        // Chosen in one locked section: a verification finishing between two let a SEND go
        // behind it while the SEND before it had started another, and overtake that one.
        let start = self.state.withLockedValue { state -> VerificationStart? in
            let verified = state.verifiedGeneration == generation
            if verified, state.waiting == 0 { return nil }
            state.waiting += 1
            // Verified: behind the verification that passed, even while another runs (the
            // periodic check, which may fail for reasons that say nothing of this connection).
            // The SENDs before it joined that one too, or an earlier one: the order holds.
            if verified, let passed = state.lastPassed, passed.generation == generation { return .joined(passed.future) }
            return self.joinOrStart(&state)
        }
        guard let start else { return send() }
        let stream = self.stream
        return self.run(start, generation: generation).hop(to: eventLoop)
            .flatMapErrorThrowing { error in
                self.state.withLockedValue { $0.waiting -= 1 }
                throw RouteError(.redisCommandFailed, "consumer groups of redis stream \(stream) could not be verified: \(error)")
            }
            .flatMap { _ in
                let future = send()
                self.state.withLockedValue { $0.waiting -= 1 }
                return future
            }
    }

    /// Whether a call starts a verification or joins the one in flight (or the last passed).
    private enum VerificationStart {
        case started(EventLoopPromise<[String]>)
        case joined(EventLoopFuture<[String]>)
    }

    /// Joins the verification in flight, or starts one. The promise is made only by the call
    /// that starts a verification: one made and then dropped because another call's is in
    /// flight would never be completed (a leak NIO traps on in debug builds).
    private func joinOrStart(_ state: inout State) -> VerificationStart {
        if let inFlight = state.inFlight { return .joined(inFlight) }
        let promise = self.eventLoop.makePromise(of: [String].self)
        state.inFlight = promise.futureResult
        return .started(promise)
    }

    /// Creates the groups that are missing (one verification at a time). The future gives the
    /// groups that had to be created.
    func verify() -> EventLoopFuture<[String]> {
        let generation = self.redis.generation
        return self.run(self.state.withLockedValue { self.joinOrStart(&$0) }, generation: generation)
    }

    /// Sends the verification `start` started (`XGROUP CREATE` of each group) on the
    /// connection of `generation`; the future of the one joined as it is.
    private func run(_ start: VerificationStart, generation: Int) -> EventLoopFuture<[String]> {
        let promise: EventLoopPromise<[String]>
        switch start {
        case .started(let made): promise = made
        case .joined(let running): return running
        }
        let creations = self.groups.map { group in
            self.redis.send(XGROUPCREATE(key: self.stream, group: group, id: "0", makeStream: true))
                .map { _ in Optional(group) }
                .flatMapErrorThrowing { error in
                    if let error = error as? RedisServerError, error.isBusyGroup { return nil }
                    throw error
                }
        }
        EventLoopFuture.whenAllComplete(creations, on: promise.futureResult.eventLoop).whenSuccess { results in
            var created: [String] = []
            var failure: (any Error)?
            for result in results {
                switch result {
                case .success(let group): if let group { created.append(group) }
                case .failure(let error): failure = failure ?? error
                }
            }
            self.state.withLockedValue { state in
                state.inFlight = nil
                if let failure {
                    state.lastError = "\(failure)"
                } else {
                    state.verifiedGeneration = generation
                    state.lastError = nil
                    state.lastPassed = (generation, promise.futureResult)
                }
            }
            if let failure { promise.fail(failure) } else { promise.succeed(created) }
        }
        return promise.futureResult
    }

    /// Verifies the groups until the task is cancelled: at once, within 100 ms of a reconnect, and
    /// every ``checkInterval``. Logs groups it had to re-create.
    package func maintain(logger: Logger) async {
        let clock = ContinuousClock()
        var nextCheck = clock.now
        var nextLagRead = clock.now
        var lastLagWarning: ContinuousClock.Instant?
        var failures = 0
        var everVerified = false
        while !Task.isCancelled {
            if clock.now >= nextLagRead, self.isVerified {
                nextLagRead = clock.now + Self.lagInterval
                if let near = try? await self.readLag(), !near.isEmpty, lastLagWarning.map({ clock.now - $0 >= .seconds(60) }) ?? true {
                    lastLagWarning = clock.now
                    logger.warning(
                        "consumer groups are near the stream's max-length: entries past it are trimmed before they read them",
                        metadata: [
                            "stream": "\(self.stream)", "groups": "\(near.map { "\($0.group) (\($0.lag) behind)" }.joined(separator: ", "))",
                            "max-length": "\(self.maxLength ?? 0)",
                        ])
                }
            }
            if clock.now >= nextCheck || !self.isVerified {
                do {
                    let created = try await self.verify().get()
                    if !created.isEmpty {
                        let metadata: Logger.Metadata = ["stream": "\(self.stream)", "groups": "\(created.joined(separator: ","))"]
                        if everVerified {
                            logger.warning("consumer groups were missing (Redis lost its data?); re-created at 0", metadata: metadata)
                        } else {
                            logger.info("consumer groups created at 0", metadata: metadata)
                        }
                    }
                    everVerified = true
                    failures = 0
                    nextCheck = clock.now + Self.checkInterval
                } catch {
                    // Retried every 100 ms (a command fails at once while Redis is unreachable);
                    // logged after 1 s, not for the usual wait for the first connection.
                    failures += 1
                    if failures == 10 || failures % 50 == 0 {
                        logger.warning("cannot verify consumer groups yet; retrying", metadata: ["stream": "\(self.stream)", "error": "\(error)"])
                    }
                }
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }
}
