/// The extra headers a publisher may give a message (the HTTP API's `headers`, a broadcast
/// channel's JSON): what every entry point refuses alike, so that no STOMP frame carries them
/// other than as sent and every instance can read the message back from Redis.
public enum PublishHeaders {
    /// Most extra headers on one message.
    public static let maxCount = 64

    /// Why `headers` cannot be carried, or nil: more than ``maxCount`` entries, an empty name
    /// (its header line would start with `:`, which decoders refuse), a name holding `:` or a
    /// control character, a value holding a NUL (a STOMP header cannot carry one; it would end
    /// the frame). Other control characters of a value are carried: STOMP 1.1+ escapes CR and
    /// LF (1.0 subscribers get spaces), a tab is a tab. Worded to follow "must".
    public static func problem(_ headers: [String: String]) -> String? {
        guard headers.count <= maxCount else { return "must hold at most \(maxCount) headers, not \(headers.count)" }
        for (name, value) in headers.sorted(by: { $0.key < $1.key }) {
            if name.isEmpty { return "must not hold an empty header name" }
            if name.utf8.contains(UInt8(ascii: ":")) { return "must not hold a header name containing ':'" }
            if DestinationPattern.holdsControlCharacters(name) { return "must not hold a header name containing control characters" }
            if value.utf8.contains(0) { return "must not hold a header value containing a NUL (header '\(name)')" }
        }
        return nil
    }
}
