import Foundation
import JWTKit
import NIOCore
import SwitchboardCore
import SwitchboardWire

/// Where verification keys come from. Any combination; HS256 with a secret, RS256 or ES256
/// with PEM public keys, or the keys of a JWKS document.
package struct JWTKeySettings: Sendable, Equatable {
    package var hmacSecret: String?
    /// Files holding PEM public keys (RSA → RS256, EC P-256 → ES256) or certificates.
    package var publicKeyFiles: [String] = []
    package var jwksFile: String?
    /// Claims copied onto the session (e.g. `roles`), for access rules and webhooks.
    package var keptClaims: [String] = []
    /// When set, the token's `aud` must contain it / `iss` must equal it.
    package var audience: String?
    package var issuer: String?
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    package var leewaySeconds: Int = 30

    package init() {}

    package var isEmpty: Bool { hmacSecret == nil && publicKeyFiles.isEmpty && jwksFile == nil }
}

/// A configuration problem with the keys, naming the file.
package struct JWTKeyError: Error, CustomStringConvertible {
    package var description: String
}

/// Verifies JWTs (HS256, RS256, ES256) presented on `CONNECT` with jwt-kit.
///
/// The `sub` claim is the user; `exp` closes the session when it passes; `nbf` must have
/// passed. A rejected token gives the reason: "token expired", "token not yet valid",
/// "invalid signature", "malformed token", "missing sub claim", …
package final class JWTAuthenticator: SessionAuthenticator {
    let keys: JWTKeyCollection
    let settings: JWTKeySettings

    /// Key ids a token may name: ours (`switchboard-hmac`, `switchboard-pem-<n>`) and the JWKS's;
    /// nil when any kid is fine (an HMAC secret or PEM files are configured: their keys have
    /// no kid of the issuer's, and identity providers put one in every token).
    let knownKids: Set<String>?
    /// The algorithms a token's header may name: the configured keys' (HS256 for the secret,
    /// RS256 or ES256 for a PEM key, each JWKS key's `alg`). Any other is refused before
    /// jwt-kit sees the token, whose JWKS keys without `alg` build their signer from a token's
    /// header and keep it: the header never chooses the algorithm.
    let algorithms: Set<String>

    package init(settings: JWTKeySettings) async throws {
        self.settings = settings
        let keys = JWTKeyCollection()
        var kids = Set<String>()
        var algorithms = Set<String>()
        var haveDefault = false
        // Every key gets a kid, and the first also serves tokens without one; tokens without a
        // kid are then tried against every key (so several keys work side by side, e.g. during
        // a rotation).
        func register(_ kid: String, _ add: (JWKIdentifier?) async -> Void) async {
            if !haveDefault {
                await add(nil)
                haveDefault = true
            }
            await add(JWKIdentifier(string: kid))
            kids.insert(kid)
        }
        if let secret = settings.hmacSecret {
            guard secret.utf8.count >= 32 else {
                throw JWTKeyError(description: "auth.jwt.hmac-secret must be at least 32 bytes (256 bits) for HS256")
            }
            await register("switchboard-hmac") { kid in _ = await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256, kid: kid) }
            algorithms.insert("HS256")
        }
        for (n, path) in settings.publicKeyFiles.enumerated() {
            guard let pem = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw JWTKeyError(description: "cannot read public key file \(path)")
            }
            let kid = "switchboard-pem-\(n)"
            if let rsa = (try? Insecure.RSA.PublicKey(pem: pem)) ?? (try? Insecure.RSA.PublicKey(certificatePEM: pem)) {
                await register(kid) { k in _ = await keys.add(rsa: rsa, digestAlgorithm: .sha256, kid: k) }
                algorithms.insert("RS256")
            } else if let ec = (try? ES256PublicKey(pem: pem)) ?? (try? ES256PublicKey(certificate: pem)) {
                await register(kid) { k in _ = await keys.add(ecdsa: ec, kid: k) }
                algorithms.insert("ES256")
            } else {
                throw JWTKeyError(description: "\(path) holds no RSA or P-256 public key in PEM form")
            }
        }
        if let path = settings.jwksFile {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw JWTKeyError(description: "cannot read JWKS file \(path)")
            }
            let (json, named) = try Self.withAlgorithms(jwks: text, path: path)
            do {
                try await keys.add(jwksJSON: json)
            } catch {
                throw JWTKeyError(description: "JWKS file \(path) is invalid: \(error)")
            }
            kids.formUnion(named.kids)
            algorithms.formUnion(named.algorithms)
        }
        self.keys = keys
        self.knownKids = settings.hmacSecret == nil && settings.publicKeyFiles.isEmpty ? kids : nil
        self.algorithms = algorithms
    }

    /// The JWS algorithms a JWKS key may name (others are encryption algorithms: skipped).
    static let signatureAlgorithms: Set<String> = [
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
    ]

    /// The JWKS `text` without its encryption keys, with an `alg` on every key (RS256 for RSA, ES256/ES384/ES512 for EC by
    /// curve, EdDSA for OKP, as issuers that leave it out mean), its kids, and its algorithms.
    static func withAlgorithms(jwks text: String, path: String) throws -> (json: String, (kids: Set<String>, algorithms: Set<String>)) {
        guard var object = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any],
            let list = object["keys"] as? [[String: Any]]
        else {
            throw JWTKeyError(description: "JWKS file \(path) is invalid: not a JSON object with a keys array")
        }
        var kids = Set<String>()
        var algorithms = Set<String>()
        var keys: [[String: Any]] = []
        for var key in list {
            // Encryption keys (`use: enc`, `alg: RSA-OAEP`…) never verify a token.
            if key["use"] as? String == "enc" { continue }
            // X25519 is key agreement; Ed448 jwt-kit cannot read (the whole file would fail).
            if key["kty"] as? String == "OKP", key["crv"] as? String != "Ed25519" { continue }
            if let alg = key["alg"] as? String, !Self.signatureAlgorithms.contains(alg) { continue }
            if let kid = key["kid"] as? String { kids.insert(kid) }
            if key["alg"] == nil {
                switch (key["kty"] as? String, key["crv"] as? String) {
                case ("RSA", _): key["alg"] = "RS256"
                case ("EC", "P-256"): key["alg"] = "ES256"
                case ("EC", "P-384"): key["alg"] = "ES384"
                case ("EC", "P-521"): key["alg"] = "ES512"
                case ("OKP", _): key["alg"] = "EdDSA"
                default:
                    throw JWTKeyError(
                        description: "JWKS file \(path): key \(key["kid"] as? String ?? "") has no alg, and its kty/crv name none of RS256, ES256, ES384, ES512, EdDSA")
                }
            }
            if let alg = key["alg"] as? String { algorithms.insert(alg) }
            keys.append(key)
        }
        object["keys"] = keys
        guard let data = try? JSONSerialization.data(withJSONObject: object), let json = String(data: data, encoding: .utf8) else {
            throw JWTKeyError(description: "JWKS file \(path) is invalid: cannot be written back as JSON")
        }
        return (json, (kids, algorithms))
    }

    package func authenticate(token: String, on eventLoop: any EventLoop) -> EventLoopFuture<SessionIdentity> {
        let promise = eventLoop.makePromise(of: SessionIdentity.self)
        promise.completeWithTask { try await self.verify(token) }
        return promise.futureResult
    }

    /// Verifies `token` and returns who it names.
    package func verify(_ token: String) async throws -> SessionIdentity {
        let claims: StandardClaims
        let header = Self.headerObject(token)
        if let header, !((header["alg"] as? String).map(algorithms.contains) ?? false) {
            throw AuthenticationFailure("unsupported algorithm: the keys are for \(algorithms.sorted().joined(separator: ", "))")
        }
        if let knownKids, let kid = header?["kid"] as? String, !knownKids.contains(kid) {
            throw AuthenticationFailure("no key for this token")
        }
        do {
            claims = try await keys.verify(token, as: StandardClaims.self, iteratingKeys: true)
        } catch let failure as AuthenticationFailure {
            throw failure
        } catch let error as JWTError {
            switch error.errorType {
            case .signatureVerificationFailed: throw AuthenticationFailure("invalid signature")
            case .malformedToken: throw AuthenticationFailure("malformed token")
            case .unknownKID, .missingKIDHeader, .noKeyProvided: throw AuthenticationFailure("no key for this token")
            case .unsupportedAlgorithm: throw AuthenticationFailure("unsupported algorithm")
            default: throw AuthenticationFailure(error.reason ?? "invalid token")
            }
        } catch {
            throw AuthenticationFailure("malformed token")
        }
        if let claim = claims.malformedTimeClaim {
            throw AuthenticationFailure("invalid \(claim) claim: must be a number of seconds (NumericDate)")
        }
        let now = Date()
        let leeway = TimeInterval(settings.leewaySeconds)
        if let exp = claims.exp, exp.addingTimeInterval(leeway) <= now {
            throw AuthenticationFailure("token expired")
        }
        if let nbf = claims.nbf, nbf.addingTimeInterval(-leeway) > now {
            throw AuthenticationFailure("token not yet valid")
        }
        guard let sub = claims.sub, !sub.isEmpty else { throw AuthenticationFailure("missing sub claim") }
        // A name only canonically equal to another user's would share that user's queue,
        // history and rules (Swift's strings compare by canonical equivalence): NFC only.
        guard DestinationPattern.isNormalized(sub) else {
            throw AuthenticationFailure("sub claim is not in Unicode normalization form C (NFC)")
        }
        if let audience = settings.audience, !(claims.aud ?? []).contains(audience) {
            throw AuthenticationFailure("token audience does not include \(audience)")
        }
        if let issuer = settings.issuer, claims.iss != issuer {
            throw AuthenticationFailure("token issuer is not \(issuer)")
        }
        var kept: [String: [String]] = [:]
        if !settings.keptClaims.isEmpty, let payload = Self.payloadObject(token) {
            for name in settings.keptClaims {
                switch payload[name] {
                case let list as [Any]: kept[name] = list.compactMap(Self.claimString)
                case let value?: kept[name] = Self.claimString(value).map { [$0] }
                case nil: break
                }
                if let values = kept[name], !values.allSatisfy(DestinationPattern.isNormalized) {
                    throw AuthenticationFailure("\(name) claim is not in Unicode normalization form C (NFC)")
                }
            }
        }
        // The leeway that let the token in also holds the session open: it ends when a check
        // at CONNECT would refuse the token.
        let expiresAt = claims.exp.map { NIODeadline.now() + .milliseconds(Self.millisecondsLeft(until: $0.addingTimeInterval(leeway), now: now)) }
        return SessionIdentity(user: sub, claims: kept, expiresAt: expiresAt)
    }

    /// The time left until `exp`, in ms, at most ``longestSession``: an `exp` years ahead
    /// (`9999-12-31`, "never") is valid and must not overflow the deadline's arithmetic.
    static func millisecondsLeft(until exp: Date, now: Date) -> Int64 {
        let seconds = exp.timeIntervalSince(now)
        guard seconds.isFinite else { return seconds > 0 ? Self.longestSession : 0 }
        return Int64(min(max(seconds, 0), Double(Self.longestSession) / 1000) * 1000)
    }

    /// The longest a session's credential is taken to last, in ms: 100 years.
    static let longestSession: Int64 = 100 * 365 * 86_400 * 1000

    /// A kept claim's value as text: a string as is, a number in decimal, a boolean as
    /// `true`/`false` (it was `1`/`0`: Foundation's JSON gives booleans as numbers); nil for
    /// anything else (null, an object).
    static func claimString(_ value: Any) -> String? {
        switch value {
        case let s as String: return s
        case let n as NSNumber:
            // A JSON boolean is the one NSNumber of type `c` (char) that JSONSerialization makes.
            if n.objCType.pointee == CChar(UInt8(ascii: "c")) { return n.boolValue ? "true" : "false" }
            return n.stringValue
        default: return nil
        }
    }

    /// The token's payload as JSON (already verified by then).
    static func payloadObject(_ token: String) -> [String: Any]? { segmentObject(token, 1) }

    /// The token's header as JSON (not verified: only its `kid` is read).
    static func headerObject(_ token: String) -> [String: Any]? { segmentObject(token, 0) }

    static func segmentObject(_ token: String, _ index: Int) -> [String: Any]? {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else { return nil }
        var b64 = parts[index].replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while b64.count % 4 != 0 { b64 += "=" }
        guard let data = Data(base64Encoded: b64) else { return nil }
        return (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
    }
}

