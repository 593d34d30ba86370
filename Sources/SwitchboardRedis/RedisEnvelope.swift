import NIOCore
import STOMPCodec
import SwitchboardCore

/// How a message travels through Redis between gateway instances (and from backends that
/// want headers): byte 0x01, then a STOMP `MESSAGE` frame (escaped headers, `content-length`).
///
/// Headers: `destination`, `message-id`, `origin` (the publishing instance), optionally
/// `session` (for messages addressed to one session), then the user headers.
/// A payload without the 0x01 marker is a raw body (`content-type: text/plain`).
public enum RedisEnvelope {
    public static let marker: UInt8 = 0x01

    public struct Decoded: Sendable {
        public var destination: String?
        public var messageID: String?
        public var origin: String?
        public var session: String?
        public var headers: STOMPHeaders
        public var body: ByteBuffer
    }

    public static func encode(_ message: PublishedMessage, origin: String, session: String? = nil) -> ByteBuffer {
        var headers: STOMPHeaders = ["destination": message.destination, "message-id": message.messageID, "origin": origin]
        if let session { headers.add("session", session) }
        for (n, v) in message.headers { headers.add(n, v) }
        headers.add("content-length", String(message.body.readableBytes))
        var out = ByteBuffer()
        out.reserveCapacity(64 + message.body.readableBytes)
        out.writeInteger(marker)
        STOMPFrameEncoder.encode(STOMPFrame(.message, headers: headers, body: message.body), escapeHeaders: true, into: &out)
        return out
    }

    /// Decodes a payload; nil if it is marked as an envelope but malformed.
    public static func decode(_ payload: ByteBuffer) -> Decoded? {
        guard payload.getInteger(at: payload.readerIndex, as: UInt8.self) == marker else {
            return Decoded(headers: ["content-type": "text/plain"], body: payload)
        }
        var buffer = payload
        buffer.moveReaderIndex(forwardBy: 1)
        var decoder = STOMPFrameDecoder(limits: STOMPDecoderLimits(maxFrameBytes: Int.max / 2, maxHeaders: 1024, maxHeaderLineBytes: 1 << 20))
        guard let frame = try? decoder.decodeFrame(&buffer), frame.command == .message else { return nil }
        var user = STOMPHeaders()
        for (n, v) in frame.headers where !["destination", "message-id", "origin", "session", "content-length"].contains(n) {
            user.add(n, v)
        }
        return Decoded(
            destination: frame.headers["destination"], messageID: frame.headers["message-id"],
            origin: frame.headers["origin"], session: frame.headers["session"], headers: user, body: frame.body)
    }
}
