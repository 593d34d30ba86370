import SwitchboardCore
import SwitchboardWire
import Testing

@Suite("DestinationPattern")
struct DestinationPatternTests {
    @Test(
        "matching table",
        arguments: [
            // exact
            ("/topic/a", "/topic/a", true),
            ("/topic/a", "/topic/ab", false),
            ("/topic/a", "/topic/a/b", false),
            ("/topic/a", "/topic", false),
            ("/topic/a.b", "/topic/a.b", true),
            // * is exactly one segment
            ("/topic/*", "/topic/a", true),
            ("/topic/*", "/topic/a/b", false),
            ("/topic/*", "/topic/a.b", false),
            ("/topic/*", "/topic/", false),
            ("/topic/*", "/topic", false),
            ("/topic/*/x", "/topic/a/x", true),
            ("/topic/*/x", "/topic/a/y", false),
            ("/topic/*/x", "/topic/a/b/x", false),
            ("/topic/stock.*", "/topic/stock.AAPL", true),
            ("/topic/stock.*", "/topic/stock.US.AAPL", false),
            ("/topic/stock.*", "/topic/stock/AAPL", false),
            ("/topic/*.*", "/topic/a.b", true),
            ("/topic/*.*", "/topic/a/b", false),
            ("/*/a", "/topic/a", true),
            // ** is one or more remaining segments
            ("/topic/**", "/topic/a", true),
            ("/topic/**", "/topic/a/b/c", true),
            ("/topic/**", "/topic/a.b/c.d", true),
            ("/topic/**", "/topic", false),
            ("/topic/**", "/topic/", false),
            ("/topic/**", "/topics/a", false),
            ("/topic/**", "/queue/a", false),
            ("/topic/stock.**", "/topic/stock.AAPL", true),
            ("/topic/stock.**", "/topic/stock.US.AAPL", true),
            ("/topic/stock.**", "/topic/stock/US", false),
            ("/topic/*/**", "/topic/a/b", true),
            ("/topic/*/**", "/topic/a", false),
            // separators must line up
            ("/topic/a.*", "/topic/a/b", false),
            ("/topic/a/*", "/topic/a.b", false),
            ("/topic/a.*", "/topic/a.b", true),
            ("/topic/a/*", "/topic/a/b", true),
        ] as [(String, String, Bool)])
    func matching(_ pattern: String, _ destination: String, _ expected: Bool) throws {
        let p = try DestinationPattern(pattern)
        #expect(p.matches(destination) == expected, "\(pattern) vs \(destination)")
    }

    @Test("invalid patterns are rejected", arguments: ["/topic/a*", "/topic/**/x", "/topic/*a", "/topic/a**", "/topic/***", "/topic/**.x", "/topic/a.b*c"])
    func invalid(_ text: String) {
        #expect(throws: DestinationPattern.Invalid.self) { try DestinationPattern(text) }
        do {
            _ = try DestinationPattern(text)
        } catch {
            #expect(error.description.contains(text))
        }
    }

    @Test("an empty pattern is rejected")
    func empty() {
        #expect(throws: DestinationPattern.Invalid.self) { try DestinationPattern("") }
    }

    @Test("isWildcard, equality and description")
    func properties() throws {
        #expect(try !DestinationPattern("/topic/a").isWildcard)
        #expect(try DestinationPattern("/topic/*").isWildcard)
        #expect(try DestinationPattern("/topic/**").isWildcard)
        #expect(try DestinationPattern("/topic/a") == DestinationPattern("/topic/a"))
        #expect(try DestinationPattern("/topic/a") != DestinationPattern("/topic/b"))
        #expect(try DestinationPattern("/topic/x.*").description == "/topic/x.*")
        #expect(try Set([DestinationPattern("/a"), DestinationPattern("/a"), DestinationPattern("/b")]).count == 2)
    }

    @Test(
        "control characters (C0 and DEL) are found; other text passes",
        arguments: [
            ("/topic/a", false), ("/topic/ü.日本", false), ("/topic/a\u{0}", true), ("/topic/a\nb", true), ("\r", true),
            ("/topic/\u{1F}", true), ("/topic/\u{7F}", true), ("/topic/\u{80}", false), ("", false),
        ])
    func controlCharacters(_ text: String, _ holds: Bool) {
        #expect(DestinationPattern.holdsControlCharacters(text) == holds)
    }

    @Test(
        "only NFC passes: canonically equal strings are then byte-equal",
        arguments: [
            ("/topic/a", true), ("/topic/jos\u{E9}", true), ("/topic/jose\u{301}", false), ("/topic/\u{212B}", false),
            ("/topic/\u{C5}", true), ("/topic/ü.日本", true), ("", true),
        ])
    func normalization(_ text: String, _ normalized: Bool) {
        #expect(DestinationPattern.isNormalized(text) == normalized)
        // Why it matters: Swift's == holds for the canonically equivalent forms.
        #expect("jos\u{E9}" == "jose\u{301}" && !"jos\u{E9}".utf8.elementsEqual("jose\u{301}".utf8))
    }
}
