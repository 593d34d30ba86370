import NIOCore
import NIOWebSocket
import STOMPCodec
import Synchronization

/// A message on its way to subscribers, with its `MESSAGE` frame pre-encoded once.
///
/// Fan-out copies the shared prefix into each subscriber's frame and inserts only the
/// per-subscription headers, so a message is encoded once however many sessions get it.
public final class PublishedMessage: Sendable {
    public let destination: String
    public let messageID: String
    /// User headers (content-type included), without the reserved ones.
    public let headers: STOMPHeaders
    public let body: ByteBuffer
    /// The message's place in its destination's history (sent as `x-position`), when kept.
    public let position: StreamPosition?
    /// Whether the body is valid UTF-8 (sent as a WebSocket text frame) or not (binary).
    public let bodyIsUTF8: Bool
    /// `MESSAGE\n` + destination, message-id, user headers and content-length, escaped (1.1+).
    /// STOMP 1.0 sessions, which are rare, get theirs (not escaped) encoded per frame.
    let escapedPrefix: ByteBuffer
    /// The same for STOMP 1.1 sessions, which have no `\r` escape (shared with 1.2 unless a
    /// header holds a carriage return).
    let v11Prefix: ByteBuffer

    /// Headers a publisher may not set: the server owns them (the `x-presence-*` ones mark
    /// join/leave notices, which nobody may forge).
    public static let reservedHeaders: Set<String> = [
        "destination", "message-id", "subscription", "ack", "content-length", "receipt", "transaction", "receipt-id",
        "x-position", "x-recovered", PresenceNotice.eventHeader, PresenceNotice.userHeader, PresenceNotice.sessionHeader,
    ]

    /// - Parameter serverHeaders: headers the server sets itself (kept even if reserved), after
    ///   the user headers.
    public init(
        destination: String, messageID: String, headers: STOMPHeaders, body: ByteBuffer, position: StreamPosition? = nil,
        serverHeaders: STOMPHeaders = STOMPHeaders()
    ) {
        self.destination = destination
        self.messageID = messageID
        var clean = STOMPHeaders()
        for (name, value) in headers where !Self.reservedHeaders.contains(name) && clean[name] == nil {
            clean.add(name, value)
        }
        for (name, value) in serverHeaders { clean.add(name, value) }
        self.headers = clean
        self.body = body
        self.position = position
        if let position { clean.add("x-position", position.description) }
        self.bodyIsUTF8 =
            body.readableBytesView.withContiguousStorageIfAvailable { String(validating: $0, as: UTF8.self) != nil }
            ?? (String(validating: Array(body.readableBytesView), as: UTF8.self) != nil)
        let shown = Self.shownDestination(destination)
        self.escapedPrefix = Self.encodePrefix(shown, messageID, clean, body.readableBytes, escape: true)
        let hasCR = shown.utf8.contains(13) || clean.contains { $0.name.utf8.contains(13) || $0.value.utf8.contains(13) }
        self.v11Prefix = hasCR ? Self.encodePrefix(shown, messageID, clean, body.readableBytes, escape: true, escapeCR: false) : escapedPrefix
    }

    /// This message numbered in its destination's history: its encoded prefixes with
    /// `x-position` spliced in before `content-length` (where the initializer puts it), so the
    /// headers are not escaped again nor the body validated again.
    public func positioned(_ position: StreamPosition) -> PublishedMessage {
        guard self.position == nil else {
            return PublishedMessage(destination: destination, messageID: messageID, headers: headers, body: body, position: position)
        }
        return PublishedMessage(numbering: self, at: position)
    }

    private init(numbering message: PublishedMessage, at position: StreamPosition) {
        destination = message.destination
        messageID = message.messageID
        headers = message.headers
        body = message.body
        self.position = position
        bodyIsUTF8 = message.bodyIsUTF8
        let value = position.description
        let tailLength = "content-length:\n".utf8.count + String(message.body.readableBytes).utf8.count
        func splice(_ prefix: ByteBuffer, escape: Bool, escapeCR: Bool) -> ByteBuffer {
            var b = ByteBuffer()
            b.reserveCapacity(prefix.readableBytes + value.utf8.count + 16)
            var rest = prefix
            b.writeImmutableBuffer(rest.readSlice(length: prefix.readableBytes - tailLength)!)
            STOMPFrameEncoder.writeHeader("x-position", value, escape: escape, escapeCarriageReturn: escapeCR, into: &b)
            b.writeImmutableBuffer(rest)
            return b
        }
        escapedPrefix = splice(message.escapedPrefix, escape: true, escapeCR: true)
        v11Prefix = message.v11Prefix == message.escapedPrefix ? escapedPrefix : splice(message.v11Prefix, escape: true, escapeCR: false)
    }

