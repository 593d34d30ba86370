import NIOCore
import NIOWebSocket
import STOMPCodec

extension STOMPSessionHandler {
    /// Handles one client frame in the current state.
    func handle(_ frame: STOMPFrame) {
        switch state {
        case .closing:
            return
        case .awaitingConnect:
            switch frame.command {
            case .connect, .stomp: handleConnect(frame)
            default: fail("expected CONNECT or STOMP frame, got \(frame.command.rawValue)", frame: frame)
            }
        case .connected:
            switch frame.command {
            case .send: handleSend(frame)
            case .subscribe: handleSubscribe(frame)
            case .unsubscribe: handleUnsubscribe(frame)
            case .ack, .nack: handleAck(frame)
            case .begin: handleBegin(frame)
            case .commit: handleCommit(frame)
            case .abort: handleAbort(frame)
            case .disconnect: handleDisconnect(frame)
            case .connect, .stomp: fail("already connected", frame: frame)
            case .connected, .message, .receipt, .error:
                fail("\(frame.command.rawValue) is a server frame and cannot be sent by a client", frame: frame)
            }
        }
    }

    // MARK: CONNECT

    func handleConnect(_ frame: STOMPFrame) {
        let supported = config.supportedVersions.sorted().map(\.rawValue).joined(separator: ",")
        guard let negotiated = STOMPVersion.negotiate(acceptVersion: frame.headers["accept-version"], supported: config.supportedVersions) else {
            fail("unsupported STOMP version: client accepts \(frame.headers["accept-version"] ?? "1.0"), server supports \(supported)",
                 frame: frame, extraHeaders: ["version": supported])
            return
        }
        var clientBeat = STOMPHeartBeat.none
        if let raw = frame.headers["heart-beat"] {
            guard let parsed = STOMPHeartBeat(header: raw) else {
                fail("malformed heart-beat header '\(raw)': expected two non-negative integers 'cx,cy'", frame: frame)
                return
            }
            clientBeat = parsed
        }
        guard let authenticator = config.authenticator else {
            completeConnect(frame, negotiated, clientBeat, identity: nil)
            return
        }
        guard let token = presentedToken(frame) else {
            if config.allowAnonymous {
                completeConnect(frame, negotiated, clientBeat, identity: nil)
            } else {
                fail("authentication failed: no token (send 'Authorization: Bearer <jwt>' or passcode in CONNECT, or access_token at the handshake)",
                     frame: frame, kind: .auth)
            }
            return
        }
        awaitStep(authenticator.authenticate(token: token, on: shard.eventLoop), for: frame, kind: .auth,
                  describe: { "authentication failed: \($0)" },
                  onSuccess: { identity in self.completeConnect(frame, negotiated, clientBeat, identity: identity) })
    }

    /// The credential: CONNECT's `Authorization: Bearer`, then `passcode`, then the handshake's.
    func presentedToken(_ frame: STOMPFrame) -> String? {
        if let auth = frame.headers["Authorization"] ?? frame.headers["authorization"] {
            let prefix = "Bearer "
            if auth.hasPrefix(prefix) { return String(auth.dropFirst(prefix.count)) }
            if auth.lowercased().hasPrefix("bearer ") { return String(auth.dropFirst(prefix.count)) }
        }
        if let passcode = frame.headers["passcode"], !passcode.isEmpty { return passcode }
        return handshake.token
    }

    func completeConnect(_ frame: STOMPFrame, _ negotiated: STOMPVersion, _ clientBeat: STOMPHeartBeat, identity: SessionIdentity?) {
        if let identity {
            guard services.userSessions.add(identity.user, limit: config.maxSessionsPerUser) else {
                fail("too many sessions for user \(identity.user) (limit \(config.maxSessionsPerUser))", frame: frame, kind: .limit)
                return
            }
            self.identity = identity
            self.user = identity.user
            logger[metadataKey: "user"] = "\(identity.user)"
        }
        version = negotiated
        escape = negotiated.escapesHeaders
        escapeCR = negotiated == .v1_2
        if !escape { transport?.setHeaderEscaping(false) }
        let (sendMs, expectMs) = STOMPHeartBeat.negotiate(client: clientBeat, server: config.heartBeat)
        sendEveryTicks = sendMs > 0 ? ticks(Int64(sendMs), roundUp: false) : 0
        expectWithinTicks = expectMs > 0 ? ticks(Int64(Double(expectMs) * config.heartBeatTolerance), roundUp: true) + 1 : 0
        lastReadTick = shard.tick
        state = .connected
        // Heart-beats (and a token's expiry) are known now: the next tick works out when
        // the first check is due, in place of the CONNECT deadline.
        shard.scheduleHeartbeatCheck(self, at: shard.tick + 1)
        services.stats.sessionsConnected.add(1)
        services.stats.sessionsByVersion[negotiated.ordinal].add(1)
        logger[metadataKey: "stomp.version"] = "\(negotiated.rawValue)"
        var headers: STOMPHeaders = [
            "version": negotiated.rawValue,
            "server": config.serverName,
            "session": sessionID,
            "heart-beat": config.heartBeat.headerValue,
        ]
        if let user { headers.add("user-name", user) }
        send(STOMPFrame(.connected, headers: headers))
        if identity == nil || config.authenticator == nil { sendReceipt(for: frame) }  // else awaitStep sends it
        logger.debug("session connected", metadata: ["heart-beat.out": "\(sendMs)", "heart-beat.in": "\(expectMs)"])
    }

