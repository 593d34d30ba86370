import Logging
import NIOCore
import NIOWebSocket
import STOMPCodec
import SwitchboardRoutes
import SwitchboardWire

#if canImport(Glibc)
import Glibc
#endif

/// Carrying out the state machine's actions: writing frames and running steps.
extension STOMPSessionHandler {
    /// The `ERROR` message of a `SEND` whose publish failed; one whose outcome is unknown (the
    /// connection to Redis lost with it in flight) says so first, as the API's 504 does.
    static func publishFailure(_ destination: String, _ error: any Error) -> String {
        if let route = error as? RouteError, route.code == .outcomeUnknown {
            return "publish outcome unknown: \(destination): \(route)"
        }
        return "publish to \(destination) failed: \(error)"
    }

    /// A backend's replies refused (one line each): at most 10 lines per 10 s over all sessions.
    static let replyRefusedLog = LogThrottle()

    typealias Machine = STOMPSessionStateMachine

    /// Executes the machine's actions until it waits for an event.
    func runActions() {
        guard !running else { return }  // the outer loop picks up what an action caused
        running = true
        defer { running = false }
        while let action = machine.nextAction() {
            execute(action)
        }
    }

    private func execute(_ action: Machine.Action) {
        guard let context else { return }
        switch action {
        case .execute(let command, let step):
            // Deliveries already here were not caused by this step: they wait for older
            // steps only.
            settleUndelivered(context: context, newest: step &- 1)
            start(command, step: step)
        case .unsubscribe(let ids, let receipt):
            for id in ids {
                if let sub = subscriptions.removeValue(forKey: id) {
                    shard.remove(sub)
                    services.stats.subscriptions.subtract(1)
                    record(.unsubscribed(id: id))
                }
                if let watch = presenceSubscriptions.removeValue(forKey: id) { shard.remove(watch) }
            }
            sendReceipt(receipt)
        case .sendReceipt(let receipt):
            sendReceipt(receipt)
        case .stepAnswered(let step, let receipt):
            // What arrived while the step ran may have been caused by it, or by any step
            // started since (pipelined): after the newest one's receipt.
            let closing = machine.phase == .closed
            if let buffer = takeUndelivered() { hold(buffer, behind: machine.newestStep, context: context) }
            // Holding it went past the limit while a replay waits: the session failed (the
            // ERROR goes out from the loop running the actions), and this step's receipt must
            // not say its subscription recovered. (A session closing after its step in flight
            // still sends that step's receipt.)
            guard closing || machine.phase != .closed else { return }
            let outcome = subscribeOutcomes.isEmpty ? nil : subscribeOutcomes.removeValue(forKey: step)
            if let receipt { write(receiptFrame(receipt, outcome: outcome)) }
            // A resumed subscription's history, before the live messages held behind the step.
            if let outcome {
                writeReplay(outcome, context: context)
                deliverDeferred(outcome.subscription, replayEpoch: outcome.replay?.position.epoch, context: context)
                guard machine.phase != .closed else { return }
            }
            releaseHeld(through: step, context: context)
        case .connected(let connected):
            becomeConnected(connected)
        case .resumeReads:
            // The client's heart-beats waited unread in the socket while reads paused: its
            // silence counts from now (a check before the read closed the session).
            machine.read(at: shard.tick)
            machine.readsResumed(now: .now())
            context.read()
        case .close(let close):
            if let failure = close.failure {
                services.stats.errors[failure.kind.index].add(1)
                switch failure.kind {
                case .slowConsumer: logger.info("slow consumer: closing", metadata: ["reason": "\(failure.message)"])
                case .heartBeatTimeout: logger.info("heart-beat timeout: closing")
                default: logger.debug("session error", metadata: ["error": "\(failure.message)"])
                }
                // Deliveries not written yet are dropped, not written before the ERROR: a
                // resuming subscription's live messages wait behind its SUBSCRIBE, and written
                // before a failed SUBSCRIBE's ERROR they moved the client past the replay it
                // never got (it resumed from there: the history between was lost, silently).
                discardUnwritten()
                write(failure.frame)
            } else {
                sendReceipt(close.receipt)
            }
            // A route call still waiting for a connection to its backend is dropped now, not
            // sent after the client was told the session ended (the close may linger 2 s).
            routeCancellation?.cancel()
            sessionEnded(close.failure?.kind.disconnectReason ?? .client, wasConnected: close.wasConnected)
            closeConnection(context: context, code: close.failure?.closeCode ?? .normalClosure, linger: close.failure?.lingers ?? true)
        }
    }

