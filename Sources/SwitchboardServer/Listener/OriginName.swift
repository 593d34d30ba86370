/// An `Origin` in the form browsers send it (RFC 6454 §6.2): lowercase scheme and host, no
/// default port, no path. `http.allowed-origins` entries are read into this form, and a
/// request's `Origin` is put into it before the comparison, so `https://App.Example:443/`
/// in the configuration allows the page `https://app.example`.
enum OriginName {
    /// The origin `text` names in canonical form; nil when it is not an origin
    /// (`scheme://host[:port]`, a trailing `/` allowed). `*` and `null` stay as they are.
    static func canonical(_ text: String) -> String? {
        if text == "*" || text == "null" { return text }
        guard let separator = text.range(of: "://") else { return nil }
        let scheme = text[..<separator.lowerBound].lowercased()
        var rest = Substring(text[separator.upperBound...])
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        guard !scheme.isEmpty, scheme.allSatisfy({ $0.isLetter || $0.isNumber || "+-.".contains($0) }), !rest.isEmpty,
            !rest.contains("/"), !rest.contains("?"), !rest.contains("#"), !rest.contains("@")
        else { return nil }
        var host = Substring(rest)
        var port: Substring?
        // The port follows the last ':' outside an IPv6 literal's brackets.
        if let colon = rest.lastIndex(of: ":"), !(rest.contains("]") && colon < rest.lastIndex(of: "]")!) {
            host = rest[..<colon]
            port = rest[rest.index(after: colon)...]
            guard let digits = port, !digits.isEmpty, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber), Int(digits).map({ $0 <= 65_535 }) ?? false
            else { return nil }
        }
        guard !host.isEmpty else { return nil }
        let defaultPort: Int? = ["http": 80, "https": 443, "ws": 80, "wss": 443][scheme]
        var portPart = ""
        if let number = port.flatMap({ Int($0) }), number != defaultPort { portPart = ":\(number)" }
        return scheme + "://" + host.lowercased() + portPart
    }

    /// Whether a request's `Origin` may use the gateway under `allowedOrigins` (canonical
    /// entries, as `http.allowed-origins` is read): an empty list or `*` allows any origin.
    /// The one rule of both the WebSocket upgrade and the HTTP API's CORS.
    static func isAllowed(_ origin: String, by allowedOrigins: [String]) -> Bool {
        allowsAny(allowedOrigins) || allowedOrigins.contains(canonical(origin) ?? origin)
    }

    /// Whether `allowedOrigins` allows any origin (empty, or `*`).
    static func allowsAny(_ allowedOrigins: [String]) -> Bool {
        allowedOrigins.isEmpty || allowedOrigins.contains("*")
    }
}
