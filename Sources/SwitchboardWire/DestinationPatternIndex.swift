/// A set of wildcard patterns that finds those matching a destination without trying each:
/// a trie over the patterns' segments (the segment with the separator before it), walked
/// along the destination's segments. A lookup visits at most one node per pattern segment
/// and, usually, a few nodes per destination segment, however many patterns there are (a
/// per-user pattern such as `/topic/orders.<user>.*` for 10,000 users costs a publish what
/// one pattern does). Matches exactly what ``DestinationPattern/matches(_:)`` matches.
///
/// Not thread-safe: the fan-out keeps one under its lock, and one per event loop.
package final class DestinationPatternIndex: @unchecked Sendable {
    /// A literal segment, compared and hashed by its UTF-8 bytes as ``DestinationPattern``
    /// compares them (`Substring` would compare by canonical equivalence: `e` + U+0301 = `é`).
    private struct Segment: Hashable {
        let text: Substring

        static func == (a: Segment, b: Segment) -> Bool { a.text.utf8.elementsEqual(b.text.utf8) }

        func hash(into hasher: inout Hasher) {
            hasher.combine(text.utf8.count)
            for byte in text.utf8 { hasher.combine(byte) }
        }
    }

    private final class Node {
        /// By separator slot (none, `/`, `.`), then the literal segment.
        var literal: [[Segment: Node]] = [[:], [:], [:]]
        /// `*` after each separator.
        var one: [Node?] = [nil, nil, nil]
        /// The pattern ending in `**` after each separator.
        var rest: [DestinationPattern?] = [nil, nil, nil]
        /// The pattern ending at this node.
        var terminal: DestinationPattern?

        var isEmpty: Bool {
            terminal == nil && rest.allSatisfy { $0 == nil } && one.allSatisfy { $0 == nil } && literal.allSatisfy(\.isEmpty)
        }
    }

    private let root = Node()
    /// Patterns in the index.
    package private(set) var count = 0

    package init() {}

    private static func slot(_ separator: UInt8?) -> Int {
        switch separator {
        case UInt8(ascii: "/"): 1
        case UInt8(ascii: "."): 2
        default: 0
        }
    }

    /// Adds `pattern` (a wildcard pattern; an exact destination is not indexed). No effect if
    /// it is in already.
    package func insert(_ pattern: DestinationPattern) {
        guard pattern.isWildcard else { return }
        var node = root
        for segment in pattern.segments {
            switch segment {
            case .literal(let separator, let text):
                let s = Self.slot(separator)
                if let next = node.literal[s][Segment(text: Substring(text))] {
                    node = next
                } else {
                    let next = Node()
                    node.literal[s][Segment(text: Substring(text))] = next
                    node = next
                }
            case .one(let separator):
                let s = Self.slot(separator)
                if let next = node.one[s] {
                    node = next
                } else {
                    let next = Node()
                    node.one[s] = next
                    node = next
                }
            case .rest(let separator):
                let s = Self.slot(separator)
                if node.rest[s] == nil { count += 1 }
                node.rest[s] = pattern
                return
            }
        }
        if node.terminal == nil { count += 1 }
        node.terminal = pattern
    }

    /// Removes `pattern`; no effect if it is not in. Nodes left empty are dropped.
    package func remove(_ pattern: DestinationPattern) {
        guard pattern.isWildcard else { return }
        if remove(pattern.segments[...], from: root) { count -= 1 }
    }

    /// Removes the pattern whose remaining segments are `segments` below `node`; true if it was there.
    private func remove(_ segments: ArraySlice<DestinationPattern.Segment>, from node: Node) -> Bool {
        guard let segment = segments.first else {
            defer { node.terminal = nil }
            return node.terminal != nil
        }
        switch segment {
        case .rest(let separator):
            let s = Self.slot(separator)
            defer { node.rest[s] = nil }
            return node.rest[s] != nil
        case .literal(let separator, let text):
            let s = Self.slot(separator)
            guard let next = node.literal[s][Segment(text: Substring(text))] else { return false }
            let removed = remove(segments.dropFirst(), from: next)
            if next.isEmpty { node.literal[s][Segment(text: Substring(text))] = nil }
            return removed
        case .one(let separator):
            let s = Self.slot(separator)
            guard let next = node.one[s] else { return false }
            let removed = remove(segments.dropFirst(), from: next)
            if next.isEmpty { node.one[s] = nil }
            return removed
        }
    }

    /// Calls `body` with every pattern in the index that matches `destination`, each once.
    /// The destination is split into segments as the walk goes, without allocating.
    /// A routing form (`/~user/…`) is matched only by patterns of routing forms
    /// (``DestinationPattern``).
    package func forEachMatch(_ destination: String, _ body: (DestinationPattern) -> Void) {
        guard count > 0 else { return }
        let text = Substring(destination)
        if DestinationPattern.isRoutingForm(destination) {
            walk(root, text, from: text.startIndex, slot: 0) { if DestinationPattern.isRoutingForm($0.text) { body($0) } }
        } else {
            walk(root, text, from: text.startIndex, slot: 0, body)
        }
    }

    /// Matches the segment of `text` starting at `start` (after a separator of `slot`) and
    /// the rest below `node`.
    private func walk(_ node: Node, _ text: Substring, from start: Substring.Index, slot: Int, _ body: (DestinationPattern) -> Void) {
        let utf8 = text.utf8
        var end = start
        while end < utf8.endIndex, utf8[end] != UInt8(ascii: "/"), utf8[end] != UInt8(ascii: ".") { end = utf8.index(after: end) }
        let segment = text[start..<end]
        let isLast = end == utf8.endIndex
        // `**` takes the rest after its separator, if the rest is not empty.
        if let p = node.rest[slot], !(segment.isEmpty && isLast) { body(p) }
        let nextSlot = isLast ? 0 : Self.slot(utf8[end])
        let nextStart = isLast ? end : utf8.index(after: end)
        func descend(_ next: Node) {
            if isLast {
                if let p = next.terminal { body(p) }
            } else {
                walk(next, text, from: nextStart, slot: nextSlot, body)
            }
        }
        if !segment.isEmpty, let next = node.one[slot] { descend(next) }
        if let next = node.literal[slot][Segment(text: segment)] { descend(next) }
    }
}