    /// The session is connected: counters, header escaping, heart-beat checks, `CONNECTED`.
    private func becomeConnected(_ connected: Machine.ConnectedSession) {
        resetLogger()  // user and STOMP version are known now
        escape = connected.version.escapesHeaders
        escapeCR = connected.version == .v1_2
        transport?.setHeaderEscaping(escape, carriageReturn: escapeCR)  // and frames held behind the CONNECT go on
        machine.read(at: shard.tick)
        // Heart-beats (and a token's expiry) are known now: the next tick works out when
        // the first check is due, in place of the CONNECT deadline.
        shard.scheduleHeartbeatCheck(self, at: shard.tick + 1)
        services.stats.sessionsConnected.add(1)
        services.stats.sessionsByVersion[connected.version.ordinal].add(1)
        send(connected.frame)
        sendReceipt(connected.receipt)
        if services.logger.logLevel <= .debug {
            logger.debug("session connected", metadata: ["heart-beat.out": "\(connected.serverSendsMs)", "heart-beat.in": "\(connected.serverExpectsMs)"])
        }
    }

    // MARK: Steps

    private func start(_ command: Machine.Command, step: Machine.StepID) {
        switch command {
        case .connect(let token):
            guard let token, let authenticator = config.authenticator else {
                if let result = connectAccepted(nil, step: step) { machine.stepCompleted(step, result) }
                return
            }
            let future = authenticator.authenticate(token: token, on: shard.eventLoop)
            complete(future, step: step, kind: .auth, describe: { "authentication failed: \($0)" }) { handler, identity in
                guard handler.services.userSessions.add(identity.user, limit: handler.config.maxSessionsPerUser) else {
                    return .failure(SessionFailure("too many sessions for user \(identity.user) (limit \(handler.config.maxSessionsPerUser))", kind: .limit))
                }
                handler.countedUser = identity.user
                return handler.connectAccepted(identity, step: step)
            }
        case .subscribe(let s):
            let sub = LocalSubscription(id: s.id, pattern: s.pattern, ackMode: s.ackMode, sink: self)
            subscriptions[s.id] = sub
            // The watcher listens before its own subscription is recorded, so the notices of
            // everything recorded after its receipt reach it.
            var watching = s.presence ? watchPresence(s) : nil
            // Its receipt says the `subscribed` fact is stored; without one it is not waited for.
            if s.wantsReceipt, let lifecycle = services.lifecycle {
                let stored = factStored(.subscribed(id: s.id, destination: s.destination), by: lifecycle)
                watching = watching.map { $0.and(stored).map { _ in } } ?? stored
            } else {
                record(.subscribed(id: s.id, destination: s.destination))
            }
            let replay = register(sub, start: s.start, step: step)
            services.stats.subscriptions.add(1)
            let destination = s.destination
            if let replay {
                let asked = s.start != nil
                let both = watching.map { w in replay.flatMap { r in w.map { r } } } ?? replay
                complete(both, step: step, kind: .route, describe: { "SUBSCRIBE to \(destination) failed: \($0)" }) { handler, replay in
                    handler.replayArrived(replay, for: sub, asked: asked, step: step)
                    return .success
                }
            } else if let ready = services.engine.subscriptionReady(s.pattern, on: shard.eventLoop) {
                let both = watching.map { w in ready.flatMap { _ in w } } ?? ready
                complete(both, step: step, kind: .route, describe: { "SUBSCRIBE to \(destination) failed: \($0)" }) { _, _ in .success }
            } else if let watching {
                complete(watching, step: step, kind: .route, describe: { "SUBSCRIBE to \(destination) failed: \($0)" }) { _, _ in .success }
            } else {
                machine.stepCompleted(step, .success)
            }
        case .publish(let destination, let frame):
            let message = PublishedMessage(
                destination: destination, messageID: services.messageIDs.next(),
                headers: Self.userHeaders(of: frame), body: frame.body)
            // `idempotency-key` (checked by the machine): a SEND repeated with it (a client that
            // reconnected before its RECEIPT came) is received again but published once. Keys
            // are the user's own (another client cannot take them first), apart from the API's.
            let key = frame.headers["idempotency-key"].map { IdempotencyTokens.stomp(user: identity?.user, key: $0) }
            if let admission = services.hub.admission(on: shard.eventLoop) {
                // The instance's fan-out backlog is over its limit: the step (its RECEIPT, and
                // the frames behind it) waits; refused after the admission timeout, nothing
                // published, the session ends with the reason.
                let engine = services.engine, loop = shard.eventLoop
                let session = NIOLoopBound(self, eventLoop: loop)
                let published = admission.flatMap { () -> EventLoopFuture<Void> in
                    // A session that ended meanwhile (refused, closed) publishes nothing more.
                    guard session.value.machine.phase == .connected else {
                        return loop.makeFailedFuture(SessionFailure("session ended before its publish was admitted", kind: .route))
                    }
                    return Self.publish(message, key: key, engine: engine, on: loop)
                }
                complete(published, step: step, kind: .route, describe: { Self.publishFailure(destination, $0) }) { _, _ in .success }
                return
            }
            let future = Self.publish(message, key: key, engine: services.engine, on: shard.eventLoop)
            if services.engine.publishesSynchronously {
                machine.stepCompleted(step, .success)
            } else {
                complete(future, step: step, kind: .route, describe: { Self.publishFailure(destination, $0) }) { _, _ in .success }
            }
        case .route(let destination, let route, let frame):
            callRoute(route, destination: destination, frame: frame, step: step)
        }
    }

