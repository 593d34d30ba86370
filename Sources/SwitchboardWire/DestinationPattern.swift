/// A destination or a wildcard subscription pattern.
///
/// Destinations are split into segments at `/` and `.`. In a pattern:
/// - `*` is a whole segment that matches exactly one segment (`/topic/stock.*` matches
///   `/topic/stock.AAPL`, not `/topic/stock.US.AAPL`);
/// - `**` is a whole final segment that matches one or more remaining segments
///   (`/topic/stock.**` matches both of the above, `/topic/**` every topic).
///
/// The separators must line up: `/topic/a.*` does not match `/topic/a/b`.
///
/// The gateway's own routing forms (`/~user/…`, `/~session/…`, `/~presence/…`) are matched
/// only by patterns that start with `/~` themselves (made by the gateway, never by a client):
/// with a broker prefix `/`, a client's `/**` would otherwise read every user's queue.
public struct DestinationPattern: Sendable, Hashable, CustomStringConvertible {
    public let text: String
    /// Segments with the separator that precedes each (nil for the first).
    @usableFromInline let segments: [Segment]
    /// True when the pattern contains `*` or `**`.
    public let isWildcard: Bool

    @usableFromInline
    enum Segment: Sendable, Hashable {
        case literal(separator: UInt8?, String)
        case one(separator: UInt8?)
        case rest(separator: UInt8?)
    }

    public var description: String { text }

    public static func == (lhs: DestinationPattern, rhs: DestinationPattern) -> Bool { lhs.text == rhs.text }
    public func hash(into hasher: inout Hasher) { hasher.combine(text) }

    /// Why a pattern was rejected.
    ///
    /// A struct rather than an enum, so that new reasons can be added without breaking
    /// exhaustive `switch`es in other modules: made with the static factories, compared with
    /// `==`, told apart by ``kind`` (a `switch` over an error matches kinds directly).
    public struct Invalid: Error, Sendable, Hashable, CustomStringConvertible {
        /// What is wrong with the pattern, without the pattern.
        public struct Kind: Sendable, Hashable, CustomStringConvertible {
            fileprivate enum Value: Sendable, Hashable {
                case empty
                case misplacedWildcard
            }

            fileprivate let value: Value

            fileprivate init(_ value: Value) {
                self.value = value
            }

            /// The pattern is the empty string.
            public static var empty: Self { Self(.empty) }
            /// A `*` that is not a whole segment, or a `**` that is not the last one.
            public static var misplacedWildcard: Self { Self(.misplacedWildcard) }

            public var description: String { "\(value)" }
        }

        /// The reason with its details.
        enum Code: Sendable, Hashable {
            case empty
            case misplacedWildcard(String)
        }

        let code: Code

        init(_ code: Code) {
            self.code = code
        }

        /// The pattern is the empty string.
        public static var empty: Self { Self(.empty) }
        /// `pattern` has a `*` that is not a whole segment, or a `**` that is not the last one.
        public static func misplacedWildcard(_ pattern: String) -> Self { Self(.misplacedWildcard(pattern)) }

        /// What is wrong with the pattern, without the pattern.
        public var kind: Kind {
            switch code {
            case .empty: .empty
            case .misplacedWildcard: .misplacedWildcard
            }
        }

        /// Matches an error against a kind in a `switch` (`case .misplacedWildcard:`).
        public static func ~= (kind: Kind, error: Invalid) -> Bool {
            error.kind == kind
        }

        public var description: String {
            switch code {
            case .empty: return "empty destination"
            case .misplacedWildcard(let p): return "invalid wildcard in '\(p)': '*' and '**' must be whole segments and '**' must be last"
            }
        }
    }

    public init(_ text: String) throws(Invalid) {
        guard !text.isEmpty else { throw .empty }
        self.text = text
        var segments: [Segment] = []
        var wildcard = false
        let utf8 = Substring(text).utf8
        var start = utf8.startIndex
        var separator: UInt8? = nil
        var index = utf8.startIndex
        func close(_ end: Substring.UTF8View.Index) throws(Invalid) {
            let seg = utf8[start..<end]
            if seg.elementsEqual("**".utf8) {
                segments.append(.rest(separator: separator)); wildcard = true
            } else if seg.elementsEqual("*".utf8) {
                segments.append(.one(separator: separator)); wildcard = true
            } else if seg.contains(UInt8(ascii: "*")) {
                throw .misplacedWildcard(text)
            } else {
                segments.append(.literal(separator: separator, String(Substring(seg))))
            }
        }
        while index < utf8.endIndex {
            let b = utf8[index]
            if b == UInt8(ascii: "/") || b == UInt8(ascii: ".") {
                try close(index)
                separator = b
                start = utf8.index(after: index)
            }
            index = utf8.index(after: index)
        }
        try close(utf8.endIndex)
        if let restIndex = segments.firstIndex(where: { if case .rest = $0 { return true } else { return false } }),
            restIndex != segments.count - 1
        {
            throw .misplacedWildcard(text)
        }
        self.segments = segments
        self.isWildcard = wildcard
    }

