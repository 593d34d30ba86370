import NIOCore
import Redis
import STOMPCodec
import SwitchboardWire
import Synchronization

/// Sends messages to browsers through the gateway's Redis channels.
///
/// - ``publish(destination:body:headers:contentType:)`` publishes on `switchboard:dest:<destination>`:
///   every gateway instance subscribed to that destination delivers it once to each of its
///   matching subscriptions.
/// - ``reply(to:destination:body:headers:contentType:)`` publishes on
///   `switchboard:instance:<instance>` with a `session` header: only the sender's session gets it,
///   on its subscriptions matching `destination`.
///
/// Payloads are ``RedisEnvelope``s (a STOMP `MESSAGE` frame after a 0x01 marker) whose `origin`
/// is ``origin``, so user headers and binary bodies survive.
///
/// On a Redis Cluster (``GatewayRedis/cluster(_:)``) it uses the gateway's sharded channels
/// instead: `FCALL switchboard_spublish` (or `SPUBLISH`) on `switchboard:{<destination>}:dest`,
/// and `SPUBLISH` on `switchboard:{instance:<instance>}`; every command goes to the primary owning
/// its slot, and every primary loads the history functions when the publisher connects to it.
public struct SwitchboardPublisher: Sendable {
    /// Where messages are published: one server (its multiplexed command connection) or a cluster.
    public let redis: GatewayRedis
    /// The gateway's channel naming (prefix).
    public let naming: RedisChannelNaming
    /// Written as the envelope's `origin`; usually the consumer name.
    public let origin: String
    /// Whether ``publish(destination:body:headers:contentType:)`` and ``publish(_:)`` record
    /// each message in its destination's history (through the `switchboard_publish` Redis
    /// Function, Redis 7 or later), as the gateway does: subscribers get it in order with an
    /// `x-position`, and a client that was away can resume it. False: a plain `PUBLISH`,
    /// delivered but not kept. Default true.
    public var recordsHistory = true
    /// Set it as the gateway's `redis.appendfsync-always`: every Redis primary runs with
    /// `appendonly yes` and `appendfsync always`, so a restart loses nothing it acknowledged and
    /// history keeps its positions. False (the default, as the gateway's): the first use of a
    /// destination after a Redis restart moves its sequence ahead by 1,000,000, so positions lost
    /// with unsynced writes are never issued twice; when that first use is this publisher's while
    /// the gateway says Redis is durable, subscribers see a jump although nothing was lost.
    public var appendfsyncAlways = false
    let messageIDs: MessageIDGenerator

    /// - Parameters:
    ///   - origin: identifies this publisher in envelopes and message IDs (`<origin>-<token>-<n>`,
    ///     the token random per publisher: replicas sharing an origin, or a restarted one, never
    ///     give out the same id, which clients that drop repeated ids would drop). It must
    ///     differ from every gateway instance ID, since instances ignore their own envelopes.
    public init(client: RedisClient, origin: String, naming: RedisChannelNaming = RedisChannelNaming()) {
        self.init(redis: .single(client), origin: origin, naming: naming)
    }

    /// - Parameters:
    ///   - redis: one server, or a Redis Cluster (whose client must not have sent commands yet, so
    ///     every primary's connection loads the history functions first).
    ///   - origin: see ``init(client:origin:naming:)``.
    public init(redis: GatewayRedis, origin: String, naming: RedisChannelNaming = RedisChannelNaming()) {
        self.redis = redis
        self.origin = origin
        self.naming = naming
        self.messageIDs = MessageIDGenerator(instanceID: "\(origin)-\(Self.randomToken())")
        // A Redis that restarted empty (on a cluster: every primary, a promoted replica included)
        // gets the history functions before the first FCALL.
        redis.addConnectionSetup(LoadHistoryFunctions.arguments)
    }

