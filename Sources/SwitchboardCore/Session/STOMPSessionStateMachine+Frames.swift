import STOMPCodec
import SwitchboardWire

/// The rules of each client frame: what it must carry, what it may do, and what follows.
extension STOMPSessionStateMachine {
    /// Handles one client frame in the current phase, when it is its turn.
    mutating func handle(_ frame: STOMPFrame) -> Action? {
        switch phase {
        case .closed:
            return nil
        case .awaitingConnect:
            switch frame.command {
            case .connect, .stomp: return handleConnect(frame)
            default:
                failFrame("expected CONNECT or STOMP frame, got \(frame.command.rawValue)", frame)
                return nil
            }
        case .connected:
            switch frame.command {
            case .send: return handleSend(frame)
            case .subscribe: return handleSubscribe(frame)
            case .unsubscribe: return handleUnsubscribe(frame)
            case .ack, .nack: return handleAck(frame)
            case .begin:
                guard let tx = frame.headers["transaction"] else { failFrame("BEGIN requires a transaction header", frame); return nil }
                return beginTransaction(tx, frame)
            case .commit:
                guard let tx = frame.headers["transaction"] else { failFrame("COMMIT requires a transaction header", frame); return nil }
                commitTransaction(tx, frame)
                return nil
            case .abort:
                guard let tx = frame.headers["transaction"] else { failFrame("ABORT requires a transaction header", frame); return nil }
                return abortTransaction(tx, frame)
            case .disconnect:
                return disconnect(receipt: frame.headers["receipt"])
            case .connect, .stomp:
                failFrame("already connected", frame)
                return nil
            case .connected, .message, .receipt, .error:
                failFrame("\(frame.command.rawValue) is a server frame and cannot be sent by a client", frame)
                return nil
            }
        }
    }

    /// Fails the session for `frame`, echoing its receipt.
    mutating func failFrame(
        _ message: String, _ frame: STOMPFrame, extraHeaders: STOMPHeaders = STOMPHeaders(),
        kind: SessionErrorKind = .protocolViolation
    ) {
        fail(SessionFailure(message, receiptID: frame.headers["receipt"] ?? committing, extraHeaders: extraHeaders, kind: kind))
    }

    // MARK: CONNECT

    private mutating func handleConnect(_ frame: STOMPFrame) -> Action? {
        guard let negotiated = STOMPVersion.negotiate(acceptVersion: frame.headers["accept-version"], supported: config.supportedVersions) else {
            let supported = config.supportedVersions.sorted().map(\.rawValue).joined(separator: ",")
            failFrame(
                "unsupported STOMP version: client accepts \(frame.headers["accept-version"] ?? "1.0"), server supports \(supported)",
                frame, extraHeaders: ["version": supported])
            return nil
        }
        var clientBeat = STOMPHeartBeat.none
        if let raw = frame.headers["heart-beat"] {
            guard let parsed = STOMPHeartBeat(header: raw) else {
                failFrame("malformed heart-beat header '\(raw)': expected two non-negative integers 'cx,cy'", frame)
                return nil
            }
            clientBeat = parsed
        }
        var token: String?
        if config.authenticator != nil {
            token = presentedToken(frame)
            if token == nil, !config.allowAnonymous {
                failFrame(
                    "authentication failed: no token (send 'Authorization: Bearer <jwt>' or passcode in CONNECT, or access_token at the handshake)",
                    frame, kind: .auth)
                return nil
            }
        }
        setVersion(negotiated)
        connectHeartBeat = clientBeat
        return startStep(.connect(token: token), for: frame, pipelined: false)
    }

    /// The credential: CONNECT's `Authorization: Bearer`, then `passcode`, then the handshake's.
    private func presentedToken(_ frame: STOMPFrame) -> String? {
        if let auth = frame.headers["Authorization"] ?? frame.headers["authorization"] {
            let prefix = "Bearer "
            if auth.hasPrefix(prefix) { return String(auth.dropFirst(prefix.count)) }
            if auth.lowercased().hasPrefix("bearer ") { return String(auth.dropFirst(prefix.count)) }
        }
        if let passcode = frame.headers["passcode"], !passcode.isEmpty { return passcode }
        return handshakeToken
    }

    // MARK: SEND