    private static func encodePrefix(_ destination: String, _ id: String, _ headers: STOMPHeaders, _ length: Int, escape: Bool, escapeCR: Bool = true) -> ByteBuffer {
        var b = ByteBuffer()
        b.reserveCapacity(96 + destination.utf8.count + id.utf8.count)
        writePrefix(destination, id, headers, length, escape: escape, escapeCR: escapeCR, into: &b)
        return b
    }

    private static func writePrefix(
        _ destination: String, _ id: String, _ headers: STOMPHeaders, _ length: Int, escape: Bool, escapeCR: Bool, into b: inout ByteBuffer
    ) {
        b.writeStaticString("MESSAGE\n")
        STOMPFrameEncoder.writeHeader("destination", destination, escape: escape, escapeCarriageReturn: escapeCR, into: &b)
        STOMPFrameEncoder.writeHeader("message-id", id, escape: escape, escapeCarriageReturn: escapeCR, into: &b)
        STOMPFrameEncoder.writeHeaders(headers, escape: escape, escapeCarriageReturn: escapeCR, into: &b)
        b.writeStaticString("content-length:")
        b.writeString(String(length))
        b.writeInteger(UInt8(ascii: "\n"))
    }

    /// The destination as the client reads it. A user destination routes as
    /// /user/<U>/queue/x but reads /user/queue/x; a presence notice routes as
    /// /~presence/topic/x and reads /topic/x.
    private static func shownDestination(_ destination: String) -> String {
        UserDestinations.clientDestination(forRouting: destination) ?? PresenceNotice.destination(forRouting: destination) ?? destination
    }

    /// The unescaped prefix of a STOMP 1.0 session, with `x-position` where the initializer
    /// puts it.
    private func writePlainPrefix(into out: inout ByteBuffer) {
        var all = headers
        if let position { all.add("x-position", position.description) }
        Self.writePrefix(Self.shownDestination(destination), messageID, all, body.readableBytes, escape: false, escapeCR: true, into: &out)
    }

    /// Encodes the complete `MESSAGE` frame for one subscription.
    ///
    /// - Parameter ack: the `ack` header value, present for client ack modes.
    /// - Parameter escapeCarriageReturn: false for STOMP 1.1 sessions (see ``v11Prefix``).
    @inlinable
    public func encodeFrame(subscription: String, ack: String?, escape: Bool, escapeCarriageReturn: Bool = true, allocator: ByteBufferAllocator) -> ByteBuffer {
        var out = allocator.buffer(capacity: frameCapacity(subscription: subscription, ack: ack))
        writeFrame(subscription: subscription, ack: ack, escape: escape, escapeCR: escapeCarriageReturn, into: &out)
        return out
    }

    /// The same frame as ``encodeFrame(subscription:ack:escape:escapeCarriageReturn:allocator:)``
    /// inside a complete WebSocket frame (text when the body is UTF-8, binary otherwise), ready
    /// to be written to a connection.
    @inlinable
    public func encodeWebSocketFrame(
        subscription: String, ack: String?, escape: Bool, escapeCarriageReturn: Bool = true,
        allocator: ByteBufferAllocator
    ) -> ByteBuffer {
        WebSocketServerFrame.build(
            opcode: bodyIsUTF8 ? .text : .binary, payloadCapacity: frameCapacity(subscription: subscription, ack: ack),
            allocator: allocator
        ) { out in
            writeFrame(subscription: subscription, ack: ack, escape: escape, escapeCR: escapeCarriageReturn, into: &out)
        }
    }

    @usableFromInline
    func frameCapacity(subscription: String, ack: String?) -> Int {
        escapedPrefix.readableBytes + subscription.utf8.count + 16 + (ack.map { $0.utf8.count + 5 } ?? 0) + body.readableBytes
    }

    @usableFromInline
    func writeFrame(subscription: String, ack: String?, escape: Bool, escapeCR: Bool, into out: inout ByteBuffer) {
        if escape {
            out.writeImmutableBuffer(escapeCR ? escapedPrefix : v11Prefix)
        } else {
            writePlainPrefix(into: &out)
        }
        STOMPFrameEncoder.writeHeader("subscription", subscription, escape: escape, escapeCarriageReturn: escapeCR, into: &out)
        if let ack { STOMPFrameEncoder.writeHeader("ack", ack, escape: escape, escapeCarriageReturn: escapeCR, into: &out) }
        out.writeInteger(UInt8(ascii: "\n"))
        out.writeImmutableBuffer(body)
        out.writeInteger(UInt8(0))
    }
}

/// Makes message ids unique across instances: `<instance>-<counter>`.
public final class MessageIDGenerator: Sendable {
    public let prefix: String
    private let counter = Atomic<UInt64>(0)

    public init(instanceID: String) { self.prefix = instanceID + "-" }

    public func next() -> String {
        let n = counter.add(1, ordering: .relaxed).newValue
        return prefix + String(n)
    }
}
