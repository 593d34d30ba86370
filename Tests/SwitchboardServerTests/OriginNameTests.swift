import Testing

@testable import SwitchboardServer

/// Origins compared the way browsers send them: `http.allowed-origins` entries and a request's
/// `Origin` in one form. Before, an entry spelled `https://App.Example` or with a trailing `/`
/// refused the browser's `https://app.example` (an exact string match).
@Suite struct OriginNameTests {
    @Test(arguments: [
        ("https://app.example", "https://app.example"),
        ("https://App.Example", "https://app.example"),
        ("HTTPS://app.example/", "https://app.example"),
        ("https://app.example:443", "https://app.example"),
        ("http://app.example:80/", "http://app.example"),
        ("http://app.example:8080", "http://app.example:8080"),
        ("https://app.example:0443", "https://app.example"),
        ("http://[::1]:3000", "http://[::1]:3000"),
        ("http://[::1]", "http://[::1]"),
        ("*", "*"),
        ("null", "null"),
    ])
    func canonicalForm(_ text: String, _ expected: String) {
        #expect(OriginName.canonical(text) == expected)
    }

    @Test(arguments: ["app.example", "https://", "https://app.example/path", "https://a.example:99999", "https://a.example:x", "https://u@a.example", "://a"])
    func notAnOrigin(_ text: String) {
        #expect(OriginName.canonical(text) == nil)
    }

    @Test func theHandshakeAndTheAPIAcceptTheBrowsersSpelling() throws {
        // As the configuration reads the entry.
        let h = try RouterHarness(origins: [try #require(OriginName.canonical("https://App.Example/"))])
        try h.write(RouterHarness.upgrade(extra: "Origin: https://app.example\r\n"))
        #expect(try h.outboundText().hasPrefix("HTTP/1.1 101"))
        let refused = try RouterHarness(origins: ["https://app.example"])
        try refused.write(RouterHarness.upgrade(extra: "Origin: https://evil.example\r\n"))
        #expect(try refused.outboundText().hasPrefix("HTTP/1.1 403"))
    }

    @Test(
        "one rule for the upgrade and CORS: empty or * allows any; else the canonical spelling",
        arguments: [
            ([], "https://evil.example", true),
            (["*"], "https://evil.example", true),
            (["https://app.example"], "https://APP.example:443", true),
            (["https://app.example"], "https://app.example:8443", false),
            (["https://app.example"], "null", false),
            (["null"], "null", true),
            (["https://app.example"], "not an origin", false),
        ])
    func allowed(_ allowed: [String], _ origin: String, _ expected: Bool) {
        #expect(OriginName.isAllowed(origin, by: allowed) == expected)
    }
}