    /// Publishes a `SEND`'s message, once per `key` when it has one.
    private static func publish(
        _ message: PublishedMessage, key: String?, engine: any BrokerEngine, on loop: any EventLoop
    ) -> EventLoopFuture<Void> {
        guard let key else { return engine.publish(message, on: loop) }
        return engine.publish(message, idempotencyKey: key, on: loop).map { _ in }
    }

    /// CONNECT is accepted (authenticated, within the user's session limit): records the
    /// `connected` fact. Returns the step's result, or nil when it completes later: with events
    /// on, once the fact is stored (in Redis mode, when Redis acknowledged the batch holding
    /// it), so `CONNECTED` means the session is in presence and its `connected` event written.
    /// A fact that cannot be stored fails the CONNECT.
    private func connectAccepted(_ identity: SessionIdentity?, step: Machine.StepID) -> Machine.StepResult? {
        guard let lifecycle = services.lifecycle else { return .connected(identity) }
        inPresence = true  // from now on its end is recorded, also if CONNECTED never goes out
        // Called at once or later: either way the step completes there (at once, from within
        // the actions being run, it is picked up by them).
        lifecycle.record(fact(.connected(user: identity?.user)), on: shard.eventLoop) { [self] error in
            finishStep(step, error.map { .failure(SessionFailure("\($0)", kind: .route)) } ?? .connected(identity))
        }
        return nil
    }

    /// Records `kind`, with a future that succeeds once the fact is stored (see
    /// ``LifecycleRecorder/record(_:on:stored:)``).
    private func factStored(_ kind: LifecycleFact.Kind, by lifecycle: any LifecycleRecorder) -> EventLoopFuture<Void> {
        let promise = shard.eventLoop.makePromise(of: Void.self)
        lifecycle.record(fact(kind), on: shard.eventLoop) { error in
            if let error { promise.fail(error) } else { promise.succeed() }
        }
        return promise.futureResult
    }

