import Crypto
import Foundation

/// Bearer API keys for the HTTP API, stored hashed: the configuration holds the SHA-256 of
/// each key (hex), never the key. Each key has scopes: the destination prefixes it may
/// publish to (`/topic/`, `/queue/` for user messages, …), matched at segment boundaries.
package struct APIKeyStore: Sendable {
    package struct Key: Sendable, Equatable {
        package var name: String
        /// Lower-case hex SHA-256 of the key.
        package var sha256: String
        package var scopes: [String]
        package init(name: String, sha256: String, scopes: [String]) {
            self.name = name
            self.sha256 = sha256.lowercased()
            self.scopes = scopes
        }
    }

    package let keys: [Key]
    package init(keys: [Key]) { self.keys = keys }
    package var isEmpty: Bool { keys.isEmpty }

    /// Lower-case hex SHA-256 of `secret` (what goes in the configuration).
    package static func hash(_ secret: String) -> String {
        SHA256.hash(data: Data(secret.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    /// The key whose hash matches `secret`, compared in constant time per key.
    package func key(for secret: String) -> Key? {
        let digest = Array(Self.hash(secret).utf8)
        var found: Key?
        for key in keys {
            let expected = Array(key.sha256.utf8)
            guard expected.count == digest.count else { continue }
            var diff: UInt8 = 0
            for i in 0..<digest.count { diff |= digest[i] ^ expected[i] }
            if diff == 0 { found = key }
        }
        return found
    }

    /// Whether `key` may publish to `destination`: one of its scopes is the destination itself
    /// or a prefix of it that ends at a segment boundary (`/` or `.`). A scope ending in a
    /// separator (`/topic/`, `/topic/support.`) covers what follows it; one that does not
    /// (`/topic/orders`) covers itself and what follows a separator after it (`/topic/orders/eu`,
    /// `/topic/orders.eu`), not a longer name (`/topic/orders-admin`). Compared byte for byte.
    package static func allows(_ key: Key, _ destination: String) -> Bool {
        key.scopes.contains { covers($0, destination) }
    }

    /// Whether `key` may read the presence of `user` (`/user/<user>`): a scope that is exactly
    /// that, or a prefix of it ending in a separator (`/user/`, `/user/tenant1.`). A user name
    /// may hold `.` and `/`: the scope `/user/alice` does not cover `alice.admin`.
    package static func allows(_ key: Key, user: String) -> Bool {
        let name = Array("/user/\(user)".utf8)
        return key.scopes.contains { scope in
            let scope = Array(scope.utf8)
            guard let last = scope.last, name.starts(with: scope) else { return false }
            // `/user` itself covers every user (the `/` after it ends a segment).
            return scope.count == name.count || last == UInt8(ascii: "/") || last == UInt8(ascii: ".") || scope.elementsEqual("/user".utf8)
        }
    }

    /// Whether `scope` covers `destination` (see ``allows(_:_:)``).
    package static func covers(_ scope: String, _ destination: String) -> Bool {
        let scope = scope.utf8
        let destination = destination.utf8
        guard !scope.isEmpty, destination.starts(with: scope) else { return false }
        if scope.count == destination.count { return true }
        let isSeparator = { (byte: UInt8) in byte == UInt8(ascii: "/") || byte == UInt8(ascii: ".") }
        return isSeparator(scope.last!) || isSeparator(destination[destination.index(destination.startIndex, offsetBy: scope.count)])
    }
}