    // MARK: SUBSCRIBE / UNSUBSCRIBE

    func handleSubscribe(_ frame: STOMPFrame) {
        guard let destination = frame.headers["destination"] else {
            fail("SUBSCRIBE requires a destination header", frame: frame); return
        }
        let id: String
        if let given = frame.headers["id"] {
            id = given
        } else if version == .v1_0 {
            id = destination
        } else {
            fail("SUBSCRIBE requires an id header in STOMP \(version.rawValue)", frame: frame); return
        }
        let isUser = config.isUserDestination(destination)
        guard isUser || config.isBrokerDestination(destination) else {
            if config.isApplicationDestination(destination) {
                fail("cannot SUBSCRIBE to application destination \(destination)", frame: frame)
            } else {
                fail("destination \(destination) is not allowed: SUBSCRIBE to \(config.brokerPrefixes.joined(separator: " or "))", frame: frame)
            }
            return
        }
        if let policy = config.accessPolicy, !policy.maySubscribe(destination, identity: identity) {
            fail("permission denied: SUBSCRIBE to \(destination)", frame: frame, kind: .auth); return
        }
        // /user/queue/x always means this session's own user.
        let routed = isUser ? UserDestinations.routing(user: user, session: sessionID, clientDestination: destination)! : destination
        let pattern: DestinationPattern
        do { pattern = try DestinationPattern(routed) } catch {
            fail(error.description, frame: frame); return
        }
        let ackMode: AckMode
        switch frame.headers["ack"] {
        case nil, "auto": ackMode = .auto
        case "client": ackMode = .client
        case "client-individual" where version != .v1_0: ackMode = .clientIndividual
        case let other?:
            fail("invalid ack mode '\(other)' for STOMP \(version.rawValue)", frame: frame); return
        }
        guard subscriptions[id] == nil else {
            fail("subscription id '\(id)' is already in use", frame: frame); return
        }
        guard subscriptions.count < config.maxSubscriptionsPerSession else {
            fail("too many subscriptions (limit \(config.maxSubscriptionsPerSession))", frame: frame, kind: .limit); return
        }
        let sub = LocalSubscription(id: id, pattern: pattern, ackMode: ackMode, sink: self)
        subscriptions[id] = sub
        shard.add(sub)
        services.stats.subscriptions.add(1)
        if let ready = services.engine.subscriptionReady(pattern, on: shard.eventLoop) {
            awaitStep(ready, for: frame, kind: .route, describe: { "SUBSCRIBE to \(destination) failed: \($0)" }, onSuccess: { _ in })
        } else {
            sendReceipt(for: frame)
        }
    }

    func handleUnsubscribe(_ frame: STOMPFrame) {
        let key: String
        if let id = frame.headers["id"] {
            key = id
        } else if version == .v1_0, let destination = frame.headers["destination"] {
            key = destination
        } else {
            fail(version == .v1_0 ? "UNSUBSCRIBE requires an id or destination header" : "UNSUBSCRIBE requires an id header", frame: frame)
            return
        }
        if let sub = subscriptions.removeValue(forKey: key) {
            shard.remove(sub)
            services.stats.subscriptions.subtract(1)
        }
        sendReceipt(for: frame)
    }

    // MARK: ACK / NACK

    func handleAck(_ frame: STOMPFrame) {
        let name = frame.command.rawValue
        if frame.command == .nack && version == .v1_0 {
            fail("NACK is not supported in STOMP 1.0", frame: frame); return
        }
        switch version {
        case .v1_2:
            guard frame.headers["id"] != nil else { fail("\(name) requires an id header in STOMP 1.2", frame: frame); return }
        case .v1_1:
            guard frame.headers["message-id"] != nil, frame.headers["subscription"] != nil else {
                fail("\(name) requires message-id and subscription headers in STOMP 1.1", frame: frame); return
            }
        case .v1_0:
            guard frame.headers["message-id"] != nil else { fail("ACK requires a message-id header in STOMP 1.0", frame: frame); return }
        }
        if let tx = frame.headers["transaction"] {
            guard appendToTransaction(tx, frame) else { return }
        }
        // Topics are not durable: an ACK completes nothing and a NACK redelivers nothing.
        sendReceipt(for: frame)
    }

