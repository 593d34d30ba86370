import SwitchboardWire
import Testing

@Suite("DestinationPatternIndex: the patterns matching a destination, found through a trie")
struct DestinationPatternIndexTests {
    func matches(_ index: DestinationPatternIndex, _ destination: String) -> [String] {
        var found: [String] = []
        index.forEachMatch(destination) { found.append($0.text) }
        return found.sorted()
    }

    @Test("examples: *, ** and literals, separators lining up")
    func examples() throws {
        let index = DestinationPatternIndex()
        for p in ["/topic/stock.*", "/topic/stock.**", "/topic/**", "/topic/*.AAPL", "/topic/a/*", "**", "/queue/*"] {
            index.insert(try DestinationPattern(p))
        }
        #expect(index.count == 7)
        #expect(matches(index, "/topic/stock.AAPL") == ["**", "/topic/**", "/topic/*.AAPL", "/topic/stock.*", "/topic/stock.**"])
        #expect(matches(index, "/topic/stock.US.AAPL") == ["**", "/topic/**", "/topic/stock.**"])
        #expect(matches(index, "/topic/stock") == ["**", "/topic/**"])
        #expect(matches(index, "/topic/stock.") == ["**", "/topic/**"])
        #expect(matches(index, "/topic/a.b") == ["**", "/topic/**"])
        #expect(matches(index, "/topic/a/b") == ["**", "/topic/**", "/topic/a/*"])
        #expect(matches(index, "/topic/") == ["**"])
        #expect(matches(index, "/queue/x") == ["**", "/queue/*"])
    }

    /// With a broker prefix `/`, a client's `/**` was a broker subscription matching every
    /// user's queue (`/~user/bob/queue/x`): the routing forms match only routing-form patterns.
    @Test("the gateway's routing forms match only patterns of routing forms")
    func routingForms() throws {
        let index = DestinationPatternIndex()
        let patterns = ["/**", "/*/bob/queue/*", "**", "/~user/bob/queue/*", "/~presence/topic/*", "/*"]
        for p in patterns { index.insert(try DestinationPattern(p)) }
        #expect(matches(index, "/~user/bob/queue/x") == ["/~user/bob/queue/*"])
        #expect(matches(index, "/~presence/topic/a") == ["/~presence/topic/*"])
        #expect(matches(index, "/~session/s1/queue/x").isEmpty)
        #expect(matches(index, "/news/today") == ["**", "/**"])
        #expect(matches(index, "/x") == ["**", "/*", "/**"])
        for p in patterns {
            let pattern = try DestinationPattern(p)
            for d in ["/~user/bob/queue/x", "/~presence/topic/a", "/~session/s1/queue/x", "/news/today", "/x", "/~"] {
                var viaIndex = false
                index.forEachMatch(d) { if $0 == pattern { viaIndex = true } }
                #expect(pattern.matches(d) == viaIndex, "\(p) \(d)")
            }
        }
    }

    @Test("segments compare by their bytes, as matches(_:) does, not by canonical equivalence")
    func bytes() throws {
        let index = DestinationPatternIndex()
        let pattern = try DestinationPattern("/topic/caf\u{E9}.*")
        index.insert(pattern)
        let decomposed = "/topic/cafe\u{301}.x"
        #expect(!pattern.matches(decomposed))
        #expect(matches(index, decomposed).isEmpty)
        #expect(matches(index, "/topic/caf\u{E9}.x") == ["/topic/caf\u{E9}.*"])
    }

    @Test("insert twice counts once; remove drops only that pattern, and what it alone needed")
    func insertRemove() throws {
        let index = DestinationPatternIndex()
        let a = try DestinationPattern("/topic/a.*"), b = try DestinationPattern("/topic/a.*.x"), c = try DestinationPattern("/topic/a.**")
        index.insert(a)
        index.insert(a)
        index.insert(b)
        index.insert(c)
        index.insert(try DestinationPattern("/topic/exact"))  // not a wildcard: not indexed
        #expect(index.count == 3)
        #expect(matches(index, "/topic/a.q") == ["/topic/a.*", "/topic/a.**"])
        #expect(matches(index, "/topic/a.q.x") == ["/topic/a.**", "/topic/a.*.x"])
        index.remove(a)
        index.remove(a)
        #expect(index.count == 2)
        #expect(matches(index, "/topic/a.q") == ["/topic/a.**"])
        #expect(matches(index, "/topic/a.q.x") == ["/topic/a.**", "/topic/a.*.x"])
        index.remove(b)
        index.remove(c)
        #expect(index.count == 0)
        #expect(matches(index, "/topic/a.q.x").isEmpty)
        index.insert(b)
        #expect(matches(index, "/topic/a.q.x") == ["/topic/a.*.x"])
    }

    @Test("random patterns and destinations: the index finds exactly what matches(_:) accepts")
    func equivalence() throws {
        var rng = SplitMix(seed: 0x5EED)
        let words = ["", "a", "b", "ab", "topic", "x"]
        func destination() -> String {
            var s = ""
            for i in 0..<Int(rng.next() % 5 + 1) {
                if i > 0 || rng.next() % 2 == 0 { s += rng.next() % 2 == 0 ? "/" : "." }
                s += words[Int(rng.next() % UInt64(words.count))]
            }
            return s.isEmpty ? "a" : s
        }
        for _ in 0..<50 {
            let index = DestinationPatternIndex()
            var patterns: [DestinationPattern] = []
            for _ in 0..<Int(rng.next() % 30 + 1) {
                var text = destination()
                // Replace whole segments with wildcards: rebuild from a destination's separators.
                var rebuilt = ""
                var current = ""
                for ch in text + "\u{0}" {
                    if ch == "/" || ch == "." || ch == "\u{0}" {
                        let roll = rng.next() % 4
                        rebuilt += roll == 0 ? "*" : current
                        if ch != "\u{0}" { rebuilt.append(ch) }
                        current = ""
                    } else {
                        current.append(ch)
                    }
                }
                if rng.next() % 4 == 0 { rebuilt += (rebuilt.last == "/" || rebuilt.last == ".") ? "**" : ".**" }
                text = rebuilt
                guard let p = try? DestinationPattern(text), p.isWildcard else { continue }
                patterns.append(p)
                index.insert(p)
            }
            // Remove some, so removal is covered too.
            for p in patterns where rng.next() % 5 == 0 {
                index.remove(p)
                patterns.removeAll { $0 == p }
            }
            let distinct = Set(patterns.map(\.text))
            #expect(index.count == distinct.count)
            for _ in 0..<40 {
                let d = destination()
                let expected = distinct.filter { (try? DestinationPattern($0))?.matches(d) == true }.sorted()
                #expect(matches(index, d) == expected, "destination \(d), patterns \(distinct.sorted())")
            }
        }
    }
}

/// A small deterministic generator (SplitMix64), so a failure can be replayed.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
