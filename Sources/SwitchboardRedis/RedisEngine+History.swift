import NIOConcurrencyHelpers
import NIOCore
import Redis
import SwitchboardCore
import SwitchboardRoutes
import SwitchboardWire
import Synchronization

/// History in Redis mode: recording through the history function, delivering each
/// destination's messages in order with live gap repair, and resuming subscriptions.
///
/// - **Recording.** A publish to a destination that keeps history is one `FCALL
///   switchboard_publish` (see ``HistoryFunctions``): numbered, kept and published in one
///   atomic step. It is not delivered locally first: every instance, this one included, gets
///   it from Redis, so every subscriber sees one order. The publisher's answer means stored.
/// - **Order.** Per destination with local interest, a ``DestinationSequencer`` delivers in
///   sequence order; a hole (a Pub/Sub message lost, e.g. the subscriber connection dropped)
///   is filled from the history by one read at a time; after the subscriber connection comes
///   back every destination reads what it missed.
/// - **Resume.** A `SUBSCRIBE` is registered at the position the instance has delivered up to,
///   and its replay is read from history up to that position.
extension RedisEngine {
    /// Whether `destination` keeps history in Redis.
    package func keepsHistory(_ destination: String) -> Bool {
        history?.covers(destination) ?? false
    }

    /// Records and publishes `message` (one atomic step in Redis); `once` makes a publish that
    /// several instances make (an inbound route) count once.
    func record(_ message: PublishedMessage, once: String?) -> EventLoopFuture<StreamPosition?> {
        recordAsIs(message, once: once)
            .flatMapErrorThrowing { error in
                self.publishFailures.add(1, ordering: .relaxed)
                if RouteError.replyLost(error) {
                    // Sent, but no reply: Redis may have recorded and published it.
                    throw RouteError(
                        .outcomeUnknown,
                        "redis connection lost before the reply (\(error)); the message may or may not have been published, and sending it again without an idempotency key may deliver it twice"
                    )
                }
                // A refusal (OOM, READONLY, a script error) is not an outage: say which it was.
                let why = error is RedisServerError ? "redis refused it" : "redis unavailable"
                throw RouteError(.redisUnavailable, "\(why) (\(error)); not published")
            }
    }

    /// ``record(_:once:)`` failing with the client's own error (``willPass(_:)`` can tell it).
    private func recordAsIs(_ message: PublishedMessage, once: String?) -> EventLoopFuture<StreamPosition?> {
        let window = history?.window(for: message.destination) ?? (100, .minutes(5))
        let command = HistoryPublish(
            key: naming.historyKey(forDestination: message.destination), payload: RedisEnvelope.encode(message, origin: instanceID),
            maxLength: window.maxLength, ttlMilliseconds: window.ttl.nanoseconds / 1_000_000, once: once, sharded: redis.isCluster,
            durable: durableRedis)
        let start = NIODeadline.now()
        let timer = publishTimer
        return HistoryFunctions.call(command, on: redis).map { result in
            timer.recordNanoseconds((NIODeadline.now() - start).nanoseconds)
            return result.position
        }
    }

    /// Publishes a message of an inbound route: recorded once when its destination keeps
    /// history (`once` is the same on every instance), else delivered to this instance's
    /// subscribers as before. Returns the recording (nil: delivered here); it fails with the
    /// Redis client's own error, which ``willPass(_:)`` tells apart, and the caller decides
    /// whether to try again (the same `once` records the message at most once).
    @discardableResult
    package func publishInbound(_ message: PublishedMessage, once: String) -> EventLoopFuture<Void>? {
        guard keepsHistory(message.destination) else {
            hub.deliver(message)
            return nil
        }
        return recordAsIs(message, once: once).map { _ in }.flatMapErrorThrowing { error in
            self.publishFailures.add(1, ordering: .relaxed)
            throw error
        }
    }

    // MARK: Order

    /// Learns where `destination` stands once the instance is subscribed to it.
    func establish(_ interest: Interest, destination: String) async throws {
        let read = try await HistoryFunctions.call(HistoryRead(key: naming.historyKey(forDestination: destination), range: .none, durable: durableRedis), on: redis).get()
        let waiters: [EventLoopPromise<StreamPosition>] = interest.sequenced!.withLockedValue { s in
            let actions = s.sequencer.established(at: read.position)
            carryOut(actions, interest: interest, destination: destination, in: &s)
            s.lastFailure = nil
            defer { s.waiters.removeAll() }
            return s.waiters
        }
        for waiter in waiters { waiter.succeed(read.position) }
    }