    /// Whether every destination `other` matches is also matched by this pattern (so a
    /// rule allowing this pattern may allow a subscription to `other`). A `*` covers one
    /// segment (a literal or another `*`), never a `**`; a final `**` covers the rest.
    public func covers(_ other: DestinationPattern) -> Bool {
        if !other.isWildcard { return matches(other.text) }
        var i = 0
        for (n, segment) in segments.enumerated() {
            guard i < other.segments.count else { return false }
            let theirs = other.segments[i]
            guard Self.separator(segment) == Self.separator(theirs) || n == 0 else { return false }
            switch (segment, theirs) {
            case (.rest, _):
                return true
            case (.one, .literal(_, let b)) where !b.isEmpty:
                break  // a `*` matches no empty segment (`/topic/.**` is not under `/topic/*.**`)
            case (.one, .one):
                break
            case (.literal(_, let a), .literal(_, let b)) where a == b:
                break
            default:
                return false
            }
            i += 1
        }
        return i == other.segments.count
    }

    /// Whether `text` starts with `/~`: one of the gateway's routing forms (or a pattern of them).
    @inlinable
    public static func isRoutingForm(_ text: String) -> Bool {
        var utf8 = text.utf8.makeIterator()
        return utf8.next() == UInt8(ascii: "/") && utf8.next() == UInt8(ascii: "~")
    }

    static func separator(_ segment: Segment) -> UInt8? {
        switch segment {
        case .literal(let s, _), .one(let s), .rest(let s): return s
        }
    }

    /// Whether `destination` (a concrete destination, no wildcards) matches this pattern.
    public func matches(_ destination: String) -> Bool {
        if !isWildcard { return destination == text }
        if Self.isRoutingForm(destination), !Self.isRoutingForm(text) { return false }
        let utf8 = Substring(destination).utf8
        var index = utf8.startIndex
        var first = true
        for segment in segments {
            // Read the separator that must precede this segment.
            let expected: UInt8?
            switch segment {
            case .literal(let s, _), .one(let s), .rest(let s): expected = s
            }
            if !first {
                guard index < utf8.endIndex, utf8[index] == expected else { return false }
                index = utf8.index(after: index)
            }
            first = false
            var end = index
            while end < utf8.endIndex, utf8[end] != UInt8(ascii: "/"), utf8[end] != UInt8(ascii: ".") {
                end = utf8.index(after: end)
            }
            switch segment {
            case .literal(_, let lit):
                guard utf8[index..<end].elementsEqual(lit.utf8) else { return false }
            case .one:
                guard end > index else { return false }
            case .rest:
                return utf8.endIndex > index
            }
            index = end
        }
        return index == utf8.endIndex
    }
}

extension DestinationPattern {
    /// Whether `text` holds a C0 control character or DEL: a destination, user or topic with
    /// one could not reach a subscriber as written (a STOMP header cannot carry a NUL, a CR or
    /// LF would end it), so every entry point from a backend refuses it.
    package static func holdsControlCharacters(_ text: some StringProtocol) -> Bool {
        text.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }
    }

    /// Longest destination, topic or user name any entry point accepts, in UTF-8 bytes (a
    /// destination names keys in Redis and a history in memory: its length is bounded
    /// everywhere, as RabbitMQ and Centrifugo bound theirs).
    package static let maxNameBytes = 1024

    /// What is wrong with `text` as a destination, topic or user name (a control character,
    /// more than ``maxNameBytes``), phrased to follow a field name; nil when nothing is.
    package static func nameProblem(_ text: some StringProtocol) -> String? {
        if text.utf8.count > maxNameBytes { return "must be at most \(maxNameBytes) bytes" }
        if holdsControlCharacters(text) { return "must not contain control characters" }
        return nil
    }
}
