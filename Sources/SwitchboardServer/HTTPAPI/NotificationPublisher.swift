import Foundation
import HTTPTypes
import NIOCore
import SwitchboardAPIModel
import SwitchboardAuth
import SwitchboardCore
import SwitchboardRoutes
import SwitchboardWire

/// What every way of serving the publish API shares: the API key check, request validation,
/// the published message and the answer. ``PublishAPI`` (Hummingbird routes) and
/// ``HTTPPublishHandler`` (the event-loop fast path) both call it, so they answer alike.
struct NotificationPublisher: Sendable {
    let services: GatewayServices
    let apiKeys: APIKeyStore
    let maxBodyBytes: Int
    /// Most notifications in one `POST /api/notifications`.
    let maxBatchItems: Int
    /// The instance's bound on publishes in flight (`http.max-publish-bytes`), shared by every
    /// API connection and port.
    var publishBytes = PublishBytesBudget(limit: 0)

    /// An HTTP error answered as `{"error": "...", "field": "..."}`.
    struct Failure: Error, Sendable {
        var status: HTTPResponse.Status
        var message: String
        var field: String?
        /// The answer closes the connection (`Connection: close`): the request's body is not
        /// read to its end.
        var closesConnection = false

        init(status: HTTPResponse.Status, message: String, field: String?, closesConnection: Bool = false) {
            self.status = status
            self.message = message
            self.field = field
            self.closesConnection = closesConnection
        }

        /// The 413 for a body over `limit` bytes, answered as soon as the `Content-Length` or the
        /// bytes received exceed it; the connection then closes (the rest is not read).
        static func bodyTooLarge(limit: Int) -> Failure {
            Failure(status: .contentTooLarge, message: "request body larger than \(limit) bytes", field: nil, closesConnection: true)
        }

        init(_ error: APIRequestError) {
            self.init(status: .init(code: error.status), message: error.message, field: error.field)
        }

        var body: APIErrorBody { APIErrorBody(error: message, field: field) }
    }

    /// A validated notification, ready to publish.
    struct Prepared: Sendable {
        var message: PublishedMessage
        /// The topic as the request named it (before user routing).
        var topic: String
        var user: String?

        /// `idempotencyKey` (the field, or a single request's `Idempotency-Key` header).
        var idempotencyKey: String?

        var answer: NotificationAnswer { NotificationAnswer(id: message.messageID, topic: topic, user: user) }
        /// The answer when a publish with the same key came first: no id, nothing published.
        var duplicateAnswer: NotificationAnswer { NotificationAnswer(id: nil, topic: topic, user: user, duplicate: true) }
    }

    /// The API key of the request; a 401 failure when keys are configured and none matches.
    func authenticate(authorization: String?) throws(Failure) -> APIKeyStore.Key? {
        guard !apiKeys.isEmpty else { return nil }
        guard let header = authorization, let secret = Self.bearerToken(header), let key = apiKeys.key(for: secret) else {
            throw Failure(status: .unauthorized, message: "missing or invalid API key: send 'Authorization: Bearer <key>'", field: "Authorization")
        }
        return key
    }

