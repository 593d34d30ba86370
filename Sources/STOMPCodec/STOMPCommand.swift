import NIOCore

/// A STOMP frame command, client or server side (STOMP 1.0–1.2).
public enum STOMPCommand: String, Sendable, Hashable, CaseIterable {
    // Client frames
    case connect = "CONNECT"
    case stomp = "STOMP"
    case send = "SEND"
    case subscribe = "SUBSCRIBE"
    case unsubscribe = "UNSUBSCRIBE"
    case ack = "ACK"
    case nack = "NACK"
    case begin = "BEGIN"
    case commit = "COMMIT"
    case abort = "ABORT"
    case disconnect = "DISCONNECT"
    // Server frames
    case connected = "CONNECTED"
    case message = "MESSAGE"
    case receipt = "RECEIPT"
    case error = "ERROR"

    /// A dense index (0 ..< allCases.count), for per-command counters.
    @inlinable
    public var ordinal: Int {
        switch self {
        case .connect: return 0
        case .stomp: return 1
        case .send: return 2
        case .subscribe: return 3
        case .unsubscribe: return 4
        case .ack: return 5
        case .nack: return 6
        case .begin: return 7
        case .commit: return 8
        case .abort: return 9
        case .disconnect: return 10
        case .connected: return 11
        case .message: return 12
        case .receipt: return 13
        case .error: return 14
        }
    }

    /// Whether header values of this frame are escaped (STOMP 1.1+).
    ///
    /// The specification exempts `CONNECT` and `CONNECTED`; `STOMP` is the 1.1+ spelling of
    /// `CONNECT` and is treated the same way.
    @inlinable
    public var usesHeaderEscaping: Bool {
        switch self {
        case .connect, .stomp, .connected: return false
        default: return true
        }
    }

    /// Parses a command from its raw bytes without allocating a `String`.
    @inlinable
    public init?(bytes: UnsafeRawBufferPointer) {
        // Commands are short ASCII words; match on length first, then compare.
        switch bytes.count {
        case 3:
            if Self.equals(bytes, "ACK") { self = .ack; return }
        case 4:
            if Self.equals(bytes, "SEND") { self = .send; return }
            if Self.equals(bytes, "NACK") { self = .nack; return }
        case 5:
            if Self.equals(bytes, "STOMP") { self = .stomp; return }
            if Self.equals(bytes, "BEGIN") { self = .begin; return }
            if Self.equals(bytes, "ABORT") { self = .abort; return }
            if Self.equals(bytes, "ERROR") { self = .error; return }
        case 6:
            if Self.equals(bytes, "COMMIT") { self = .commit; return }
        case 7:
            if Self.equals(bytes, "CONNECT") { self = .connect; return }
            if Self.equals(bytes, "MESSAGE") { self = .message; return }
            if Self.equals(bytes, "RECEIPT") { self = .receipt; return }
        case 9:
            if Self.equals(bytes, "SUBSCRIBE") { self = .subscribe; return }
            if Self.equals(bytes, "CONNECTED") { self = .connected; return }
        case 10:
            if Self.equals(bytes, "DISCONNECT") { self = .disconnect; return }
        case 11:
            if Self.equals(bytes, "UNSUBSCRIBE") { self = .unsubscribe; return }
        default:
            break
        }
        return nil
    }

    @inlinable
    static func equals(_ bytes: UnsafeRawBufferPointer, _ word: StaticString) -> Bool {
        guard bytes.count == word.utf8CodeUnitCount else { return false }
        let w = UnsafeRawBufferPointer(start: word.utf8Start, count: word.utf8CodeUnitCount)
        return bytes.elementsEqual(w)
    }
}