    private mutating func handleSend(_ frame: STOMPFrame) -> Action? {
        guard let destination = frame.headers["destination"] else {
            failFrame("SEND requires a destination header", frame); return nil
        }
        guard DestinationPattern.isNormalized(destination) else {
            failFrame(Self.notNormalized(destination), frame); return nil
        }
        if let problem = DestinationPattern.nameProblem(destination) {
            failFrame("SEND destination \(problem)", frame); return nil
        }
        guard policy.maySend(destination, identity: identity) else {
            failFrame("permission denied: SEND to \(destination)", frame, kind: .auth); return nil
        }
        // Checked when it arrives, also in a transaction: a SEND that cannot run is refused
        // now, not at COMMIT after the transaction's earlier SENDs have run.
        let step: Command
        let pipelined: Bool
        switch policy.kind(of: destination) {
        case .broker:
            if destination.contains("*") {
                failFrame("cannot SEND to wildcard destination \(destination)", frame); return nil
            }
            if let key = frame.headers["idempotency-key"], let problem = IdempotencyTokens.problem(key) {
                failFrame("SEND header 'idempotency-key' \(problem)", frame); return nil
            }
            (step, pipelined) = (.publish(destination: destination, frame: frame), true)
        case .application:
            guard let route = policy.routes.route(for: destination) else {
                failFrame("no route for application destination \(destination)", frame); return nil
            }
            (step, pipelined) = (.route(destination: destination, route: route, frame: frame), route.keepsOrderWhenPipelined)
        case .user, .notAllowed:
            failFrame(policy.notAllowedMessage(destination, subscribe: false), frame)
            return nil
        }
        if let tx = frame.headers["transaction"] {
            // Its receipt goes out when the transaction is committed and the SEND has run.
            _ = appendToTransaction(tx, frame)
            return nil
        }
        return startStep(step, for: frame, pipelined: pipelined)
    }

    /// The `ERROR` for a destination not in Unicode NFC (``DestinationPattern/isNormalized(_:)``).
    static func notNormalized(_ destination: String) -> String {
        "destination \(destination) is not in Unicode normalization form C (NFC): send it composed"
    }

    // MARK: SUBSCRIBE / UNSUBSCRIBE

    private mutating func handleSubscribe(_ frame: STOMPFrame) -> Action? {
        guard let destination = frame.headers["destination"] else {
            failFrame("SUBSCRIBE requires a destination header", frame); return nil
        }
        let id: String
        if let given = frame.headers["id"] {
            id = given
        } else if version == .v1_0 {
            id = destination
        } else {
            failFrame("SUBSCRIBE requires an id header in STOMP \(version.rawValue)", frame); return nil
        }
        guard DestinationPattern.isNormalized(destination) else {
            failFrame(Self.notNormalized(destination), frame); return nil
        }
        if let problem = DestinationPattern.nameProblem(destination) {
            failFrame("SUBSCRIBE destination \(problem)", frame); return nil
        }
        let kind = policy.kind(of: destination)
        guard kind == .user || kind == .broker else {
            failFrame(policy.notAllowedMessage(destination, subscribe: true), frame); return nil
        }
        guard policy.maySubscribe(destination, identity: identity) else {
            failFrame("permission denied: SUBSCRIBE to \(destination)", frame, kind: .auth); return nil
        }
        // /user/queue/x always means this session's own user.
        let routed =
            kind == .user
            ? UserDestinations.routing(user: identity?.user, session: sessionID, clientDestination: destination)!
            : destination
        let pattern: DestinationPattern
        do { pattern = try DestinationPattern(routed) } catch {
            failFrame(error.description, frame); return nil
        }
        let ackMode: AckMode
        switch frame.headers["ack"] {
        case nil, "auto": ackMode = .auto
        case "client": ackMode = .client
        case "client-individual" where version != .v1_0: ackMode = .clientIndividual
        case let other?:
            failFrame("invalid ack mode '\(other)' for STOMP \(version.rawValue)", frame); return nil
        }
        var start: HistoryStart?
        switch (frame.headers["x-resume-from"], frame.headers["x-last"]) {
        case (nil, nil):
            break
        case (_?, _?):
            failFrame("SUBSCRIBE takes x-resume-from or x-last, not both", frame); return nil
        case (let text?, nil):
            guard let position = StreamPosition(parsing: text) else {
                failFrame("invalid x-resume-from '\(text)': expected <epoch>:<sequence> from an x-position header", frame); return nil
            }
            start = .after(position)
        case (nil, let text?):
            guard let count = Int(text), count >= 0 else {
                failFrame("invalid x-last '\(text)': expected a number of messages ≥ 0", frame); return nil
            }
            start = .last(count)
        }
        if start != nil, pattern.isWildcard {
            failFrame("x-resume-from and x-last need one destination, not the pattern '\(destination)' (history is kept per destination)", frame)
            return nil
        }
        guard let presence = presenceRequest(frame, destination: destination, kind: kind, pattern: pattern) else { return nil }
        guard !subscriptionIDs.contains(id) else {
            // STOMP 1.0 without an `id`: the destination names the subscription.
            let problem =
                frame.headers["id"] == nil
                ? "already subscribed to \(destination) (a subscription without id is named by its destination)"
                : "subscription id '\(id)' is already in use"
            failFrame(problem, frame); return nil
        }
        guard subscriptionIDs.count < config.maxSubscriptionsPerSession else {
            failFrame("too many subscriptions (limit \(config.maxSubscriptionsPerSession))", frame, kind: .limit); return nil
        }
        addSubscriptionID(id, destination: destination)
        let subscription = Subscription(
            id: id, destination: destination, pattern: pattern, ackMode: ackMode, start: start, presence: presence,
            wantsReceipt: frame.headers["receipt"] != nil)
        return startStep(.subscribe(subscription), for: frame, pipelined: false)
    }

