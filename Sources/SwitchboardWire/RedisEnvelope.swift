import NIOCore
import STOMPCodec

/// How a message travels through Redis between gateway instances (and from backends that
/// want headers): byte 0x01, then a STOMP `MESSAGE` frame (escaped headers, `content-length`).
///
/// Headers: `destination`, `message-id`, `origin` (the publishing instance), `session` (the
/// session a message is addressed to; empty for everyone), then the user headers. A message
/// recorded in history gets `x-position` inserted first by the history function
/// (``HistoryFunctions``). The first
/// occurrence of each of these names is the envelope's own: a user header with the same name
/// comes later and stays a user header (so `session` is always written, empty when unused).
/// A payload without the 0x01 marker is a raw body (`content-type: text/plain`).
public enum RedisEnvelope {
    public static let marker: UInt8 = 0x01
    /// The envelope's own headers (their first occurrence).
    static let ownHeaders: Set<String> = ["destination", "message-id", "origin", "session", "x-position"]

    public struct Decoded: Sendable {
        public var destination: String?
        public var messageID: String?
        public var origin: String?
        public var session: String?
        /// Where the message is in its destination's history (written by the history function).
        public var position: StreamPosition?
        public var headers: STOMPHeaders
        public var body: ByteBuffer
    }

    public static func encode(_ message: PublishedMessage, origin: String, session: String? = nil) -> ByteBuffer {
        var headers: STOMPHeaders = ["destination": message.destination, "message-id": message.messageID, "origin": origin]
        headers.add("session", session ?? "")
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
        // What any entry point may publish: header values as long as a body (the HTTP API's
        // up to http.max-body-bytes; the default 64 KiB header block made every instance drop
        // such a message, recorded in history all the same).
        var decoder = STOMPFrameDecoder(
            limits: STOMPDecoderLimits(maxFrameBytes: Int.max / 2, maxHeaders: 1024, maxHeaderLineBytes: Int.max / 2, maxHeaderBytes: Int.max / 2))
        guard let frame = try? decoder.decodeFrame(&buffer), frame.command == .message else { return nil }
        var user = STOMPHeaders()
        var own: [String: String] = [:]
        for (n, v) in frame.headers {
            if Self.ownHeaders.contains(n), own[n] == nil {
                own[n] = v
            } else if n != "content-length" {
                user.add(n, v)
            }
        }
        let session = own["session"].flatMap { $0.isEmpty ? nil : $0 }
        return Decoded(
            destination: own["destination"], messageID: own["message-id"], origin: own["origin"], session: session,
            position: own["x-position"].flatMap(StreamPosition.init(parsing:)), headers: user, body: frame.body)
    }
}