    /// ``establish(_:destination:)`` until it succeeds or the interest is gone. While Redis is
    /// unreachable the subscriptions waiting keep waiting, each until its own deadline
    /// (``unreachableWait``, see ``registerWithHistory(_:from:on:register:)``); any other failure,
    /// or any failure with no wait configured, fails them (their clients get an `ERROR`), and
    /// later ones wait for the next attempt.
    func establishRetrying(_ interest: Interest, destination: String) async {
        var attempt = 0
        while !interest.cancelled.load(ordering: .relaxed) && !Task.isCancelled {
            do {
                try await establish(interest, destination: destination)
                return
            } catch {
                logger.log(
                    level: .warning, throttledBy: InputLogs.historyUnread, "reading where a destination's history stands failed; retrying",
                    metadata: ["destination": "\(destination)", "error": "\(error)"])
                interest.sequenced!.withLockedValue { $0.lastFailure = "\(error)" }
                if unreachableWait == .zero || !Self.isUnreachable(error) { failWaiters(interest, error, terminal: false) }
                attempt += 1
                // At most half a second apart: a subscription waiting goes on soon after Redis is back.
                try? await Task.sleep(for: .milliseconds(min(50 << min(attempt, 4), 500)))
            }
        }
        failWaiters(interest, RouteError(.abandoned, "no subscriber left"))
    }

