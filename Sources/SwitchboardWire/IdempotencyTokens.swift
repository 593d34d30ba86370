/// The tokens idempotency keys are kept under, per destination, for 10 minutes (in Redis mode
/// the history function's `once` keys, beside the tokens of inbound routes):
/// - `\0api\0<key>`: the HTTP API's `Idempotency-Key` / `idempotencyKey` and SwitchboardKit's
///   publishes (backends share one key space);
/// - `\0stomp\0<user>\0<key>`: a STOMP `SEND`'s `idempotency-key`, the user's own, so a client
///   cannot take a backend's or another user's key first.
/// The leading NUL keeps them apart from inbound routes' tokens (`<stream>:<entry-id>`, a hex
/// digest), and a key is 1…256 bytes without control characters (``problem(_:)``).
public enum IdempotencyTokens {
    /// Most bytes of a key.
    public static let maxKeyBytes = 256

    /// Why `key` cannot be an idempotency key (1…256 bytes, no control characters), or nil.
    public static func problem(_ key: String) -> String? {
        if key.isEmpty || key.utf8.count > maxKeyBytes {
            return "must be 1 to \(maxKeyBytes) bytes"
        }
        return DestinationPattern.holdsControlCharacters(key) ? "must not contain control characters" : nil
    }

    /// The token of a backend's key (HTTP API, SwitchboardKit).
    public static func api(_ key: String) -> String { "\u{0}api\u{0}" + key }

    /// The token of a STOMP user's key (an anonymous session's user is empty).
    public static func stomp(user: String?, key: String) -> String { "\u{0}stomp\u{0}" + (user ?? "") + "\u{0}" + key }
}
