import Foundation
import Testing

@testable import SwitchboardServer

/// `ConfigKeyCatalog` is the one list of keys: it must be exactly the keys the configuration
/// reads, docs/configuration.md must be generated from it, and the README and docs/ may name no other key.
@Suite struct ConfigurationCatalogTests {
    static let repository = ConfigurationCheckTests.repository

    /// A configuration taking every branch: Redis on, each route and inbound kind, an API key, TLS.
    static let everything = [
        "redis.url=redis://127.0.0.1:6379",
        "routes.names=hook,stream,pubsub",
        "routes.hook.destination=/app/hook", "routes.hook.type=webhook", "routes.hook.url=http://127.0.0.1:9/x",
        "routes.stream.destination=/app/s", "routes.stream.type=redis-stream", "routes.stream.stream=S",
        "routes.pubsub.destination=/app/p", "routes.pubsub.type=redis-pubsub", "routes.pubsub.channel=P",
        "redis.inbound.names=chan,bc,st",
        "redis.inbound.chan.type=channel", "redis.inbound.chan.channel=C", "redis.inbound.chan.destination=/topic/c",
        "redis.inbound.bc.type=broadcast", "redis.inbound.bc.channel=B",
        "redis.inbound.st.type=stream", "redis.inbound.st.stream=T",
        "auth.api-keys.names=k", "auth.api-keys.k.sha256=" + String(repeating: "a", count: 64),
        "http.tls.certificate-file=/nonexistent.pem", "http.tls.key-file=/nonexistent.key",
        "log.level=debug",
        "history.windows.names=w", "history.windows.w.prefix=/topic/w.",
    ]

    /// `routes.hook.url` → `routes.<name>.url` for the names configured above.
    static func pattern(of key: String) -> String {
        for prefix in ["routes.", "redis.inbound.", "auth.api-keys.", "history.windows."] where key.hasPrefix(prefix) {
            let rest = key.dropFirst(prefix.count)
            if let dot = rest.firstIndex(of: "."), rest[..<dot] != "names" {
                return prefix + ConfigKeySpec.placeholder + rest[dot...]
            }
        }
        return key
    }

    @Test func catalogIsExactlyTheKeysRead() async throws {
        let loaded = try await ConfigurationCheckTests().load(Self.everything)
        let read = Set(loaded.keysRead.map(Self.pattern))
        let catalog = Set(ConfigKeyCatalog.all.map(\.key))
        #expect(read.subtracting(catalog).sorted() == [], "read but not in ConfigKeyCatalog")
        #expect(catalog.subtracting(read).sorted() == [], "in ConfigKeyCatalog but never read")
        #expect(ConfigKeyCatalog.all.count == catalog.count, "a key listed twice")
    }

    @Test func committedReferenceIsGeneratedFromTheCatalog() throws {
        let committed = try String(contentsOf: Self.repository.appendingPathComponent("docs/configuration.md"), encoding: .utf8)
        #expect(
            committed == ConfigKeyCatalog.markdown(),
            "docs/configuration.md is stale: swift run switchboard --configuration-reference > docs/configuration.md")
    }

    /// README.md and every docs/*.md written by hand (not the generated configuration.md, nor
    /// benchmarks.md, whose tables hold measurements).
    static func documentationFiles() throws -> [String] {
        let docs = Self.repository.appendingPathComponent("docs")
        let names = try FileManager.default.contentsOfDirectory(atPath: docs.path)
            .filter { $0.hasSuffix(".md") && $0 != "configuration.md" && $0 != "benchmarks.md" }
            .sorted()
        return ["README.md"] + names.map { "docs/" + $0 }
    }

    /// Every key in a table of the README or docs/ (`| \`key\` |` rows, `<n>` for a name) is a catalog key.
    @Test func readmeNamesOnlyKnownKeys() throws {
        let sections = Set(ConfigKeyCatalog.all.map { String($0.key.prefix { $0 != "." }) })
        let known = Set(ConfigKeyCatalog.all.map(\.key))
        let punctuation: Set<Character> = [".", "-", "<", ">"]
        var checked = 0
        for file in try Self.documentationFiles() {
            let text = try String(contentsOf: Self.repository.appendingPathComponent(file), encoding: .utf8)
            for line in text.split(separator: "\n") where line.hasPrefix("| `") {
                let firstCell = line.dropFirst(2).prefix { $0 != "|" }
                for piece in firstCell.split(separator: ",") {
                    let key = piece.trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "`"))
                    guard let head = key.split(separator: ".").first, sections.contains(String(head)), key.contains("."),
                        key.allSatisfy({ (c: Character) in c.isLowercase || c.isNumber || punctuation.contains(c) })
                    else { continue }
                    let normalized = key.replacingOccurrences(of: "<n>", with: ConfigKeySpec.placeholder)
                        .replacingOccurrences(of: ".*.", with: "." + ConfigKeySpec.placeholder + ".")
                    if normalized == "log.levels.<subsystem>" { checked += 1; continue }
                    let isKnown = known.contains(normalized)
                    #expect(isKnown, "\(file) names \(key), which is not a configuration key")
                    checked += 1
                }
            }
        }
        #expect(checked > 10)
    }

    @Test func editDistanceCountsATranspositionOnce() {
        #expect(ConfigKeyCheck.editDistance("redis.ulr", "redis.url") == 1)
        #expect(ConfigKeyCheck.editDistance("", "abc") == 3)
        #expect(ConfigKeyCheck.editDistance("http.prot", "http.port") == 1)
    }
}
