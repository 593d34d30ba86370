import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Redis
import STOMPCodec
import SwitchboardCore
import SwitchboardWire

/// Where backend messages come in from Redis (backend → browsers). Every instance reads
/// each inbound route and delivers to its own subscribers, so each subscriber gets a message
/// once whichever instance holds its socket. For a destination that keeps history, every
/// instance instead records the message through the history function with the same `once`
/// token (a stream entry's id; for Pub/Sub, see ``InboundOnceTokens``): one of them records
/// and publishes it, and all deliver the recorded copy.
package enum RedisInboundRoute: Sendable, Equatable {
    /// A Pub/Sub channel mapped to a destination; the payload is the body, byte for byte.
    case channel(channel: String, destination: String)
    /// A Pub/Sub channel carrying the HTTP API's JSON, `{"topic": "...", "message": "..."}`.
    case broadcast(channel: String)
    /// A stream read without a consumer group by every instance; entries hold the fields
    /// `topic` and `message`. Each instance keeps its own last-read id, so nothing between
    /// two reads is skipped (the reference's `XREAD $` on every poll skips entries).
    case stream(stream: String)
}

/// Runs the inbound routes of one instance.
package final class RedisInboundRoutes: Sendable {
    let redis: GatewayRedis
    let engine: RedisEngine
    let hub: FanoutHub
    let messageIDs: MessageIDGenerator
    let configuration: SessionConfiguration
    let logger: Logger
    let subscriptions = NIOLockedValueBox<[RedisCallbackSubscription]>([])
    let readers = NIOLockedValueBox<[Task<Void, Never>]>([])
    /// The stream readers' dedicated connections, closed by ``stop()`` to end a blocking read.
    let readerConnections = NIOLockedValueBox<[ObjectIdentifier: RedisConnection]>([:])
    let onceTokens: InboundOnceTokens
    /// How long a stream entry whose recording keeps failing, for a reason that will not pass
    /// by itself, is tried before it is given up (``InboundStreamCursor``).
    let giveUpAfter: Duration
    /// How often a quiet stream's end is compared with the reader's position (besides each
    /// (re)connect): `XINFO STREAM` answers with the first and last entries whole.
    let quietEndCheckInterval: Duration

    package init(
        redis: GatewayRedis, engine: RedisEngine, hub: FanoutHub, messageIDs: MessageIDGenerator, configuration: SessionConfiguration, logger: Logger,
        giveUpAfter: Duration = .seconds(30), quietEndCheckInterval: Duration = .seconds(30)
    ) {
        self.giveUpAfter = giveUpAfter
        self.quietEndCheckInterval = quietEndCheckInterval
        self.redis = redis
        self.engine = engine
        self.hub = hub
        self.messageIDs = messageIDs
        self.configuration = configuration
        self.logger = logger
        self.onceTokens = InboundOnceTokens { [logger] dropped in
            logger.warning(
                "inbound once-token table full: forgot the counts of \(dropped) messages; an identical Pub/Sub message within 10 minutes may be taken as already recorded"
            )
        }
    }

    package func start(_ routes: [RedisInboundRoute]) async throws {
        for route in routes {
            switch route {
            case .channel(let channel, let destination):
                let sub = try await redis.subscribe(to: [channel], kind: .channel) { [weak self] message in
                    guard let self else { return }
                    self.logFailure(of: self.deliver(destination: destination, body: message.payload, headers: ["content-type": "text/plain"]), destination: destination)
                }
                subscriptions.withLockedValue { $0.append(sub) }
            case .broadcast(let channel):
                let sub = try await redis.subscribe(to: [channel], kind: .channel) { [weak self] message in
                    self?.onBroadcast(message.payload, channel: channel)
                }
                subscriptions.withLockedValue { $0.append(sub) }
            case .stream(let stream):
                let task = Task { await self.readStream(stream) }
                readers.withLockedValue { $0.append(task) }
            }
        }
    }

    /// Stops every route, and returns once the stream readers are done: a reader blocked in
    /// `XREAD BLOCK` is not woken by its task's cancellation, so its connection is closed (else
    /// its reply would come after the event loops stopped).
    package func stop() async {
        let tasks = readers.withLockedValue { $0 }
        for task in tasks { task.cancel() }
        for connection in readerConnections.withLockedValue({ Array($0.values) }) { await connection.close() }
        for task in tasks { await task.value }
        for sub in subscriptions.withLockedValue({ $0 }) { await sub.unsubscribe() }
    }

    /// Delivers an inbound message: recorded once in history when its destination keeps it
    /// (`once` names the message alike on every instance; by default a digest of the message
    /// and how many identical ones came before it, see ``InboundOnceTokens``), else delivered to
    /// this instance's subscribers. Returns the recording (nil: nothing to wait for), failing
    /// with the Redis client's error.
    @discardableResult
    func deliver(destination: String, body: ByteBuffer, headers: STOMPHeaders, once: String? = nil) -> EventLoopFuture<Void>? {
        let isUser = destination.hasPrefix(UserDestinations.routingPrefix)
        // `/user/queue/x` under a catch-all broker prefix reaches no user-queue subscriber.
        let isBroker = configuration.isBrokerDestination(destination) && !configuration.isUserDestination(destination)
        guard isUser || isBroker, !destination.contains("*") else {
            engine.inboundDropped.add(.notBrokerDestination)
            logger.log(
                level: .warning, throttledBy: InputLogs.notBroker, "inbound message for a destination that is not a broker destination dropped",
                metadata: ["destination": "\(destination.prefix(200))"])
            return nil
        }
        if let problem = Self.nameProblem(destination) {
            engine.inboundDropped.add(.badDestination)
            logger.log(
                level: .warning, throttledBy: InputLogs.badName, "inbound message dropped: its destination \(problem)",
                metadata: ["destination": "\(destination.prefix(200))"])
            return nil
        }
        let message = PublishedMessage(destination: destination, messageID: messageIDs.next(), headers: headers, body: body)
        guard engine.keepsHistory(destination) else {
            hub.deliver(message)
            return nil
        }
        return engine.publishInbound(message, once: once ?? onceTokens.token(destination: destination, headers: headers, body: body))
    }

    /// A Pub/Sub message is not read again: a failed recording is logged (every instance
    /// failing alike means the message is lost; its subscribers see no gap).
    private func logFailure(of recording: EventLoopFuture<Void>?, destination: String) {
        recording?.whenFailure { error in
            self.engine.inboundDropped.add(.notRecorded)
            self.logger.log(
                level: .warning, throttledBy: InputLogs.notRecorded, "inbound Pub/Sub message not recorded", metadata: ["destination": "\(destination)", "error": "\(error)"])
        }
    }

    /// What every other entry point refuses in a destination or user name: too long, control
    /// characters, not NFC (Swift compares strings by canonical equivalence, history and Redis
    /// by bytes).
    static func nameProblem(_ name: String) -> String? {
        DestinationPattern.nameProblem(name) ?? (DestinationPattern.isNormalized(name) ? nil : "must be in NFC")
    }

    func onBroadcast(_ payload: ByteBuffer, channel: String) {
        guard let broadcast = BroadcastPayload.decode(payload) else {
            engine.inboundDropped.add(.badPayload)
            logger.log(
                level: .warning, throttledBy: InputLogs.badBroadcast,
                "broadcast payload is not {\"topic\",\"message\"} JSON (with a non-empty string user, if any); dropped", metadata: ["channel": "\(channel)"])
            return
        }
        // What the HTTP API refuses is refused here too: headers no STOMP frame carries as sent,
        // a user name that is not one (it would route to another user's destinations).
        let problem =
            broadcast.headers.flatMap { PublishHeaders.problem($0).map { "headers \($0)" } }
            ?? broadcast.user.flatMap { user in Self.nameProblem(user).map { "user \($0)" } }
        if let problem {
            engine.inboundDropped.add(.badPayload)
            logger.log(
                level: .warning, throttledBy: InputLogs.badBroadcast, "broadcast payload dropped: its \(problem)", metadata: ["channel": "\(channel)"])
            return
        }
        var headers: STOMPHeaders = ["content-type": broadcast.contentType ?? "text/plain"]
        if let extra = broadcast.headers {
            for (k, v) in extra.sorted(by: { $0.key < $1.key }) where !PublishedMessage.reservedHeaders.contains(k) && k != "content-type" {
                headers.add(k, v)
            }
        }
        if let user = broadcast.user {
            // {"user": "alice", "topic": "/queue/x", ...}: to alice's /user/queue/x sessions. A
            // topic outside the user destinations reaches nobody (`/topic/x`), or another user
            // (`x/queue/y` routes to user `alicex`): dropped, as the HTTP API refuses it.
            guard configuration.isUserTopic(broadcast.topic) else {
                engine.inboundDropped.add(.notBrokerDestination)
                logger.log(
                    level: .warning, throttledBy: InputLogs.notBroker, "inbound message to a user for a topic that is not a user destination dropped",
                    metadata: ["topic": "\(broadcast.topic.prefix(200))", "prefixes": "\(configuration.userDestinationPrefixes)"])
                return
            }
            let destination = UserDestinations.routing(user: user, destination: broadcast.topic)
            logFailure(of: deliver(destination: destination, body: ByteBuffer(string: broadcast.message), headers: headers), destination: destination)
        } else {
            logFailure(of: deliver(destination: broadcast.topic, body: ByteBuffer(string: broadcast.message), headers: headers), destination: broadcast.topic)
        }
    }

    /// Reads `stream` from where this instance last was, on a dedicated connection
    /// (blocking reads must not stall the shared one). Starts where the instances together
    /// stand (``InboundCursor``; none stored: at the stream's current end), and moves that
    /// shared position on after each batch. A batch's entries are recorded in one go; the
    /// reader reads on once they are, and reads again from an entry whose recording failed
    /// (``InboundStreamCursor``).
    func readStream(_ stream: String) async {
        var cursor = InboundStreamCursor(giveUpAfter: giveUpAfter)
        var attempt = 0
        /// Redis's time at the last shared-position call, and when that was here.
        var wall: (milliseconds: Int64, at: ContinuousClock.Instant)?
        /// Redis without functions (before 7): no shared position; each instance starts at the end.
        var sharingUnsupported = false
        /// Reads or moves the shared position; throws what Redis said. `starting`: the reader's
        /// first calls, where a refusal for good (no functions, an ACL) turns sharing off.
        func share(_ id: String?, starting: Bool = false, rewindingFrom: String? = nil) async throws {
            guard !sharingUnsupported else { return }
            do {
                let command = InboundCursor(key: engine.naming.inboundCursorKey(forStream: stream), advanceTo: id, rewindingFrom: rewindingFrom)
                let reply = try await HistoryFunctions.call(command, on: redis).get()
                cursor.sharedThrough = reply.through
                cursor.sharedFrom = reply.from
                wall = (reply.wallMilliseconds, .now)
            } catch let error where starting && !RedisEngine.willPass(error) {
                // Redis before 7 (no functions), an ACL refusing FCALL or the key, a library that
                // cannot be loaded: the route still runs (without history it needs no function),
                // each instance from where it starts, as before positions were shared.
                sharingUnsupported = true
                logger.warning(
                    "inbound stream positions cannot be shared: an instance that starts reads from the stream's end",
                    metadata: ["stream": "\(stream)", "error": "\(error)"])
            }
        }
        /// Moves the shared position on; a failure is logged (the next batch moves it further).
        func shareOrLog(_ id: String?, rewindingFrom: String? = nil) async {
            do {
                try await share(id, rewindingFrom: rewindingFrom)
            } catch {
                logger.log(
                    level: .warning, throttledBy: InputLogs.streamPositions, "inbound stream position not shared",
                    metadata: ["stream": "\(stream)", "error": "\(error)"])
            }
        }
        /// Follows the stream back if it ends before the position (``InboundStreamCursor/streamEnds(at:)``).
        /// Redis refusing `XINFO` (an ACL) leaves the position as it is.
        var endCheckedAt = ContinuousClock.now
        func followRewind(_ connection: RedisConnection) async throws {
            endCheckedAt = .now
            let end: String?
            do {
                end = try await connection.execute(XINFOSTREAM(key: stream)).lastGeneratedID
            } catch let error as RedisServerError where error.isNoSuchKey {
                end = nil
            } catch let error where !(error is RedisClientError) {
                // Refused (an ACL) or not understood (a server that leaves fields out): the
                // route reads on as before.
                logger.log(
                    level: .warning, throttledBy: InputLogs.streamPositions,
                    "inbound stream's end not read (XINFO STREAM): a stream that goes back is not followed",
                    metadata: ["stream": "\(stream)", "error": "\(error)"])
                return
            }
            guard let position = cursor.streamEnds(at: end) else { return }
            engine.inboundStreamRewinds.add(1, ordering: .relaxed)
            logger.warning(
                "inbound stream ends before the position read (Redis went back, or the key was deleted and added again): reading on from its end",
                metadata: ["stream": "\(stream)", "position": "\(position)", "end": "\(end ?? "no stream")"])
            // The shared position too, unless another instance moved it meanwhile: else every
            // instance that starts later begins past the stream's end again.
            if let through = cursor.sharedThrough, InboundStreamCursor.id(through, isAfter: cursor.lastID ?? "0-0") {
                await shareOrLog(cursor.lastID, rewindingFrom: through)
            }
        }
        while !Task.isCancelled {
            do {
                try await redis.withDedicatedConnection(forKeys: [stream]) { connection in
                    let key = ObjectIdentifier(connection)
                    readerConnections.withLockedValue { $0[key] = connection }
                    defer { readerConnections.withLockedValue { _ = $0.removeValue(forKey: key) } }
                    // Stopped while connecting: stop() may have closed the connections already.
                    if Task.isCancelled { return }
                    if cursor.lastID == nil {
                        // Not read (Redis unreachable, loading, failing over): not started (an
                        // instance starting at the stream's end while a position is stored would
                        // lose what was added while none ran).
                        try await share(nil, starting: true)
                        if let shared = cursor.sharedThrough {
                            cursor.lastID = shared
                        } else {
                            // Stored at once: entries added while every instance is down are read
                            // by the next to start.
                            cursor.lastID = try await Self.lastEntryID(stream, connection)
                            try await share(cursor.lastID, starting: true)
                        }
                    } else {
                        // Back after an outage: where the others stand now.
                        await shareOrLog(nil)
                    }
                    try await followRewind(connection)
                    while !Task.isCancelled {
                        // Not while the fan-out backlog is over its limit (as the subscriber
                        // connections pause): a backlog read from the stream went to the loops'
                        // inboxes with no bound.
                        if hub.isBacklogged {
                            engine.inboundStreamReadPauses.add(1, ordering: .relaxed)
                            repeat { try await Task.sleep(for: .milliseconds(20)) } while hub.isBacklogged && !Task.isCancelled
                        }
                        let result = try await connection.execute(XREAD(count: 256, blockMilliseconds: 2000, streams: [(stream, cursor.lastID!)]))
                        // Only a read that worked ends the back-off (a stream that cannot be read,
                        // a key of another type or an ACL, reconnected every 100 ms for good).
                        attempt = 0
                        guard let entries = result?[stream], !entries.isEmpty else {
                            // A quiet stream keeps its shared position alive (it expires a week
                            // after the last call).
                            if let last = wall?.at, last.duration(to: .now) > .seconds(3_600) { await shareOrLog(nil) }
                            // A stream deleted and added again (new ids before the position)
                            // leaves the read blocked: looked at while quiet, now and then.
                            if endCheckedAt.duration(to: .now) >= quietEndCheckInterval { try await followRewind(connection) }
                            continue
                        }
                        let now = wall.map { wall in
                            let elapsed = wall.at.duration(to: .now).components
                            return wall.milliseconds + elapsed.seconds * 1_000 + elapsed.attoseconds / 1_000_000_000_000_000
                        }
                        var skipped = 0
                        let recordings = entries.map { entry in
                            guard cursor.needsRecording(entry.id) else { return (entry.id, (destination: String?.none, recording: EventLoopFuture<Void>?.none)) }
                            // Another instance recorded it (history only: without history each
                            // instance delivers every entry to its own subscribers).
                            if cursor.recordedElsewhere(entry.id, wallMilliseconds: now),
                                let topic = entry[field: "topic"].map({ String(buffer: $0) }), engine.keepsHistory(topic)
                            {
                                skipped += 1
                                return (entry.id, (destination: nil, recording: nil))
                            }
                            return (entry.id, deliver(entry, of: stream))
                        }
                        if skipped > 0 {
                            engine.inboundEntriesRecordedElsewhere.add(skipped, ordering: .relaxed)
                            logger.log(
                                level: .info, throttledBy: InputLogs.streamPositions,
                                "inbound stream entries within the shared position and older than their once tokens skipped: another instance recorded them",
                                metadata: ["stream": "\(stream)", "skipped": "\(skipped)"])
                        }
                        let before = cursor.lastID
                        var outcomes: [InboundStreamCursor.Entry] = []
                        for (id, (destination, recording)) in recordings {
                            do {
                                try await recording?.get()
                                outcomes.append(.init(id: id, outcome: .done(destination: destination)))
                            } catch {
                                let transient = RedisEngine.willPass(error)
                                outcomes.append(.init(id: id, outcome: .failed(destination: destination ?? "", transient: transient, reason: "\(error)")))
                            }
                        }
                        // The entries' age, on Redis's clock, matters only for a failure.
                        let failed = outcomes.contains { if case .failed = $0.outcome { true } else { false } }
                        let failedAt = failed ? try? await connection.execute(TIME()).milliseconds : nil
                        let next = cursor.batchDone(outcomes, at: .now, wallMilliseconds: failedAt)
                        if cursor.lastID != before { await shareOrLog(cursor.lastID) }
                        for given in next.givenUp {
                            engine.inboundEntriesGivenUp.add(1, ordering: .relaxed)
                            logger.log(
                                level: .error, throttledBy: InputLogs.notRecorded, "inbound stream entry given up: redis did not record it",
                                metadata: ["stream": "\(stream)", "id": "\(given.id)", "error": "\(given.reason)"])
                        }
                        if let retry = next.retry {
                            engine.inboundRecordRetries.add(1, ordering: .relaxed)
                            logger.log(
                                level: .warning, throttledBy: InputLogs.notRecorded, "inbound stream entry not recorded; reading it again",
                                metadata: ["stream": "\(stream)", "id": "\(retry.id)", "retry-in": "\(retry.after)", "error": "\(retry.reason)"])
                            try await Task.sleep(for: retry.after)
                        }
                    }
                }
            } catch {
                if Task.isCancelled { return }
                attempt += 1
                let delay = min(50 * (1 << min(attempt, 6)), 2000)
                engine.inboundReadFailures.add(1, ordering: .relaxed)
                // A connection lost once is routine; a stream failing read after read is a route down.
                logger.log(
                    level: attempt >= 3 ? .warning : .debug, throttledBy: InputLogs.streamReads, "inbound stream not read; retrying",
                    metadata: ["stream": "\(stream)", "attempt": "\(attempt)", "error": "\(error)"])
                try? await Task.sleep(for: .milliseconds(delay))
            }
        }
    }

    /// Delivers one stream entry (``deliver(destination:body:headers:once:)``) and says to
    /// which destination; an entry without the fields `topic` and `message` is skipped.
    private func deliver(_ entry: RedisStreamEntry, of stream: String) -> (destination: String?, recording: EventLoopFuture<Void>?) {
        guard let topic = entry[field: "topic"].map({ String(buffer: $0) }), let body = entry[field: "message"] else {
            engine.inboundDropped.add(.badStreamEntry)
            logger.log(
                level: .warning, throttledBy: InputLogs.badStreamEntry, "stream entry without topic/message fields skipped",
                metadata: ["stream": "\(stream)", "id": "\(entry.id)"])
            return (nil, nil)
        }
        return (topic, deliver(destination: topic, body: body, headers: ["content-type": "text/plain"], once: "\(stream):\(entry.id)"))
    }

    /// The id of the newest entry, or `0-0` for an empty or missing stream.
    static func lastEntryID(_ stream: String, _ connection: RedisConnection) async throws -> String {
        let token = try await connection.execute(RawCommand(arguments: ["XREVRANGE", .string(stream), "+", "-", "COUNT", "1"], keys: [stream]))
        if case .array(let items) = token.value {
            for item in items {
                let entry = try RedisStreamEntry(fromRESP: item)
                return entry.id
            }
        }
        return "0-0"
    }
}