    /// The `x-presence` header of a SUBSCRIBE: whether it asks for join/leave notices (nil:
    /// refused, the session failed). Notices are for one broker destination, where the
    /// `presence` access rules allow them, in Redis mode with events on.
    private mutating func presenceRequest(_ frame: STOMPFrame, destination: String, kind: SessionPolicy.DestinationKind, pattern: DestinationPattern) -> Bool? {
        switch frame.headers[Self.presenceHeader] {
        case nil, "false": return false
        case "true": break
        case let other?:
            failFrame("invalid \(Self.presenceHeader) '\(other)': expected true or false", frame); return nil
        }
        guard kind == .broker else {
            failFrame("\(Self.presenceHeader) is not available on user destination \(destination): presence is for broker destinations", frame)
            return nil
        }
        guard !pattern.isWildcard else {
            failFrame("\(Self.presenceHeader) needs one destination, not the pattern '\(destination)' (presence is kept per destination)", frame)
            return nil
        }
        guard config.presenceNotices else {
            failFrame("\(Self.presenceHeader) is not available: join/leave notices need redis.url and events.enabled", frame)
            return nil
        }
        guard policy.mayWatchPresence(destination, identity: identity) else {
            failFrame(
                "permission denied: presence is not allowed for \(destination) (no auth.rules.presence rule allows it)", frame, kind: .auth)
            return nil
        }
        return true
    }

    /// The SUBSCRIBE header asking for join/leave notices.
    package static let presenceHeader = "x-presence"

    /// An unknown id is answered all the same (as Spring's broker does; RabbitMQ refuses it):
    /// a client unsubscribing twice, or after a reconnect, is not ended by an `ERROR`.
    private mutating func handleUnsubscribe(_ frame: STOMPFrame) -> Action? {
        let ids: [String]
        if let id = frame.headers["id"] {
            ids = [id]
        } else if version == .v1_0, let destination = frame.headers["destination"] {
            // Every subscription to it, made with an `id` or without (named by the destination).
            ids = destinationsOfIDs.filter { $0.value == destination }.map(\.key).sorted()
        } else {
            failFrame(version == .v1_0 ? "UNSUBSCRIBE requires an id or destination header" : "UNSUBSCRIBE requires an id header", frame)
            return nil
        }
        for id in ids { _ = removeSubscriptionID(id) }
        return .unsubscribe(ids: ids, receipt: frame.headers["receipt"])
    }

    // MARK: ACK / NACK

    private mutating func handleAck(_ frame: STOMPFrame) -> Action? {
        let name = frame.command.rawValue
        if frame.command == .nack && version == .v1_0 {
            failFrame("NACK is not supported in STOMP 1.0", frame); return nil
        }
        switch version {
        case .v1_2:
            guard frame.headers["id"] != nil else { failFrame("\(name) requires an id header in STOMP 1.2", frame); return nil }
        case .v1_1:
            guard frame.headers["message-id"] != nil, frame.headers["subscription"] != nil else {
                failFrame("\(name) requires message-id and subscription headers in STOMP 1.1", frame); return nil
            }
        case .v1_0:
            guard frame.headers["message-id"] != nil else { failFrame("ACK requires a message-id header in STOMP 1.0", frame); return nil }
        }
        if let tx = frame.headers["transaction"] {
            // Acknowledged at COMMIT, with its receipt then.
            _ = appendToTransaction(tx, frame)
            return nil
        }
        // Topics are not durable: an ACK completes nothing and a NACK redelivers nothing.
        return frame.headers["receipt"].map { .sendReceipt($0) }
    }
}