    /// Whether `error` says Redis cannot be reached or cannot answer yet (disconnected, the
    /// connection lost, a timeout, a failover, a restarted server still loading its data, a
    /// cluster slot migrating for longer than the client's retries): a read may be tried again.
    static func isUnreachable(_ error: any Error) -> Bool {
        if let error = error as? RedisClientError {
            return [
                .notConnected, .connectionClosed, .commandTimeout, .connectTimeout, .noPrimary, .notPrimary, .clusterUnavailable, .queueFull,
                .tooManyRedirects,
            ].contains(error)
        }
        if let error = error as? RedisServerError { return ["LOADING", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN"].contains(error.code) }
        return false
    }

    /// Whether a failed read is worth asking again, whatever is buffered: Redis unreachable
    /// (``isUnreachable(_:)``), or refusing for a while: out of memory (`OOM`: the history
    /// read may write, so it is refused over `maxmemory`), a script running too long (`BUSY`),
    /// a primary demoted during a failover (`READONLY`), a failing snapshot (`MISCONF`) or too
    /// few replicas (`NOREPLICAS`). Messages missed meanwhile are read once it passes, not at
    /// the next publish.
    static func willPass(_ error: any Error) -> Bool {
        if isUnreachable(error) { return true }
        guard let error = error as? RedisServerError else { return false }
        return ["OOM", "BUSY", "READONLY", "MISCONF", "NOREPLICAS"].contains(error.code)
    }

    /// The failure of a client step that waited `wait` for an unreachable Redis: "redis
    /// unreachable for N ms" and what still failed.
    static func unreachable(for wait: TimeAmount, _ detail: String) -> RouteError {
        RouteError(.redisUnavailable, "redis unreachable for \(wait.nanoseconds / 1_000_000) ms\(detail)")
    }

    /// `read` (idempotent), again every 100 ms while Redis is unreachable, the last time at
    /// `deadline`; then the last failure, saying how long it waited.
    func readRetrying<T: Sendable>(until deadline: NIODeadline, _ read: @escaping @Sendable () -> EventLoopFuture<T>) -> EventLoopFuture<T> {
        let wait = unreachableWait
        return read().flatMapError { error in
            let loop = self.promiseLoop
            guard Self.isUnreachable(error), wait > .zero, !self.stopping.load(ordering: .sequentiallyConsistent) else {
                return loop.makeFailedFuture(error)
            }
            let now = NIODeadline.now()
            guard now < deadline else {
                return loop.makeFailedFuture(Self.unreachable(for: wait, " (\(error))"))
            }
            // The last try is at the deadline.
            self.retriesPending.add(1, ordering: .sequentiallyConsistent)
            return loop.flatScheduleTask(deadline: min(now + .milliseconds(100), deadline)) {
                self.retriesPending.subtract(1, ordering: .sequentiallyConsistent)
                return self.readRetrying(until: deadline, read)
            }.futureResult
        }
    }

    /// Fails `waiter` at `deadline` if it is still waiting for `destination`'s position then.
    func expire(
        _ waiter: EventLoopPromise<StreamPosition>, of sequenced: NIOLockedValueBox<Interest.Sequenced>, destination: String,
        at deadline: NIODeadline
    ) {
        let wait = unreachableWait
        let timeout = waiter.futureResult.eventLoop.scheduleTask(deadline: deadline) {
            let failure: String?? = sequenced.withLockedValue { s in
                guard let i = s.waiters.firstIndex(where: { $0.futureResult === waiter.futureResult }) else { return nil }
                s.waiters.remove(at: i)
                return .some(s.lastFailure)
            }
            guard let failure else { return }
            waiter.fail(Self.unreachable(for: wait, ": where \(destination) stands could not be read (\(failure ?? "no answer yet"))"))
        }
        waiter.futureResult.whenComplete { _ in timeout.cancel() }
    }

    /// Fails the registrations waiting for `interest`'s position; with `terminal` (the
    /// subscription failed, or the interest ended: no position will come) those to come too.
    func failWaiters(_ interest: Interest, _ error: any Error, terminal: Bool = true) {
        let failure = (error as? RouteError) ?? RouteError(.subscribeFailed, "redis subscribe failed: \(error)")
        let waiters = interest.sequenced?.withLockedValue { s in
            defer { s.waiters.removeAll() }
            if terminal { s.failed = failure }
            return s.waiters
        }
        for waiter in waiters ?? [] { waiter.fail(failure) }
    }

    /// A positioned message arrived on the channel of a destination with local interest.
    func sequence(_ message: PublishedMessage, interest: Interest, destination: String) {
        interest.sequenced!.withLockedValue { s in
            carryOut(s.sequencer.receive(message), interest: interest, destination: destination, in: &s)
        }
    }

    /// Adds `n` to `counter`, stopping at `Int.max` (an atomic's `add` traps on overflow).
    static func addSaturating(_ n: Int, to counter: borrowing Synchronization.Atomic<Int>) {
        var total = counter.load(ordering: .relaxed)
        while true {
            let (sum, overflow) = total.addingReportingOverflow(n)
            let (exchanged, original) = counter.compareExchange(expected: total, desired: overflow ? .max : sum, ordering: .relaxed)
            if exchanged { return }
            total = original
        }
    }

    /// Delivers (under the sequencer's lock, so the hub gets one order) and starts a repair.
    /// Nothing once the interest is cancelled: the hub's subscribers of the destination are then
    /// a later interest's, which has its own position (an old interest's establishing read or
    /// repair would otherwise hand them copies from before it, cutting a resume's replay short).
    private func carryOut(_ actions: DestinationSequencer.Actions, interest: Interest, destination: String, in s: inout Interest.Sequenced) {
        guard !interest.cancelled.load(ordering: .relaxed) else { return }
        for message in actions.deliver { hub.deliver(message, scope: .exact, generation: interest.generation) }
        if actions.skipped > 0 {
            // At most 2^40 per hole: a forged position counts billions of billions (no real hole
            // comes near), and the total saturates rather than trap.
            let counted = Int(min(actions.skipped, 1 << 40))
            Self.addSaturating(counted, to: historySkipped)
            skippedCounter.increment(by: Int64(counted))
            logger.log(
                level: .warning, throttledBy: InputLogs.holes, "history hole could not be repaired; subscribers see the jump in x-position",
                metadata: ["destination": "\(destination)", "skipped": "\(actions.skipped)"])
        }
        if let after = actions.repairAfter { repair(interest, destination: destination, after: after) }
        if let timer = actions.retryAfter {
            promiseLoop.scheduleTask(in: timer.delay) {
                guard !interest.cancelled.load(ordering: .relaxed) else { return }
                interest.sequenced!.withLockedValue { s in
                    self.carryOut(s.sequencer.retryRepair(timer: timer.number), interest: interest, destination: destination, in: &s)
                }
            }
        }
    }

    /// Reads the history after `after` and hands it to the sequencer; retried while it fails.
    /// Runs later on the engine's loop: it is asked for under the sequencer's lock, and a
    /// future that fails at once would complete inside it.
    private func repair(_ interest: Interest, destination: String, after: StreamPosition) {
        promiseLoop.execute { self.startRepair(interest, destination: destination, after: after) }
    }

    private func startRepair(_ interest: Interest, destination: String, after: StreamPosition) {
        historyRepairs.add(1, ordering: .relaxed)
        repairCounter.increment()
        readHistory(destination, after: after.sequence).whenComplete { result in
            guard !interest.cancelled.load(ordering: .relaxed) else { return }
            switch result {
            case .success(let read):
                let messages = read.envelopes.compactMap { self.message(fromEnvelope: $0, destination: destination) }
                interest.sequenced!.withLockedValue { s in
                    self.carryOut(s.sequencer.repaired(newest: read.position, messages: messages), interest: interest, destination: destination, in: &s)
                }
            case .failure(let error):
                let transient = Self.willPass(error)
                if transient {
                    self.logger.debug("history repair failed; retrying", metadata: ["destination": "\(destination)", "error": "\(error)"])
                } else {
                    self.logger.log(
                        level: .warning, throttledBy: InputLogs.historyUnread,
                        "history read failed with a refusal that does not pass by itself; retried only while messages wait behind a gap",
                        metadata: ["destination": "\(destination)", "error": "\(error)"])
                }
                interest.sequenced!.withLockedValue { s in
                    self.carryOut(s.sequencer.repairFailed(transient: transient), interest: interest, destination: destination, in: &s)
                }
            }
        }
    }

    /// The subscriber connection is back (its subscriptions too): every destination reads what
    /// was published while it was away.
    func subscriberReconnected() { repairAllDestinations() }

    /// Every destination with local interest reads what this instance may have missed (after
    /// the subscriber connection came back, or the delivery canary did): one read each, unless
    /// one is running.
    func repairAllDestinations() {
        let interests = state.withLockedValue { s in s.exact.filter { $0.value.sequenced != nil } }
        repair(interests)
    }

    /// The destinations whose shard channels were subscribed again (a slot moved, its primary
    /// failed over) read what this instance may have missed meanwhile.
    func repairDestinations(_ destinations: [String]) {
        let interests = state.withLockedValue { s in
            destinations.compactMap { d in s.exact[d].flatMap { $0.sequenced != nil ? (d, $0) : nil } }
        }
        repair(Dictionary(interests, uniquingKeysWith: { a, _ in a }))
    }

    private func repair(_ interests: [String: Interest]) {
        for (destination, interest) in interests {
            interest.sequenced!.withLockedValue { s in
                carryOut(s.sequencer.reconnected(), interest: interest, destination: destination, in: &s)
            }
        }
    }

    func message(fromEnvelope envelope: ByteBuffer, destination: String) -> PublishedMessage? {
        guard let decoded = RedisEnvelope.decode(envelope), let position = decoded.position else { return nil }
        return PublishedMessage(
            destination: destination, messageID: decoded.messageID ?? messageIDs.next(), headers: decoded.headers, body: decoded.body,
            position: position)
    }

    // MARK: Resume

    package func registerWithHistory(
        _ destination: String, from start: HistoryStart?, on eventLoop: any EventLoop, register: () -> Void
    ) -> HistoryRegistration? {
        guard keepsHistory(destination) else { return nil }
        register()
        guard let interest = state.withLockedValue({ $0.exact[destination] }), let sequenced = interest.sequenced else {
            return .ready(HistoryReplay(messages: [], recovered: start == nil, position: StreamPosition(epoch: "none", sequence: 0)))
        }
        // While Redis is unreachable the position and the replay wait for it, up to here.
        let deadline = NIODeadline.now() + unreachableWait
        let promise = eventLoop.makePromise(of: StreamPosition.self)
        let (through, failed): (StreamPosition?, RouteError?) = sequenced.withLockedValue { s in
            if let position = s.sequencer.position { return (position, nil) }
            if let failed = s.failed { return (nil, failed) }
            s.waiters.append(promise)
            return (nil, nil)
        }
        if let failed {
            promise.fail(failed)
        } else if let through {
            promise.succeed(through)
        } else if unreachableWait > .zero {
            expire(promise, of: sequenced, destination: destination, at: deadline)
        }
        let replay = promise.futureResult.flatMap { through in
            self.readReplay(destination, from: start, through: through, until: deadline).hop(to: eventLoop)
        }
        return .pending(through: through, replay)
    }

    /// What a subscription registered at `through` replays from `start`. History is read even
    /// when the client is at `through` already: only Redis knows whether the history is still
    /// the same (after a restart without persistence it is not, and the client must be told).
    /// While Redis is unreachable the read is tried again until `deadline`.
    func readReplay(_ destination: String, from start: HistoryStart?, through: StreamPosition, until deadline: NIODeadline) -> EventLoopFuture<HistoryReplay> {
        let after: UInt64
        switch start {
        case nil:
            return promiseLoop.makeSucceededFuture(HistoryReplay(messages: [], recovered: true, position: through))
        case .after(let position):
            after = position.epoch == through.epoch ? min(position.sequence, through.sequence) : 0
        case .last(let count):
            after = through.sequence > UInt64(count) ? through.sequence - UInt64(count) : 0
        }
        // A shared read must reach the client's own position too when it is ahead of this
        // instance's: answered before that, it would make the resume look ahead of history.
        let cover: StreamPosition
        if case .after(let position) = start, position.epoch == through.epoch, position.sequence > through.sequence {
            cover = position
        } else {
            cover = through
        }
        return readRetrying(until: deadline) { self.sharedResumeRead(destination, after: after, covering: cover) }.flatMap { decoded in
            let read = decoded.read
            guard read.position.epoch == through.epoch else {
                return self.replayInNewerEpoch(destination, from: start, read: read, readAfter: after, until: deadline)
            }
            let kept = decoded.messages.filter { $0.position!.epoch == through.epoch && $0.position!.sequence > after }
            let messages = kept.filter { $0.position!.sequence <= through.sequence }
            // History beyond this instance's position must follow on without a hole too: the
            // live messages bring it, and a hole there (a failover's jump in sequence numbers,
            // messages trimmed before this instance read them) is a loss the client is told of.
            let beyond = kept.dropFirst(messages.count)
            let holeBeyond =
                read.position.sequence > through.sequence && !Self.followOn(beyond, after: through.sequence, through: read.position.sequence)
            let complete = !holeBeyond && Self.followOn(messages, after: after, through: through.sequence)
            guard case .after(let position) = start else {
                return self.promiseLoop.makeSucceededFuture(HistoryReplay(messages: messages, recovered: complete, position: through))
            }
            if position.epoch != through.epoch {
                return self.promiseLoop.makeSucceededFuture(HistoryReplay(messages: messages, recovered: false, position: through))
            }
            if position.sequence > through.sequence {
                guard position.sequence <= read.position.sequence else {
                    // Ahead of history itself: a position it never had. Nothing is replayed, and
                    // the subscription goes on from where history stands (parked at the client's,
                    // it got nothing until the destination got that far).
                    return self.promiseLoop.makeSucceededFuture(HistoryReplay(messages: [], recovered: false, position: read.position))
                }
                // The client saw more than this instance has delivered yet (the rest is on its
                // way here): it resumes from its own position; a hole in history after it (a
                // failover's jump) is a loss it is told of.
                let afterClient = kept.filter { $0.position!.sequence > position.sequence }
                let holeAfterClient =
                    read.position.sequence > position.sequence
                    && !Self.followOn(afterClient, after: position.sequence, through: read.position.sequence)
                return self.promiseLoop.makeSucceededFuture(HistoryReplay(messages: [], recovered: !holeAfterClient, position: position))
            }
            return self.promiseLoop.makeSucceededFuture(HistoryReplay(messages: messages, recovered: complete, position: through))
        }
    }

    /// Entries per history read: a read far behind (a resume from long ago, a repair after a
    /// freeze) goes in pages of this many. It was one reply with the whole backlog (several MB
    /// at `history.max-length` 20,000), which held every command queued behind it on the
    /// connection past its timeout: lifecycle batches and lease renewals failed, sessions were
    /// closed, and their resumes read it all again.
    static let historyPage: UInt64 = 256

    /// The widest page, in positions, after empty ones: a span doubled without end over a
    /// trimmed stretch (a resume from long ago, 80,000 positions before the 20,000 kept)
    /// reached past it into what is kept, and read all 20,000 in one reply again. 4,096 at
    /// most; a failover's 1,000,000 empty positions take about 250 reads.
    static let widestHistoryPage: UInt64 = 4_096

    /// The history of `destination` after `after`, through the newest position the first page
    /// saw (later messages come live), read a page at a time. A change of epoch meanwhile starts
    /// the read again in the new epoch.
    func readHistory(_ destination: String, after: UInt64, epochChanges: Int = 0) -> EventLoopFuture<HistoryReadResult> {
        let key = naming.historyKey(forDestination: destination)
        let page = Self.historyPage
        let (through, overflow) = after.addingReportingOverflow(page)
        let first = HistoryFunctions.call(HistoryRead(key: key, range: .page(after: after, through: overflow ? .max : through), durable: durableRedis), on: redis)
        return first.flatMap { read in
            // Done, or a library that ignores the page's end (an older instance loaded it): all of it.
            if overflow || read.position.sequence <= through || UInt64(read.envelopes.count) > page {
                return self.promiseLoop.makeSucceededFuture(read)
            }
            guard let (from, _) = Self.pagesGoOn(after: through, nextEntry: read.nextEntry, newest: read.position.sequence) else {
                return self.promiseLoop.makeSucceededFuture(read)
            }
            return self.readPages(destination, key: key, into: read, after: from, span: page, epochChanges: epochChanges, from: after)
        }
    }

    /// A resume read of one destination in flight: from `after` on.
    struct SharedResumeRead {
        var after: UInt64
        var result: EventLoopFuture<DecodedHistoryRead>
    }

    /// A history read with its messages decoded, once for every resume that shares it: 80
    /// clients joining a read of 1,000 messages decoded them 80 times, in one stretch on one
    /// event loop (10 s in a debug build, and that loop's Redis replies timed out meanwhile).
    package final class DecodedHistoryRead: Sendable {
        package let read: HistoryReadResult
        package let messages: [PublishedMessage]

        init(_ read: HistoryReadResult, destination: String, engine: RedisEngine) {
            self.read = read
            self.messages = read.envelopes.compactMap { engine.message(fromEnvelope: $0, destination: destination) }
        }
    }

    /// The history of `destination` after `after` for a subscription registered at `through`:
    /// a read of it already in flight from no later than `after` is joined, else one is started
    /// (which later ones join). When many clients resume one destination at once (the clients
    /// of a killed instance, reconnecting), Redis answers one read instead of one per client,
    /// and the replays share its buffers. A joined read answered before the destination reached
    /// `through` (it was sent before this subscription registered) is not enough: this one
    /// reads on its own then.
    package func sharedResumeRead(_ destination: String, after: UInt64, covering through: StreamPosition) -> EventLoopFuture<DecodedHistoryRead> {
        let loop = promiseLoop
        let decodedRead = { (read: HistoryReadResult) in DecodedHistoryRead(read, destination: destination, engine: self) }
        let (joined, started) = resumeReads.withLockedValue { reads -> (EventLoopFuture<DecodedHistoryRead>?, EventLoopPromise<DecodedHistoryRead>?) in
            if let read = reads[destination] {
                return read.after <= after ? (read.result, nil) : (nil, nil)
            }
            let promise = loop.makePromise(of: DecodedHistoryRead.self)
            reads[destination] = SharedResumeRead(after: after, result: promise.futureResult)
            return (nil, promise)
        }
        if let joined {
            return joined.flatMap { decoded in
                guard decoded.read.position.epoch == through.epoch, decoded.read.position.sequence >= through.sequence else {
                    return self.readHistory(destination, after: after).map(decodedRead)
                }
                self.sharedReadsCounter.increment()
                return loop.makeSucceededFuture(decoded)
            }
        }
        guard let started else { return readHistory(destination, after: after).map(decodedRead) }  // one from further on is in flight
        readHistory(destination, after: after).map(decodedRead).whenComplete { result in
            self.resumeReads.withLockedValue { reads in
                if reads[destination]?.result === started.futureResult { reads[destination] = nil }
            }
            started.completeWith(result)
        }
        return started.futureResult
    }

    /// Reads the pages after `after`; `span` positions per read, doubled after an empty one up to
    /// ``widestHistoryPage`` (a failover moves history 1,000,000 positions ahead: one read per
    /// 256 of them took seconds).
    private func readPages(
        _ destination: String, key: String, into result: HistoryReadResult, after: UInt64, span: UInt64, epochChanges: Int,
        from start: UInt64
    ) -> EventLoopFuture<HistoryReadResult> {
        let target = result.position
        let through = after + min(span, target.sequence - after)
        return HistoryFunctions.call(HistoryRead(key: key, range: .page(after: after, through: through), durable: durableRedis), on: redis).flatMap { page in
            guard page.position.epoch == target.epoch else {
                // History was lost and began again meanwhile: read the new epoch (a few times at most).
                guard epochChanges < 3 else { return self.promiseLoop.makeSucceededFuture(page) }
                return self.readHistory(destination, after: start, epochChanges: epochChanges + 1)
            }
            var result = result
            if UInt64(page.envelopes.count) > through - after {
                // An older library, which ignores the page's end: this page holds the rest.
                result.envelopes += page.envelopes
                result.position = page.position
                return self.promiseLoop.makeSucceededFuture(result)
            }
            result.envelopes += page.envelopes
            guard through < target.sequence, let (from, jumped) = Self.pagesGoOn(after: through, nextEntry: page.nextEntry, newest: target.sequence) else {
                return self.promiseLoop.makeSucceededFuture(result)
            }
            let next = page.envelopes.isEmpty && !jumped ? min(span.multipliedReportingOverflow(by: 2).partialValue, Self.widestHistoryPage) : Self.historyPage
            return self.readPages(
                destination, key: key, into: result, after: from, span: max(next, Self.historyPage), epochChanges: epochChanges, from: start)
        }
    }

    /// Where the pages go on after one read through `through`: after it, or, when that page held
    /// no entry and said where the next one is, just before that one (`jumped`: the rest of a
    /// trimmed stretch, or of the positions a failover skipped, is not read page by page). Nil
    /// when the next entry is past `newest`, where the read began: what follows comes live.
    static func pagesGoOn(after through: UInt64, nextEntry: UInt64?, newest: UInt64) -> (after: UInt64, jumped: Bool)? {
        guard let nextEntry, nextEntry > through + 1 else { return (through, false) }
        return nextEntry <= newest ? (nextEntry - 1, true) : nil
    }

    /// Whether `messages` (read in order from one epoch, each in `after+1...through`) are every
    /// message from `after + 1` through `through`, without a hole.
    static func followOn(_ messages: some Collection<PublishedMessage>, after: UInt64, through: UInt64) -> Bool {
        guard through >= after else { return messages.isEmpty }
        // Compared as UInt64: a range past `Int.max` (a forged position) trapped.
        return UInt64(messages.count) == through - after && (messages.first.map { $0.position!.sequence == after + 1 } ?? true)
    }

    /// History moved to an epoch this instance has not seen yet (Redis restarted empty, or the
    /// keys were lost, since it last heard; its own order follows once its repair sees the new
    /// epoch). The replay is read in the new epoch: after the client's position when the client
    /// is in it already (it read that epoch on another instance: recovered when history has
    /// everything after it), else from its start (not recovered: what the old epoch still owed is
    /// gone). History is read by sequence number whatever the epoch, so a read that began past
    /// that point is made again.
    func replayInNewerEpoch(
        _ destination: String, from start: HistoryStart?, read: HistoryReadResult, readAfter: UInt64, until deadline: NIODeadline
    ) -> EventLoopFuture<HistoryReplay> {
        let epoch = read.position.epoch
        let (wanted, canRecover): (UInt64, Bool)
        switch start {
        case .after(let position) where position.epoch == epoch:
            (wanted, canRecover) = (min(position.sequence, read.position.sequence), position.sequence <= read.position.sequence)
        case .last(let count):
            (wanted, canRecover) = (read.position.sequence > UInt64(count) ? read.position.sequence - UInt64(count) : 0, true)
        default:
            (wanted, canRecover) = (0, false)
        }
        let again: EventLoopFuture<HistoryReadResult>
        if wanted < readAfter {
            again = readRetrying(until: deadline) { self.readHistory(destination, after: wanted) }
        } else {
            again = promiseLoop.makeSucceededFuture(read)
        }
        return again.map { read in
            guard read.position.epoch == epoch else {
                return HistoryReplay(messages: [], recovered: false, position: read.position)
            }
            let messages = read.envelopes.compactMap { self.message(fromEnvelope: $0, destination: destination) }.filter {
                $0.position!.epoch == epoch && $0.position!.sequence > wanted && $0.position!.sequence <= read.position.sequence
            }
            let complete = Self.followOn(messages, after: wanted, through: read.position.sequence)
            return HistoryReplay(messages: messages, recovered: canRecover && complete, position: read.position)
        }
    }
}