/// The registered claims the gateway checks itself (so its errors can name the reason).
struct StandardClaims: JWTPayload {
    var sub: String?
    var exp: Date?
    var nbf: Date?
    var iss: String?
    var aud: [String]?
    /// A time claim present but not a NumericDate (RFC 7519 §2): the token is refused, not read
    /// as if the claim were absent (a token with `"exp": "never"` would never expire).
    var malformedTimeClaim: String?

    enum CodingKeys: String, CodingKey { case sub, exp, nbf, iss, aud }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        sub = try? c.decodeIfPresent(String.self, forKey: .sub)
        for key in [CodingKeys.exp, .nbf] where c.contains(key) {
            guard let seconds = try? c.decode(Double.self, forKey: key), seconds.isFinite else {
                malformedTimeClaim = key.rawValue
                continue
            }
            if key == .exp { exp = Date(timeIntervalSince1970: seconds) } else { nbf = Date(timeIntervalSince1970: seconds) }
        }
        iss = try? c.decodeIfPresent(String.self, forKey: .iss)
        if let one = try? c.decodeIfPresent(String.self, forKey: .aud) {
            aud = [one]
        } else {
            aud = try? c.decodeIfPresent([String].self, forKey: .aud)
        }
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encodeIfPresent(sub, forKey: .sub)
        try c.encodeIfPresent(exp?.timeIntervalSince1970, forKey: .exp)
        try c.encodeIfPresent(nbf?.timeIntervalSince1970, forKey: .nbf)
        try c.encodeIfPresent(iss, forKey: .iss)
        try c.encodeIfPresent(aud, forKey: .aud)
    }

    func verify(using algorithm: some JWTAlgorithm) async throws {}
}