    /// Registers the join/leave notices of `s`'s destination for this session; returns what to
    /// wait for before the receipt (the engine listening for them), if anything.
    private func watchPresence(_ s: Machine.Subscription) -> EventLoopFuture<Void>? {
        // The routing destination parses as the destination did (one more literal segment).
        guard let pattern = try? DestinationPattern(PresenceNotice.routing(destination: s.destination)) else { return nil }
        let watch = LocalSubscription(id: s.id, pattern: pattern, ackMode: s.ackMode, sink: self)
        watch.isPresence = true
        presenceSubscriptions[s.id] = watch
        shard.add(watch)
        return services.engine.subscriptionReady(pattern, on: shard.eventLoop)
    }

    /// Reports `future`'s outcome as step `step` once it completes, on this loop.
    private func complete<T: Sendable>(
        _ future: EventLoopFuture<T>, step: Machine.StepID, kind: SessionErrorKind,
        describe: @escaping (any Error) -> String,
        onSuccess: @escaping (STOMPSessionHandler, T) -> Machine.StepResult?
    ) {
        let loop = shard.eventLoop
        let bound = NIOLoopBound((handler: self, describe: describe, onSuccess: onSuccess), eventLoop: loop)
        future.hop(to: loop).whenComplete { result in
            let (handler, describe, onSuccess) = bound.value
            guard handler.machine.phase != .closed else { return }
            switch result {
            case .success(let value):
                // nil: the step goes on (CONNECT waiting for its fact to be stored).
                guard let outcome = onSuccess(handler, value) else { return }
                handler.finishStep(step, outcome)
            case .failure(let error):
                handler.finishStep(step, .failure(SessionFailure(describe(error), kind: kind)))
            }
        }
    }

    /// Reports step `step`'s end, on this loop, and runs what follows.
    private func finishStep(_ step: Machine.StepID, _ result: Machine.StepResult) {
        guard machine.phase != .closed else { return }
        machine.stepCompleted(step, result)
        runActions()
        // Receipts of steps completing together go out in one flush per loop tick.
        if wroteSinceFlush {
            shard.markDirty(self)
            shard.scheduleFlush()
        }
    }

    /// The user headers a SEND passes on (server-owned headers removed).
    static func userHeaders(of frame: STOMPFrame) -> STOMPHeaders {
        var out = STOMPHeaders()
        for (name, value) in frame.headers where !PublishedMessage.reservedHeaders.contains(name) && out[name] == nil {
            out.add(name, value)
        }
        return out
    }

