import NIOCore
import STOMPCodec

/// A message a browser sent to an application destination (`/app/...`).
public struct AppMessage: Sendable {
    public var destination: String
    public var body: ByteBuffer
    /// The SEND frame's user headers (reserved STOMP headers removed).
    public var headers: STOMPHeaders
    public var contentType: String?
    public var sessionID: String
    public var user: String?
    public var instanceID: String
    /// Milliseconds since 1970 when the gateway received the frame.
    public var timestamp: Int64

    public init(destination: String, body: ByteBuffer, headers: STOMPHeaders, contentType: String?, sessionID: String, user: String?, instanceID: String, timestamp: Int64) {
        self.destination = destination
        self.body = body
        self.headers = headers
        self.contentType = contentType
        self.sessionID = sessionID
        self.user = user
        self.instanceID = instanceID
        self.timestamp = timestamp
    }
}