    /// The token of an `Authorization: Bearer <token>` value: the scheme in any case (RFC 9110
    /// §11.1), spaces or tabs around the token; nil for another scheme or no token.
    static func bearerToken(_ header: String) -> String? {
        func isSpace(_ byte: UInt8) -> Bool { byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
        var rest = Substring(header).utf8
        for letter in "bearer".utf8 {
            guard let byte = rest.popFirst(), byte | 0x20 == letter else { return nil }
        }
        // The scheme is a whole word: a space or tab follows it.
        guard let first = rest.first, isSpace(first) else { return nil }
        rest = rest.drop(while: isSpace)
        while let last = rest.last, isSpace(last) { rest = rest.dropLast() }
        return rest.isEmpty ? nil : String(Substring(rest))
    }

    var bodyTooLarge: Failure { Failure.bodyTooLarge(limit: maxBodyBytes) }

    /// Whether a request's `Content-Length` announces a body over `limit` bytes (one too long
    /// for an `Int` does).
    static func exceeds(contentLength value: String?, limit: Int) -> Bool {
        guard let digits = value?.trimmingCharacters(in: .whitespaces), !digits.isEmpty,
            digits.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") })
        else { return false }
        // Leading zeros are allowed (the parser reads `0001` as 1): not a length past `Int`.
        let significant = digits.drop { $0 == "0" }
        guard let length = Int(significant.isEmpty ? "0" : significant) else { return true }
        return length > limit
    }

    /// Validates a single-notification body for a topic, or for user `toUser`;
    /// `idempotencyHeaders` are the request's `Idempotency-Key` fields (one at most; the body's
    /// `idempotencyKey` may say the same, not another key).
    func prepare(body: ByteBuffer, key: APIKeyStore.Key?, toUser: String?, idempotencyHeaders: [String] = []) throws(Failure) -> Prepared {
        // The user of `/api/users/{user}/notification`, checked here for both paths (the
        // router's and ``HTTPPublishHandler``'s); a batch item's in ``NotificationRequest``.
        if let toUser, let problem = DestinationPattern.nameProblem(toUser) {
            throw Failure(status: .badRequest, message: "user \(problem)", field: "user")
        }
        var parsed: NotificationRequest
        do {
            parsed = try NotificationRequest.parse(body, pathUser: toUser, isAllowedTopic: topicCheck(toUser: toUser))
        } catch {
            throw Failure(error)
        }
        if idempotencyHeaders.count > 1 {
            throw Failure(status: .badRequest, message: "header 'Idempotency-Key' must be given once", field: "Idempotency-Key")
        }
        if let idempotencyHeader = idempotencyHeaders.first {
            if let problem = IdempotencyTokens.problem(idempotencyHeader) {
                throw Failure(status: .badRequest, message: "header 'Idempotency-Key' \(problem)", field: "Idempotency-Key")
            }
            // What a header's bytes that are not UTF-8 become once decoded (NIO's HTTP parser):
            // two different keys would become one, and the second message would be taken for a
            // retry of the first and not published.
            if idempotencyHeader.unicodeScalars.contains("\u{FFFD}") {
                throw Failure(status: .badRequest, message: "header 'Idempotency-Key' must be UTF-8 (without U+FFFD)", field: "Idempotency-Key")
            }
            // Byte for byte, as keys are compared (`é` and `e` + U+0301 are equal as Strings).
            if let field = parsed.idempotencyKey, !field.utf8.elementsEqual(idempotencyHeader.utf8) {
                throw Failure(
                    status: .badRequest, message: "header 'Idempotency-Key' and field 'idempotencyKey' name different keys", field: "Idempotency-Key")
            }
            parsed.idempotencyKey = idempotencyHeader
        }
        return try prepared(parsed, key: key, toUser: toUser)
    }

    /// Validates a batch body: a failure for the whole request, or one result per item. An
    /// `Idempotency-Key` header is refused: keys are per item (`idempotencyKey`).
    func prepareBatch(body: ByteBuffer, key: APIKeyStore.Key?, idempotencyHeaders: [String] = []) throws(Failure) -> [Result<Prepared, Failure>] {
        if !idempotencyHeaders.isEmpty {
            throw Failure(
                status: .badRequest, message: "header 'Idempotency-Key' is not for a batch: give each notification its 'idempotencyKey'",
                field: "Idempotency-Key")
        }
        let items: [Result<NotificationRequest, APIRequestError>]
        do {
            items = try NotificationRequest.parseBatch(body, maxItems: maxBatchItems) { topic, user in topicCheck(toUser: user)(topic) }
        } catch {
            throw Failure(error)
        }
        return items.map { item in
            Result { () throws(Failure) -> Prepared in
                switch item {
                case .success(let parsed): try prepared(parsed, key: key, toUser: parsed.user)
                case .failure(let error): throw Failure(error)
                }
            }
        }
    }

    private func topicCheck(toUser: String?) -> (String) -> String? {
        let config = services.configuration
        return { topic in
            let prefixes = toUser != nil ? config.userDestinationPrefixes : config.brokerPrefixes
            if prefixes.contains(topic) { return "must name a destination after \(topic)" }
            if toUser != nil {
                guard let userPrefix = config.userPrefix, config.isUserTopic(topic) else {
                    return "must start with \(config.userDestinationPrefixes.joined(separator: " or ")) for a user destination"
                }
                // Its subscribers name it with the prefix (`/user` + `/queue/…`), within the limit.
                let limit = DestinationPattern.maxNameBytes - userPrefix.dropLast().utf8.count
                return topic.utf8.count > limit ? "must be at most \(limit) bytes for a user destination (its subscribers add \(userPrefix.dropLast()))" : nil
            }
            // A user destination under a catch-all broker prefix (`/`) is not a topic: as a
            // STOMP SEND there is refused, it would reach no user-queue subscriber.
            if config.isUserDestination(topic) {
                return "is a user destination: publish to a user with POST /api/users/{user}/notification"
            }
            return config.isBrokerDestination(topic) ? nil : "must start with \(config.brokerPrefixes.joined(separator: " or "))"
        }
    }

    private func prepared(_ parsed: NotificationRequest, key: APIKeyStore.Key?, toUser: String?) throws(Failure) -> Prepared {
        // Equal means byte-equal only in NFC (``DestinationPattern/isNormalized(_:)``).
        guard DestinationPattern.isNormalized(parsed.topic) else {
            throw Failure(status: .badRequest, message: "field 'topic' must be in Unicode normalization form C (NFC)", field: "topic")
        }
        if let toUser, !DestinationPattern.isNormalized(toUser) {
            throw Failure(status: .badRequest, message: "user must be in Unicode normalization form C (NFC)", field: "user")
        }
        if let key, !APIKeyStore.allows(key, parsed.topic) {
            throw Failure(status: .forbidden, message: "API key '\(key.name)' may not publish to \(parsed.topic)", field: "topic")
        }
        let destination = toUser.map { UserDestinations.routing(user: $0, destination: parsed.topic) } ?? parsed.topic
        let message = PublishedMessage(destination: destination, messageID: services.messageIDs.next(), headers: parsed.headers, body: parsed.body)
        return Prepared(message: message, topic: parsed.topic, user: toUser, idempotencyKey: parsed.idempotencyKey)
    }

    /// Publishes `prepared`; the future fails with a 503 failure saying why (not published), or
    /// a 504 when Redis took the command but the reply was lost (the outcome is unknown).
    ///
    /// While the instance's fan-out backlog is over its limit the publish waits for admission
    /// (``FanoutHub/admission(on:)``: the publishes of one loop, so of one connection, keep their
    /// order), and is refused with a 503 when it does not drain in time.
    func publish(_ prepared: Prepared, on loop: any EventLoop) -> EventLoopFuture<NotificationAnswer> {
        let cost = PublishBytesBudget.cost(of: prepared.message)
        guard publishBytes.reserve(cost) else { return loop.makeFailedFuture(publishBytesRefusal) }
        return publish(prepared, reserved: cost, on: loop)
    }

    /// The answer to a publish past `http.max-publish-bytes`.
    private var publishBytesRefusal: Failure {
        Failure(
            status: .serviceUnavailable,
            message: "gateway overloaded: its API publishes in flight hold http.max-publish-bytes (\(publishBytes.limit)); nothing was published, retry later",
            field: nil)
    }

    /// Publishes `prepared`, whose `reserved` bytes were counted in ``publishBytes`` already.
    private func publish(_ prepared: Prepared, reserved cost: Int, on loop: any EventLoop) -> EventLoopFuture<NotificationAnswer> {
        let engine = services.engine
        let budget = publishBytes
        let published: EventLoopFuture<NotificationAnswer>
        if let admission = services.hub.admission(on: loop) {
            published = admission.flatMap { Self.publish(prepared, engine: engine, on: loop) }
        } else {
            published = Self.publish(prepared, engine: engine, on: loop)
        }
        published.whenComplete { _ in budget.release(cost) }
        return published.flatMapErrorThrowing { error in
            if error is FanoutOverloaded {
                throw Failure(status: .serviceUnavailable, message: "\(error)", field: nil)
            }
            if let error = error as? IdempotencyUnavailable {
                throw Failure(status: .badRequest, message: "\(error)", field: "idempotencyKey")
            }
            if let error = error as? RouteError, error.code == .outcomeUnknown {
                throw Failure(status: .gatewayTimeout, message: "publish outcome unknown: \(error)", field: nil)
            }
            throw Failure(status: .serviceUnavailable, message: "publish failed: \(error)", field: nil)
        }
    }

    private static func publish(_ prepared: Prepared, engine: any BrokerEngine, on loop: any EventLoop) -> EventLoopFuture<NotificationAnswer> {
        guard let key = prepared.idempotencyKey else { return engine.publish(prepared.message, on: loop).map { prepared.answer } }
        return engine.publish(prepared.message, idempotencyKey: IdempotencyTokens.api(key), on: loop)
            .map { $0 ? prepared.answer : prepared.duplicateAnswer }
    }

    /// Publishes every valid item of a batch, in order. The batch's bytes are counted against
    /// `http.max-publish-bytes` at once: all its valid items are taken, or all refused (one item
    /// refused between two published ones put the topic out of order once retried).
    func publishBatch(_ items: [Result<Prepared, Failure>], on loop: any EventLoop) -> EventLoopFuture<BatchAnswer> {
        let costs = items.map { item in (try? item.get()).map { PublishBytesBudget.cost(of: $0.message) } ?? 0 }
        let total = costs.reduce(0, +)
        let admitted = total == 0 || publishBytes.reserve(total)
        let futures: [EventLoopFuture<Result<NotificationAnswer, Failure>>] = zip(items, costs).map { item, cost in
            switch item {
            case .success where !admitted:
                loop.makeSucceededFuture(.failure(publishBytesRefusal))
            case .success(let prepared):
                publish(prepared, reserved: cost, on: loop).map { .success($0) }.recover { error in
                    .failure(error as? Failure ?? Failure(status: .serviceUnavailable, message: "publish failed: \(error)", field: nil))
                }
            case .failure(let failure):
                loop.makeSucceededFuture(.failure(failure))
            }
        }
        return EventLoopFuture.whenAllSucceed(futures, on: loop).map { results in
            BatchAnswer(
                results: results.map { result in
                    switch result {
                    case .success(let answer): .published(answer)
                    case .failure(let failure): .failed(APIErrorBody(error: failure.message, field: failure.field, status: failure.status.code))
                    }
                })
        }
    }

    /// A batch's status: 200 when every item was published, 207 (Multi-Status) otherwise.
    static func status(of answer: BatchAnswer) -> HTTPResponse.Status {
        answer.failed == 0 ? .ok : .init(code: 207, reasonPhrase: "Multi-Status")
    }
}
