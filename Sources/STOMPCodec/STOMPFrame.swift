import NIOCore

/// One STOMP frame: a command, ordered headers and a byte body.
public struct STOMPFrame: Sendable, Hashable {
    public var command: STOMPCommand
    public var headers: STOMPHeaders
    /// The body. For decoded frames this is a slice of the receive buffer (no copy).
    public var body: ByteBuffer

    public init(_ command: STOMPCommand, headers: STOMPHeaders = STOMPHeaders(), body: ByteBuffer = ByteBuffer()) {
        self.command = command
        self.headers = headers
        self.body = body
    }

    public init(_ command: STOMPCommand, headers: STOMPHeaders = STOMPHeaders(), body: String) {
        self.init(command, headers: headers, body: ByteBuffer(string: body))
    }

    /// The body decoded as UTF-8 (lossy), for logs and tests.
    public var bodyString: String { String(buffer: body) }
}