    /// Six random characters of `[a-z0-9]` (2^31 choices): message ids of this publisher apart.
    static func randomToken() -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789".utf8)
        var generator = SystemRandomNumberGenerator()
        return String(decoding: (0..<6).map { _ in alphabet.randomElement(using: &generator)! }, as: UTF8.self)
    }

    /// Whether the history functions were loaded once (the connections load them on reconnect).
    final class LibraryState: Sendable {
        let loaded = Atomic<Bool>(false)
    }

    let library = LibraryState()

    /// Loads the history functions before the first recording publish: a batch pipelined
    /// behind a missing function would be retried out of order.
    /// On a cluster each primary's connection loads them before its first command (see ``init(redis:origin:naming:)``).
    func ensureLibrary() async throws {
        guard self.recordsHistory, !self.redis.isCluster, !self.library.loaded.load(ordering: .relaxed) else { return }
        _ = try await self.redis.execute(LoadHistoryFunctions())
        self.library.loaded.store(true, ordering: .relaxed)
    }

    /// Publishes `body` to every subscriber of `destination` on every gateway instance.
    ///
    /// - Parameters:
    ///   - headers: user headers for the `MESSAGE` frame (server-owned ones such as `destination`,
    ///     `message-id`, `subscription` are dropped).
    ///   - contentType: sent as `content-type` (replacing one in `headers`) when not `nil`.
    /// - Returns: how many Redis subscribers (gateway instances with interested sessions) got it.
    @discardableResult
    public func publish(destination: String, body: ByteBuffer, headers: STOMPHeaders = [:], contentType: String? = nil) async throws -> Int {
        try await self.ensureLibrary()
        let payload = self.envelope(destination: destination, body: body, headers: headers, contentType: contentType, session: nil)
        return try await self.send(destination: destination, payload: payload).get()
    }

    /// Publishes `body` to `destination` unless a publish with the same `idempotencyKey` to it
    /// was recorded in the last 10 minutes, by this publisher, another or a gateway (the HTTP
    /// API's `Idempotency-Key`, a STOMP `SEND`'s `idempotency-key`: one key space per
    /// destination). A retry after a lost reply or a timeout then publishes once.
    ///
    /// - Returns: true when published, false when the key was recorded already (nothing published).
    /// - Throws: ``SwitchboardPublisherError`` when ``recordsHistory`` is false (the key is kept in
    ///   the step that records the message in history), or the Redis error.
    public func publish(
        destination: String, body: ByteBuffer, headers: STOMPHeaders = [:], contentType: String? = nil, idempotencyKey: String
    ) async throws -> Bool {
        guard self.recordsHistory else { throw SwitchboardPublisherError.idempotencyNeedsHistory }
        if let problem = IdempotencyTokens.problem(idempotencyKey) { throw SwitchboardPublisherError.invalidIdempotencyKey(problem) }
        try await self.ensureLibrary()
        let payload = self.envelope(destination: destination, body: body, headers: headers, contentType: contentType, session: nil)
        let command = HistoryPublish(
            key: self.naming.historyKey(forDestination: destination), payload: payload, once: IdempotencyTokens.api(idempotencyKey),
            sharded: self.redis.isCluster, durable: self.appendfsyncAlways)
        return try await HistoryFunctions.call(command, on: self.redis).get().position != nil
    }

    /// Records and publishes (see ``recordsHistory``) one envelope.
    func send(destination: String, payload: ByteBuffer) -> EventLoopFuture<Int> {
        guard self.recordsHistory else {
            if self.redis.isCluster {
                return self.redis.send(SPUBLISH(channel: self.naming.shardChannel(forDestination: destination), message: .bytes(payload)))
            }
            return self.redis.send(PUBLISH(channel: self.naming.channel(forDestination: destination), message: .bytes(payload)))
        }
        let command = HistoryPublish(
            key: self.naming.historyKey(forDestination: destination), payload: payload, sharded: self.redis.isCluster, durable: self.appendfsyncAlways)
        return HistoryFunctions.call(command, on: self.redis).map(\.receivers)
    }

    /// Publishes a text body to every subscriber of `destination` (UTF-8; see the `ByteBuffer` variant).
    @discardableResult
    public func publish(destination: String, body: String, headers: STOMPHeaders = [:], contentType: String? = "text/plain") async throws -> Int {
        try await self.publish(destination: destination, body: ByteBuffer(string: body), headers: headers, contentType: contentType)
    }

    /// One message of a batch for ``publish(_:)``.
    public struct Notification: Sendable {
        public var destination: String
        public var body: ByteBuffer
        public var headers: STOMPHeaders
        public var contentType: String?

        /// A message for `destination`; `contentType` replaces a `content-type` in `headers` when not nil.
        public init(destination: String, body: ByteBuffer, headers: STOMPHeaders = [:], contentType: String? = nil) {
            self.destination = destination
            self.body = body
            self.headers = headers
            self.contentType = contentType
        }

        /// A text message (UTF-8, `text/plain` unless told otherwise).
        public init(destination: String, body: String, headers: STOMPHeaders = [:], contentType: String? = "text/plain") {
            self.init(destination: destination, body: ByteBuffer(string: body), headers: headers, contentType: contentType)
        }
    }

    /// Publishes a batch, pipelined: every `PUBLISH` is written before any reply is awaited, and
    /// the command connection flushes once per event-loop tick, so a batch costs about one
    /// round trip instead of one per message. Messages are published in order.
    ///
    /// - Returns: per notification, in order, how many Redis subscribers got it, or the error
    ///   that stopped it (e.g. ``RedisClientError/notConnected``); one failure does not stop the rest.
    public func publish(_ batch: [Notification]) async -> [Result<Int, any Error>] {
        do {
            try await self.ensureLibrary()
        } catch {
            return batch.map { _ in .failure(error) }
        }
        let replies = batch.map { item in
            let payload = self.envelope(destination: item.destination, body: item.body, headers: item.headers, contentType: item.contentType, session: nil)
            return self.send(destination: item.destination, payload: payload)
        }
        var results: [Result<Int, any Error>] = []
        results.reserveCapacity(replies.count)
        for reply in replies {
            do {
                results.append(.success(try await reply.get()))
            } catch {
                results.append(.failure(error))
            }
        }
        return results
    }

    /// Sends `body` to the subscriptions of one session that match `destination`.
    ///
    /// - Returns: how many Redis subscribers got it (1 when the instance is up, 0 otherwise).
    @discardableResult
    public func publish(
        toSession session: String, onInstance instance: String, destination: String,
        body: ByteBuffer, headers: STOMPHeaders = [:], contentType: String? = nil
    ) async throws -> Int {
        let payload = self.envelope(destination: destination, body: body, headers: headers, contentType: contentType, session: session)
        if self.redis.isCluster {
            return try await self.redis.execute(SPUBLISH(channel: self.naming.instanceShardChannel(instance), message: .bytes(payload)))
        }
        return try await self.redis.execute(PUBLISH(channel: self.naming.instanceChannel(instance), message: .bytes(payload)))
    }

    /// Answers the session that sent `message`: only its subscriptions matching `destination` get `body`.
    ///
    /// - Throws: ``SwitchboardKitError/missingSender`` when the entry has no `session` or `instance`.
    @discardableResult
    public func reply(
        to message: IncomingMessage, destination: String, body: ByteBuffer, headers: STOMPHeaders = [:], contentType: String? = nil
    ) async throws -> Int {
        guard let session = message.session, let instance = message.instance else {
            throw SwitchboardKitError.missingSender(entryID: message.id)
        }
        return try await self.publish(
            toSession: session, onInstance: instance, destination: destination, body: body, headers: headers, contentType: contentType
        )
    }

    /// Answers the sender of `message` with a text body (UTF-8; see the `ByteBuffer` variant).
    @discardableResult
    public func reply(
        to message: IncomingMessage, destination: String, body: String, headers: STOMPHeaders = [:], contentType: String? = "text/plain"
    ) async throws -> Int {
        try await self.reply(to: message, destination: destination, body: ByteBuffer(string: body), headers: headers, contentType: contentType)
    }

    /// Publishes to user `user` at a user destination (`/queue/...`): every session of that
    /// user subscribed to `/user/queue/...` gets it, on every gateway instance.
    ///
    /// - Throws: ``SwitchboardPublisherError/invalidUserDestination(_:)`` when `destination`
    ///   does not start with `/` (`x/queue/y` would reach user `<user>x`).
    @discardableResult
    public func publish(
        toUser user: String, destination: String, body: String, headers: STOMPHeaders = [:],
        contentType: String? = "text/plain"
    ) async throws -> Int {
        guard destination.hasPrefix("/") else { throw SwitchboardPublisherError.invalidUserDestination(destination) }
        return try await publish(
            destination: UserDestinations.routing(user: user, destination: destination), body: ByteBuffer(string: body),
            headers: headers, contentType: contentType)
    }

    /// The envelope payload that the publish methods send (exposed for tests and custom transports).
    public func envelope(destination: String, body: ByteBuffer, headers: STOMPHeaders, contentType: String?, session: String?) -> ByteBuffer {
        var all = STOMPHeaders()
        if let contentType { all.add("content-type", contentType) }
        for (name, value) in headers where contentType == nil || name != "content-type" { all.add(name, value) }
        let message = PublishedMessage(destination: destination, messageID: self.messageIDs.next(), headers: all, body: body)
        return RedisEnvelope.encode(message, origin: self.origin, session: session)
    }
}

