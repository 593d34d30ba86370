import SwitchboardCore
import SwitchboardWire

/// Configured authorization: which destinations a session may SUBSCRIBE and SEND to, and
/// where it may watch presence (`x-presence: true` on SUBSCRIBE).
///
/// A rule is a destination pattern (`*`, `**` as in subscriptions) with placeholders taken
/// from the session's identity — `{sub}` (or `{user}`) is the user, `{claim}` any kept claim,
/// standing for each of its values when it has several (an array claim) — optionally
/// followed by ` if <claim>=<value>[,<value>…]` requiring one of those values in a claim,
/// e.g. `/topic/admin.** if roles=admin`. When a list has rules, everything it does not
/// allow is denied; an empty `subscribe` or `send` list allows everything, while an empty
/// `presence` list allows no presence at all (join/leave notices name other users, so they
/// are opt-in for the operator too). A placeholder whose value is missing,
/// or contains `/`, `.` or `*`, makes its rule match nothing (no injection of wildcards).
package struct AccessRules: AccessPolicy {
    package struct Rule: Sendable, Equatable {
        package var pattern: String
        package var requiredClaim: (name: String, values: [String])?

        package static func == (a: Rule, b: Rule) -> Bool {
            a.pattern == b.pattern && a.requiredClaim?.name == b.requiredClaim?.name && a.requiredClaim?.values == b.requiredClaim?.values
        }

        /// The `{name}` placeholders of `pattern`.
        static func placeholders(in pattern: String) -> [String] {
            var names: [String] = []
            var rest = Substring(pattern)
            while let open = rest.firstIndex(of: "{"), let close = rest[open...].firstIndex(of: "}") {
                names.append(String(rest[rest.index(after: open)..<close]))
                rest = rest[rest.index(after: close)...]
            }
            return Array(Set(names))
        }

        /// Parses `pattern [if claim=v1,v2]`.
        package init(_ text: String) throws(RuleError) {
            var pattern = Substring(text)
            var required: (String, [String])?
            if let range = text.range(of: " if ") {
                pattern = text[..<range.lowerBound]
                let condition = text[range.upperBound...]
                guard let eq = condition.firstIndex(of: "=") else { throw RuleError(rule: text, reason: "expected 'if claim=value'") }
                let name = String(condition[..<eq]).trimmingSpaces
                let values = condition[condition.index(after: eq)...].split(separator: ",").map { String($0).trimmingSpaces }
                guard !name.isEmpty, !values.isEmpty else { throw RuleError(rule: text, reason: "expected 'if claim=value'") }
                required = (name, values)
            }
            self.pattern = String(pattern).trimmingSpaces
            guard self.pattern.hasPrefix("/") else { throw RuleError(rule: text, reason: "a rule must start with '/'") }
            self.requiredClaim = required.map { (name: $0.0, values: $0.1) }
            // Checked now, with each placeholder standing for a plain name: a pattern that cannot
            // be parsed would otherwise match nothing, silently, at every check.
            let sample = SessionIdentity(user: "u", claims: Dictionary(uniqueKeysWithValues: Self.placeholders(in: self.pattern).map { ($0, ["v"]) }))
            guard let expanded = AccessRules.expansions(self.pattern, sample).first else {
                throw RuleError(rule: text, reason: "a '{' without its '}'")
            }
            do {
                _ = try DestinationPattern(expanded)
            } catch {
                throw RuleError(rule: text, reason: "\(error)")
            }
        }
    }

    package struct RuleError: Error, CustomStringConvertible {
        package var rule: String
        package var reason: String
        package var description: String { "invalid access rule '\(rule)': \(reason)" }
    }

    package let subscribe: [Rule]
    package let send: [Rule]
    /// Where `x-presence` join/leave notices may be asked for; empty: nowhere.
    package let presence: [Rule]

    package init(subscribe: [String], send: [String], presence: [String] = []) throws(RuleError) {
        var s: [Rule] = []
        for text in subscribe { s.append(try Rule(text)) }
        var t: [Rule] = []
        for text in send { t.append(try Rule(text)) }
        var w: [Rule] = []
        for text in presence { w.append(try Rule(text)) }
        self.subscribe = s
        self.send = t
        self.presence = w
    }

    package func maySubscribe(_ destination: String, identity: SessionIdentity?) -> Bool {
        Self.allows(subscribe, destination, identity)
    }

    package func maySend(_ destination: String, identity: SessionIdentity?) -> Bool {
        Self.allows(send, destination, identity)
    }

    /// Whether `identity` may get join/leave notices of `destination` (it must also be allowed
    /// to subscribe to it). No presence rules: never.
    package func mayWatchPresence(_ destination: String, identity: SessionIdentity?) -> Bool {
        !presence.isEmpty && Self.allows(presence, destination, identity)
    }

    static func allows(_ rules: [Rule], _ destination: String, _ identity: SessionIdentity?) -> Bool {
        if rules.isEmpty { return true }
        for rule in rules {
            if let required = rule.requiredClaim {
                let have = identity?.claims[required.name] ?? []
                guard have.contains(where: required.values.contains) else { continue }
            }
            for expanded in expansions(rule.pattern, identity) {
                guard let pattern = try? DestinationPattern(expanded) else { continue }
                if destination.contains("*") {
                    // A wildcard subscription is allowed only if the rule covers all it matches.
                    if let wanted = try? DestinationPattern(destination), pattern.covers(wanted) { return true }
                } else if pattern.matches(destination) {
                    return true
                }
            }
        }
        return false
    }

    /// Most patterns one rule expands to (the product of its placeholders' value counts); the
    /// values past it are not tried.
    package static let maxExpansions = 64

    /// The patterns `pattern` stands for: its placeholders replaced by each combination of
    /// their safe values (a claim with several values gives one pattern per value). A value
    /// that is empty or holds `/`, `.` or `*` is skipped; a placeholder without a safe value
    /// leaves none.
    package static func expansions(_ pattern: String, _ identity: SessionIdentity?) -> [String] {
        guard pattern.contains("{") else { return [pattern] }
        var out = [""]
        var rest = Substring(pattern)
        while let open = rest.firstIndex(of: "{") {
            let literal = rest[..<open]
            guard let close = rest[open...].firstIndex(of: "}") else { return [] }
            let name = String(rest[rest.index(after: open)..<close])
            let all: [String] = name == "sub" || name == "user" ? identity.map { [$0.user] } ?? [] : identity?.claims[name] ?? []
            let values = all.filter { value in !value.isEmpty && !value.contains(where: { $0 == "/" || $0 == "." || $0 == "*" }) }
            guard !values.isEmpty else { return [] }
            var next: [String] = []
            next.reserveCapacity(min(out.count * values.count, maxExpansions))
            combining: for prefix in out {
                for value in values {
                    guard next.count < maxExpansions else { break combining }
                    next.append(prefix + literal + value)
                }
            }
            out = next
            rest = rest[rest.index(after: close)...]
        }
        return out.map { $0 + rest }
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}
