#if canImport(Glibc)
import Glibc
#endif
import NIOCore
import STOMPCodec

extension STOMPSessionHandler {
    /// SEND: to a broker destination (published), an application destination (routed) or,
    /// inside a transaction, buffered until COMMIT.
    func handleSend(_ frame: STOMPFrame) {
        guard let destination = frame.headers["destination"] else {
            fail("SEND requires a destination header", frame: frame); return
        }
        if let policy = config.accessPolicy, !policy.maySend(destination, identity: identity) {
            fail("permission denied: SEND to \(destination)", frame: frame, kind: .auth); return
        }
        if let tx = frame.headers["transaction"] {
            if appendToTransaction(tx, frame) { sendReceipt(for: frame) }
            return
        }
        if config.isBrokerDestination(destination) {
            publishToBroker(frame, destination: destination)
        } else if config.isApplicationDestination(destination) {
            sendToApplication(frame, destination: destination)
        } else {
            let allowed = (config.brokerPrefixes + config.applicationPrefixes).joined(separator: ", ")
            fail("destination \(destination) is not allowed: SEND to \(allowed)", frame: frame)
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

    func publishToBroker(_ frame: STOMPFrame, destination: String) {
        if destination.contains("*") {
            fail("cannot SEND to wildcard destination \(destination)", frame: frame); return
        }
        let message = PublishedMessage(destination: destination, messageID: services.messageIDs.next(),
                                       headers: Self.userHeaders(of: frame), body: frame.body)
        let future = services.engine.publish(message, on: shard.eventLoop)
        if services.engine.publishesSynchronously {
            completeSend(frame)
        } else {
            pipelineStep(future, for: frame, describe: { "publish to \(destination) failed: \($0)" }, onSuccess: { _ in })
        }
    }

    func sendToApplication(_ frame: STOMPFrame, destination: String) {
        guard let route = services.routes.route(for: destination) else {
            fail("no route for application destination \(destination)", frame: frame); return
        }
        var headers = Self.userHeaders(of: frame)
        let contentType = headers["content-type"]
        headers.remove("content-type")
        let message = AppMessage(destination: destination, body: frame.body, headers: headers, contentType: contentType,
                                 sessionID: sessionID, user: user, instanceID: services.instanceID,
                                 timestamp: Self.wallClockMillis())
        let loop = shard.eventLoop
        let engine = services.engine
        let ids = services.messageIDs
        // Broadcast replies are published before the receipt; replies to the sender are
        // written to this session's matching subscriptions.
        let future = route.handle(message, on: loop).flatMap { replies -> EventLoopFuture<[RouteReply]> in
            let publishes = replies.filter { $0.target == .broadcast }.map { reply in
                engine.publish(PublishedMessage(destination: reply.destination, messageID: ids.next(), headers: reply.headers, body: reply.body), on: loop)
            }
            return EventLoopFuture.andAllSucceed(publishes, on: loop).map { replies }
        }
        let describe: (any Error) -> String = { "route for \(destination) failed: \($0)" }
        let onSuccess: ([RouteReply]) -> Void = { replies in
            for reply in replies where reply.target == .sender {
                self.deliverToSelf(reply)
            }
        }
        if route.keepsOrderWhenPipelined {
            pipelineStep(future, for: frame, describe: describe, onSuccess: onSuccess)
        } else {
            awaitStep(future, for: frame, describe: describe, onSuccess: onSuccess)
        }
    }

    /// Delivers a reply to this session's subscriptions that match its destination.
    func deliverToSelf(_ reply: RouteReply) {
        let message = PublishedMessage(destination: reply.destination, messageID: services.messageIDs.next(), headers: reply.headers, body: reply.body)
        deliverToOwnSubscriptions(message)
    }

    public func deliverToOwnSubscriptions(_ message: PublishedMessage) {
        var delivered = false
        // A reply to this session may name its user destination as the client knows it.
        let routed = config.isUserDestination(message.destination)
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
