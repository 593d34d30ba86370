/// A STOMP protocol version.
public enum STOMPVersion: String, Sendable, Hashable, Comparable, CaseIterable {
    case v1_0 = "1.0"
    case v1_1 = "1.1"
    case v1_2 = "1.2"

    /// The WebSocket subprotocol name for this version (`v12.stomp` …).
    public var webSocketSubprotocol: String {
        switch self {
        case .v1_0: return "v10.stomp"
        case .v1_1: return "v11.stomp"
        case .v1_2: return "v12.stomp"
        }
    }

    /// 0, 1, 2 for 1.0, 1.1, 1.2.
    public var ordinal: Int {
        switch self {
        case .v1_0: return 0
        case .v1_1: return 1
        case .v1_2: return 2
        }
    }

    /// Whether header values are escaped in this version (1.1 and later).
    public var escapesHeaders: Bool { self != .v1_0 }

    public static func < (lhs: STOMPVersion, rhs: STOMPVersion) -> Bool {
        lhs.rawValue < rhs.rawValue
    }

    /// Picks the highest version both sides support.
    ///
    /// - Parameters:
    ///   - acceptVersion: the client's `accept-version` header; `nil` (absent) means 1.0,
    ///     as the specification states.
    ///   - supported: the versions the server enables.
    /// - Returns: the negotiated version, or nil when there is none in common.
    public static func negotiate(acceptVersion: String?, supported: Set<STOMPVersion> = Set(allCases)) -> STOMPVersion? {
        guard let acceptVersion else {
            return supported.contains(.v1_0) ? .v1_0 : nil
        }
        var best: STOMPVersion?
        var rest = Substring(acceptVersion)
        while !rest.isEmpty {
            let comma = rest.firstIndex(of: ",") ?? rest.endIndex
            // Spaces around a version (`1.0, 1.1, 1.2`) are not part of it: it was 1.0 alone.
            var token = rest[rest.startIndex..<comma]
            while token.first == " " || token.first == "\t" { token = token.dropFirst() }
            while token.last == " " || token.last == "\t" { token = token.dropLast() }
            if let v = STOMPVersion(rawValue: String(token)), supported.contains(v), best.map({ v > $0 }) ?? true {
                best = v
            }
            rest = comma == rest.endIndex ? "" : rest[rest.index(after: comma)...]
        }
        return best
    }

    /// Picks the highest STOMP subprotocol from a `Sec-WebSocket-Protocol` offer.
    ///
    /// - Returns: the chosen subprotocol token, or nil if the client offered none we know.
    public static func negotiateSubprotocol(offered: [String], supported: Set<STOMPVersion> = Set(allCases)) -> STOMPVersion? {
        var best: STOMPVersion?
        for token in offered {
            for v in supported where v.webSocketSubprotocol == token {
                if best.map({ v > $0 }) ?? true { best = v }
            }
        }
        return best
    }
}

/// STOMP heart-beat settings and the specification's negotiation arithmetic.
public struct STOMPHeartBeat: Sendable, Hashable {
    /// Smallest interval, in milliseconds, at which the sender can send heart-beats (0: cannot).
    public var send: Int
    /// Desired interval, in milliseconds, at which the sender wants to receive them (0: does not).
    public var receive: Int

    public init(send: Int, receive: Int) {
        self.send = send
        self.receive = receive
    }

    public static let none = STOMPHeartBeat(send: 0, receive: 0)

    /// Parses a `heart-beat` header (`cx,cy`). Returns nil on malformed input.
    public init?(header: String) {
        guard let comma = header.firstIndex(of: ",") else { return nil }
        let a = header[header.startIndex..<comma]
        let b = header[header.index(after: comma)...]
        guard let x = Int(a), let y = Int(b), x >= 0, y >= 0 else { return nil }
        self.init(send: x, receive: y)
    }

    /// The header value, `send,receive`.
    public var headerValue: String { "\(send),\(receive)" }

    /// Negotiates intervals between a client offer and the server's settings.
    ///
    /// Per the specification: the server sends every `max(sx, cy)` ms unless either is 0,
    /// and expects to hear from the client every `max(cx, sy)` ms unless either is 0. Each is at
    /// most ``maximumInterval``: a longer interval asked for (up to `Int.max`) means the same.
    /// - Returns: `(serverSends, serverExpects)` in milliseconds, 0 meaning none.
    public static func negotiate(client: STOMPHeartBeat, server: STOMPHeartBeat) -> (serverSends: Int, serverExpects: Int) {
        let out = (server.send == 0 || client.receive == 0) ? 0 : max(server.send, client.receive)
        let inc = (client.send == 0 || server.receive == 0) ? 0 : max(client.send, server.receive)
        return (min(out, Self.maximumInterval), min(inc, Self.maximumInterval))
    }

    /// The longest heart-beat interval in force, in ms: 2,147,483,647 (about 24.8 days).
    public static let maximumInterval = Int(Int32.max)
}
