import SwitchboardWire

/// Checks configuration keys against ``ConfigKeyCatalog``: an unknown key is named with the
/// closest known one ("unknown key redis.ulr; did you mean redis.url?").
package struct ConfigKeyCheck: Sendable {
    /// The known keys, `<name>` segments replaced by the configured names.
    package let knownKeys: [String]
    /// Environment form (`REDIS_URL`) → key.
    let byEnvironmentName: [String: String]
    /// `routes.<name>.` patterns, for naming a key under a name missing from its list.
    let namedPrefixes: [(prefix: String, namesKey: String)]

    /// - Parameter names: each names list (`routes.names`, …) → its configured names.
    package init(names: [String: [String]]) {
        var keys: [String] = []
        var prefixes: [(String, String)] = []
        for spec in ConfigKeyCatalog.all {
            guard let namesKey = spec.namesKey else {
                keys.append(spec.key)
                continue
            }
            let parts = spec.key.components(separatedBy: ConfigKeySpec.placeholder)
            if !prefixes.contains(where: { $0.0 == parts[0] }) { prefixes.append((parts[0], namesKey)) }
            for name in names[namesKey] ?? [] { keys.append(parts.joined(separator: name)) }
        }
        knownKeys = keys
        namedPrefixes = prefixes
        byEnvironmentName = Dictionary(keys.map { (Self.environmentName($0), $0) }, uniquingKeysWith: { a, _ in a })
    }

    /// `stomp.heartbeat.send-ms` → `STOMP_HEARTBEAT_SEND_MS` (swift-configuration's
    /// environment form, used for environment variables and `--set` keys). As the library's
    /// encoder, a lower-case letter followed by a capital gets a `_` between them (a name
    /// `ciBot` is `CI_BOT`): spelt otherwise, the key of a name with a capital was checked
    /// under one name and looked up under another, and its value silently ignored.
    package static func environmentName(_ key: String) -> String {
        var out = ""
        var previous: Character?
        for character in key {
            if let previous, previous.isLowercase, character.isUppercase { out.append("_") }
            out.append(contentsOf: character.isLetter || character.isNumber ? character.uppercased() : "_")
            previous = character
        }
        return out
    }

    package func isKnown(_ key: String) -> Bool { knownKeys.contains(key) }

    /// A key given in its environment form matches a known key (`--set` accepts any spelling
    /// with the same environment form, as before keys were checked).
    package func knownKey(environmentName: String) -> String? { byEnvironmentName[environmentName] }

    /// Why `key` is not known: the closest known key, and the names list missing its name.
    package func unknownKeyProblem(_ key: String) -> String {
        let typo = Self.likelyTypo(of: key, among: knownKeys)
        for (prefix, namesKey) in namedPrefixes where key.hasPrefix(prefix) {
            let rest = key.dropFirst(prefix.count)
            guard let dot = rest.firstIndex(of: "."), dot != rest.startIndex else { continue }
            let name = rest[..<dot]
            if !knownKeys.contains(where: { $0.hasPrefix(prefix + name + ".") }) {
                return "unknown key \(key): '\(name)' is not in \(namesKey)" + (typo.map { "; did you mean \($0)?" } ?? "")
            }
        }
        guard let suggestion = typo ?? Self.closest(to: key, among: knownKeys) else { return "unknown key \(key)" }
        return "unknown key \(key); did you mean \(suggestion)?"
    }

    /// An unknown `SWITCHBOARD_*` variable (`name` without the prefix), with the closest one.
    package func unknownEnvironmentWarning(_ name: String) -> String {
        let known = knownKeys.map(Self.environmentName)
        let message = "unknown environment variable SWITCHBOARD_\(name) (not a configuration key; ignored)"
        guard let suggestion = Self.closest(to: name, among: known) else { return message }
        return message + "; did you mean SWITCHBOARD_\(suggestion)?"
    }

    /// The candidate at the smallest edit distance if it is close enough to be a typo.
    static func likelyTypo(of key: String, among candidates: [String]) -> String? {
        let best = candidates.map { ($0, editDistance(key, $0)) }.min { $0.1 < $1.1 }
        guard let best, best.1 <= max(2, key.count / 4) else { return nil }
        return best.0
    }

    /// A likely typo, else a candidate ending in `.key` or `_key` (`port` → `http.port`), else
    /// the nearest candidate sharing the key's first segment.
    static func closest(to key: String, among candidates: [String]) -> String? {
        if let typo = likelyTypo(of: key, among: candidates) { return typo }
        if let tail = candidates.first(where: { $0.hasSuffix("." + key) || $0.hasSuffix("_" + key) }) { return tail }
        let head = key.prefix { $0 != "." && $0 != "_" }
        return candidates.filter { $0.hasPrefix(head) }.min { editDistance(key, $0) < editDistance(key, $1) }
    }

    /// Optimal string alignment distance: insertions, deletions, substitutions and
    /// transpositions of neighbours each cost 1 (`ulr` → `url` is 1).
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        if a.isEmpty || b.isEmpty { return max(a.count, b.count) }
        var d = [[Int]](repeating: [Int](repeating: 0, count: b.count + 1), count: a.count + 1)
        for i in 0...a.count { d[i][0] = i }
        for j in 0...b.count { d[0][j] = j }
        for i in 1...a.count {
            for j in 1...b.count {
                let cost = a[i - 1] == b[j - 1] ? 0 : 1
                d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
                if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] {
                    d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
                }
            }
        }
        return d[a.count][b.count]
    }
}
