import NIOCore
import Redis
import STOMPCodec
import SwitchboardWire

/// One message a browser sent to an `/app` destination, as read from the gateway's outbound stream.
///
/// The gateway writes each entry with the fields `destination`, `message` (the body),
/// `content-type`, `session`, `user` (when the session is authenticated), `instance`,
/// `timestamp` (ms since 1970), then the SEND frame's own headers, which end up in ``headers``.
public struct IncomingMessage: Sendable {
    /// The stream entry ID, e.g. `1700000000000-0`. Unique per stream; use it as a request ID.
    public var id: String
    /// The stream the entry was read from.
    public var stream: String
    /// The SEND destination, e.g. `/app/greet` (empty if the entry has no `destination` field).
    public var destination: String
    /// The message body, byte for byte.
    public var body: ByteBuffer
    /// The `content-type` of the SEND (the gateway writes `text/plain` when the client sent none).
    public var contentType: String?
    /// The sending session's ID on its gateway instance (used by ``StreamConsumer/reply(to:destination:body:headers:contentType:)``).
    public var session: String?
    /// The authenticated user of the sending session, if any.
    public var user: String?
    /// The ID of the gateway instance holding the sending session.
    public var instance: String?
    /// When the gateway received the SEND, in milliseconds since 1970.
    public var timestamp: Int64?
    /// The SEND frame's user headers (e.g. `x-msg-id`), in the order they were written.
    public var headers: STOMPHeaders
    /// How many times the entry has been delivered to a consumer of the group, this delivery
    /// included (1 for a first delivery). `nil` when unknown.
    public var deliveryCount: Int?
    /// Every field of the stream entry, as stored (used for dead-lettering).
    public var fields: [(name: String, value: ByteBuffer)]

    /// The body decoded as UTF-8 (invalid sequences are replaced).
    public var bodyString: String { String(decoding: self.body.readableBytesView, as: UTF8.self) }

    /// The fields the gateway itself writes; all others are user headers.
    public static let gatewayFields: Set<String> = ["destination", "message", "content-type", "session", "user", "instance", "timestamp"]

    /// Decodes a stream entry written by the gateway. Missing fields become `nil` (or empty).
    public init(entry: RedisStreamEntry, stream: String, deliveryCount: Int? = nil) {
        self.id = entry.id
        self.stream = stream
        self.fields = entry.fields
        self.deliveryCount = deliveryCount
        var destination = ""
        var body = ByteBuffer()
        var headers = STOMPHeaders()
        for (name, value) in entry.fields {
            switch name {
            case "destination": destination = String(buffer: value)
            case "message": body = value
            case "content-type": self.contentType = String(buffer: value)
            case "session": self.session = String(buffer: value)
            case "user": self.user = String(buffer: value)
            case "instance": self.instance = String(buffer: value)
            case "timestamp": self.timestamp = Int64(String(buffer: value))
            default: headers.add(name, String(buffer: value))
            }
        }
        self.destination = destination
        self.body = body
        self.headers = headers
    }

    /// A message built by hand (tests, local tools).
    public init(
        id: String,
        stream: String,
        destination: String,
        body: ByteBuffer,
        contentType: String? = "text/plain",
        session: String? = nil,
        user: String? = nil,
        instance: String? = nil,
        timestamp: Int64? = nil,
        headers: STOMPHeaders = [:],
        deliveryCount: Int? = nil
    ) {
        self.id = id
        self.stream = stream
        self.destination = destination
        self.body = body
        self.contentType = contentType
        self.session = session
        self.user = user
        self.instance = instance
        self.timestamp = timestamp
        self.headers = headers
        self.deliveryCount = deliveryCount
        var fields: [(name: String, value: ByteBuffer)] = [("destination", ByteBuffer(string: destination)), ("message", body)]
        if let contentType { fields.append(("content-type", ByteBuffer(string: contentType))) }
        if let session { fields.append(("session", ByteBuffer(string: session))) }
        if let user { fields.append(("user", ByteBuffer(string: user))) }
        if let instance { fields.append(("instance", ByteBuffer(string: instance))) }
        if let timestamp { fields.append(("timestamp", ByteBuffer(string: String(timestamp)))) }
        for (name, value) in headers { fields.append((name, ByteBuffer(string: value))) }
        self.fields = fields
    }
}