    /// Hands a SEND to its route. Broadcast replies are published before the receipt; replies
    /// to the sender are written to this session's matching subscriptions (after the receipt).
    private func callRoute(_ route: any AppRoute, destination: String, frame: STOMPFrame, step: Machine.StepID) {
        var headers = Self.userHeaders(of: frame)
        let contentType = headers["content-type"]
        headers.remove("content-type")
        let message = AppMessage(
            destination: destination, body: frame.body, headers: headers, contentType: contentType,
            sessionID: sessionID, user: user, instanceID: services.instanceID,
            timestamp: Self.wallClockMillis())
        let loop = shard.eventLoop
        let engine = services.engine
        let hub = services.hub
        let ids = services.messageIDs
        let policy = services.policy
        // The session's routes logger is made only when a line is logged (not per SEND).
        let (routesLogger, session) = (services.routesLogger, sessionID)
        @Sendable func logger() -> Logger {
            var logger = routesLogger
            logger[metadataKey: "session"] = "\(session)"
            return logger
        }
        let routeFailedLog = services.routeFailedLog
        let cancellation = routeCancellation ?? RouteCancellation()
        routeCancellation = cancellation
        let future = route.handle(message, on: loop, cancellation: cancellation).flatMap { all -> EventLoopFuture<[RouteReply]> in
            // A backend's reply that cannot be delivered is logged, not published (a wildcard
            // would be taken literally, a non-broker destination reaches nobody); the SEND the
            // backend processed still gets its receipt.
            let replies = all.filter { reply in
                guard let problem = policy.replyProblem(reply.destination, toSender: reply.target == .sender) else { return true }
                logger().log(
                    level: .warning, throttledBy: Self.replyRefusedLog, "route reply refused: \(problem)",
                    metadata: ["route": "\(destination)", "reply.destination": "\(reply.destination)", "reply.target": "\(reply.target.rawValue)"])
                return false
            }
            let broadcasts = replies.filter { $0.target == .broadcast }
            // The backend did act on the message: the ERROR must not read as if it had not (a
            // client would send it again, and the backend process it twice).
            return Self.publishBroadcasts(broadcasts, engine: engine, hub: hub, messageIDs: ids, on: loop).map { replies }
                .flatMapErrorThrowing { error in throw ReplyNotPublished(cause: error) }
        }
        future.whenFailure { error in
            // A backend down or slow is the operator's news too (the client gets the ERROR);
            // not a call the session's close cancelled.
            guard !cancellation.isCancelled else { return }
            logger().log(level: .warning, throttledBy: routeFailedLog, "route failed", metadata: ["route": "\(destination)", "error": "\(error)"])
        }
        complete(future, step: step, kind: .route, describe: { "route for \(destination) failed: \($0)" }) { handler, replies in
            for reply in replies where reply.target == .sender {
                handler.deliverToSelf(reply)
            }
            return .success
        }
    }

    /// Publishes a backend's broadcast replies, behind the fan-out backlog's admission as a
    /// `SEND`'s publish is: each session could add a reply of up to `webhooks.max-reply-bytes`
    /// per round trip to a loop already over `server.max-fanout-backlog-bytes`.
    package static func publishBroadcasts(
        _ replies: [RouteReply], engine: any BrokerEngine, hub: FanoutHub, messageIDs: MessageIDGenerator, on loop: any EventLoop
    ) -> EventLoopFuture<Void> {
        guard !replies.isEmpty else { return loop.makeSucceededVoidFuture() }
        let publish = {
            EventLoopFuture.andAllSucceed(
                replies.map { reply in
                    engine.publish(
                        PublishedMessage(destination: reply.destination, messageID: messageIDs.next(), headers: reply.headers, body: reply.body),
                        on: loop)
                }, on: loop)
        }
        guard let admission = hub.admission(on: loop) else { return publish() }
        return admission.flatMap(publish)
    }

    /// The backend accepted a `SEND`, and a broadcast reply of its could not be published.
    struct ReplyNotPublished: Error, CustomStringConvertible {
        var cause: any Error
        var description: String { "the backend accepted the message, but its broadcast reply was not published: \(cause)" }
    }

    /// Delivers a reply to this session's subscriptions that match its destination.
    func deliverToSelf(_ reply: RouteReply) {
        let message = PublishedMessage(destination: reply.destination, messageID: services.messageIDs.next(), headers: reply.headers, body: reply.body)
        deliverToOwnSubscriptions(message)
    }

    package func deliverToOwnSubscriptions(_ message: PublishedMessage) {
        var delivered = false
        // A reply to this session may name its user destination as the client knows it.
        let routed =
            config.isUserDestination(message.destination)
            ? UserDestinations.routing(user: user, session: sessionID, clientDestination: message.destination)!
            : message.destination
        var batch = DeliveryBatch(tick: shard.tick)
        for sub in subscriptions.values where sub.pattern.matches(routed) {
            deliver(message, to: sub, batch: &batch)
            delivered = true
        }
        shard.counters.record(batch)
        if delivered {
            flushIfNeeded()
        } else {
            logger.debug("message for this session dropped: no matching subscription", metadata: ["destination": "\(message.destination)"])
        }
    }

    static func wallClockMillis() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }
}