    // MARK: Transactions

    func handleBegin(_ frame: STOMPFrame) {
        guard let tx = frame.headers["transaction"] else { fail("BEGIN requires a transaction header", frame: frame); return }
        guard transactions[tx] == nil else { fail("transaction '\(tx)' is already open", frame: frame); return }
        guard transactions.count < config.maxTransactionsPerSession else {
            fail("too many open transactions (limit \(config.maxTransactionsPerSession))", frame: frame, kind: .limit); return
        }
        transactions[tx] = []
        sendReceipt(for: frame)
    }

    func handleCommit(_ frame: STOMPFrame) {
        guard let tx = frame.headers["transaction"] else { fail("COMMIT requires a transaction header", frame: frame); return }
        guard let frames = transactions.removeValue(forKey: tx) else { fail("unknown transaction '\(tx)'", frame: frame); return }
        // Run the buffered SENDs in order, then answer the COMMIT's receipt.
        var replay = frames.filter { $0.command == .send }
        for i in replay.indices { replay[i].headers.remove("transaction"); replay[i].headers.remove("receipt") }
        var receiptOnly = STOMPFrame(.commit)
        if let r = frame.headers["receipt"] { receiptOnly.headers.add("receipt", r) }
        queued.insert(contentsOf: replay + [receiptOnly], at: queued.startIndex)
        drainQueue()
    }

    func handleAbort(_ frame: STOMPFrame) {
        guard let tx = frame.headers["transaction"] else { fail("ABORT requires a transaction header", frame: frame); return }
        guard transactions.removeValue(forKey: tx) != nil else { fail("unknown transaction '\(tx)'", frame: frame); return }
        sendReceipt(for: frame)
    }

    /// Buffers `frame` in transaction `tx`; false (after failing the session) if impossible.
    func appendToTransaction(_ tx: String, _ frame: STOMPFrame) -> Bool {
        guard transactions[tx] != nil else { fail("unknown transaction '\(tx)'", frame: frame); return false }
        guard transactions[tx]!.count < config.maxFramesPerTransaction else {
            fail("transaction '\(tx)' is too large (limit \(config.maxFramesPerTransaction) frames)", frame: frame, kind: .limit); return false
        }
        transactions[tx]!.append(frame)
        return true
    }

    // MARK: DISCONNECT

    func handleDisconnect(_ frame: STOMPFrame) {
        sendReceipt(for: frame)
        transactions.removeAll()
        if state == .connected { sessionEnded() }
        state = .closing
        if let context { closeConnection(context: context, code: .normalClosure) }
    }

    // MARK: Ordered asynchronous steps

    /// Runs `future`; frames arriving meanwhile queue and socket reads pause. On success
    /// `onSuccess` runs (then the frame's receipt is sent); on failure the session fails
    /// with `describe(error)`.
    func awaitStep<T: Sendable>(_ future: EventLoopFuture<T>, for frame: STOMPFrame, kind: SessionErrorKind = .route,
                                describe: @escaping (any Error) -> String, onSuccess: @escaping (T) -> Void) {
        inFlight = true
        flushIfNeeded()
        let loop = shard.eventLoop
        let bound = NIOLoopBound((handler: self, describe: describe, onSuccess: onSuccess, kind: kind), eventLoop: loop)
        future.hop(to: loop).whenComplete { result in
            let (handler, describe, onSuccess, kind) = bound.value
            guard handler.state != .closing else { return }
            handler.inFlight = false
            switch result {
            case .success(let value):
                onSuccess(value)
                guard handler.state != .closing else { return }
                handler.sendReceipt(for: frame)
                if let reason = handler.closeAfterInFlight, handler.pipeline.isEmpty {
                    handler.fail(reason, kind: .shutdown)
                    return
                }
            case .failure(let error):
                handler.fail(describe(error), frame: frame, kind: kind)
                return
            }
            handler.drainQueue()
            handler.flushIfNeeded()
        }
    }

    /// Handles queued frames until one starts an asynchronous step, then resumes reading.
    func drainQueue() {
        guard !draining else { return }
        draining = true
        defer { draining = false }
        while state != .closing, let next = queued.first, canHandleNow(next) {
            queued.removeFirst()
            if next.command == .commit && next.headers["transaction"] == nil {
                sendReceipt(for: next)  // the marker closing a replayed transaction
            } else {
                handle(next)
            }
        }
        if readPending, !readsPaused, let context {
            readPending = false
            context.read()
        }
    }
}