/// Errors raised by SwitchboardKit itself.
public struct SwitchboardKitError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A short description of what went wrong.
    public var message: String

    /// Creates an error with a description.
    public init(_ message: String) { self.message = message }

    /// The entry lacks the `session`/`instance` fields needed to answer its sender.
    public static func missingSender(entryID: String) -> SwitchboardKitError {
        SwitchboardKitError("stream entry \(entryID) has no session/instance to reply to")
    }

    /// ``StreamConsumer/run(_:)`` was called while the consumer was already running or after it stopped.
    public static let alreadyRunning = SwitchboardKitError("the stream consumer is already running or was stopped")

    public var description: String { "SwitchboardKitError: \(self.message)" }
}

/// Why ``SwitchboardPublisher`` refused a publish.
public struct SwitchboardPublisherError: Error, Hashable, CustomStringConvertible {
    enum Code: Hashable {
        case idempotencyNeedsHistory
        case invalidIdempotencyKey(String)
        case invalidUserDestination(String)
    }

    let code: Code

    /// An idempotency key is kept in the step that records the message in history:
    /// ``SwitchboardPublisher/recordsHistory`` must be true.
    public static let idempotencyNeedsHistory = SwitchboardPublisherError(code: .idempotencyNeedsHistory)

    /// The key is not 1…256 bytes without control characters (`problem` says which).
    public static func invalidIdempotencyKey(_ problem: String) -> SwitchboardPublisherError {
        SwitchboardPublisherError(code: .invalidIdempotencyKey(problem))
    }

    /// A user's destination must start with `/` (`/queue/...`).
    public static func invalidUserDestination(_ destination: String) -> SwitchboardPublisherError {
        SwitchboardPublisherError(code: .invalidUserDestination(destination))
    }

    public var description: String {
        switch code {
        case .idempotencyNeedsHistory: "an idempotency key needs recordsHistory (it is kept in the step that records the message in history)"
        case .invalidIdempotencyKey(let problem): "idempotency key \(problem)"
        case .invalidUserDestination(let destination): "a user's destination must start with / (/queue/...), not '\(destination)'"
        }
    }
}
