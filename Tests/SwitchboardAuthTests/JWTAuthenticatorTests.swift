import Foundation
import JWTKit
import NIOCore
import NIOPosix
import SwitchboardAuth
import SwitchboardCore
import SwitchboardWire
import Testing

/// The claims a test token carries; nil ones are left out of the token.
struct TestClaims: JWTPayload {
    var sub: String?
    var exp: Double?
    var nbf: Double?
    var iss: String?
    var aud: [String]?
    var roles: [String]?
    var tier: String?
    var level: Int?
    var staff: Bool?
    var flags: [Bool]?

    init(sub: String? = "alice", expiresIn: Double? = 3600) {
        self.sub = sub
        self.exp = expiresIn.map { Date().timeIntervalSince1970 + $0 }
    }

    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

@Suite struct JWTAuthenticatorTests {
    static let secret = "an-hs256-secret-of-32-bytes-long"

    static func settings(secret: String? = secret, configure: (inout JWTKeySettings) -> Void = { _ in }) -> JWTKeySettings {
        var settings = JWTKeySettings()
        settings.hmacSecret = secret
        configure(&settings)
        return settings
    }

    /// An HS256 token signed with `secret`, naming `kid` in its header when given.
    static func token(_ claims: TestClaims, secret: String = secret, kid: String? = nil) async throws -> String {
        let kid = kid.map { JWKIdentifier(string: $0) }
        let keys = await JWTKeyCollection().add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256, kid: kid)
        return try await keys.sign(claims, kid: kid)
    }

    /// Why `authenticator` refuses `token`; nil when it accepts it.
    static func rejection(_ token: String, by authenticator: JWTAuthenticator) async -> String? {
        do {
            _ = try await authenticator.verify(token)
            return nil
        } catch let failure as AuthenticationFailure {
            return failure.reason
        } catch {
            return "unexpected error \(error)"
        }
    }

    static func base64URL(_ json: String) -> String {
        Data(json.utf8).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    @Test func validTokenNamesItsSubject() async throws {
        let authenticator = try await JWTAuthenticator(settings: Self.settings())
        let identity = try await authenticator.verify(try await Self.token(TestClaims(sub: "alice", expiresIn: nil)))
        #expect(identity.user == "alice")
        #expect(identity.claims.isEmpty)
        #expect(identity.expiresAt == nil)
    }

    @Test func expiryBecomesTheSessionDeadline() async throws {
        let authenticator = try await JWTAuthenticator(settings: Self.settings { $0.leewaySeconds = 0 })
        let before = NIODeadline.now()
        let identity = try await authenticator.verify(try await Self.token(TestClaims(expiresIn: 600)))
        let expiresAt = try #require(identity.expiresAt)
        #expect(expiresAt > before + .seconds(590))
        #expect(expiresAt <= NIODeadline.now() + .seconds(600))
    }

    /// An `exp` centuries ahead (a "never expires" token) once overflowed the deadline's
    /// arithmetic and crashed the process: it now counts as 100 years.
    @Test(arguments: [253_402_300_799.0, 1e15, 1e17, 9.2e18])
    func expiryFarAheadIsCappedNotATrap(exp: Double) async throws {
        let authenticator = try await JWTAuthenticator(settings: Self.settings())
        var claims = TestClaims(expiresIn: nil)
        claims.exp = exp
        let identity = try await authenticator.verify(try await Self.token(claims))
        let expiresAt = try #require(identity.expiresAt)
        #expect(expiresAt > NIODeadline.now() + .hours(24 * 365 * 99))
        #expect(expiresAt <= NIODeadline.now() + .hours(24 * 365 * 100))
    }

    /// Claims whose `exp`/`nbf` are not numbers.
    struct OddTimeClaims: JWTPayload {
        enum Value: Codable, Sendable {
            case text(String), flag(Bool)
            func encode(to encoder: any Encoder) throws {
                var c = encoder.singleValueContainer()
                switch self {
                case .text(let t): try c.encode(t)
                case .flag(let f): try c.encode(f)
                }
            }
            init(from decoder: any Decoder) throws { self = .text(try decoder.singleValueContainer().decode(String.self)) }
        }
        var sub = "alice"
        var exp: Value?
        var nbf: Value?
        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }

    /// A time claim that is not a number was read as absent: `"exp": "never"` never expired,
    /// `"nbf": "<tomorrow>"` was valid now (fail open). RFC 7519: a NumericDate.
    @Test(arguments: [
        (OddTimeClaims(exp: .text("never")), "invalid exp claim: must be a number of seconds (NumericDate)"),
        (OddTimeClaims(exp: .text("1700000000")), "invalid exp claim: must be a number of seconds (NumericDate)"),
        (OddTimeClaims(exp: .flag(true)), "invalid exp claim: must be a number of seconds (NumericDate)"),
        (OddTimeClaims(nbf: .text("4102444800")), "invalid nbf claim: must be a number of seconds (NumericDate)"),
    ])
    func aTimeClaimThatIsNotANumberIsRefused(claims: OddTimeClaims, reason: String) async throws {
        let authenticator = try await JWTAuthenticator(settings: Self.settings())
        let keys = await JWTKeyCollection().add(hmac: HMACKey(from: Self.secret), digestAlgorithm: .sha256)
        #expect(await Self.rejection(try await keys.sign(claims), by: authenticator) == reason)
    }

    @Test func keptClaimsAreCopiedAsStringLists() async throws {
        let authenticator = try await JWTAuthenticator(
            settings: Self.settings { $0.keptClaims = ["roles", "tier", "level", "absent", "staff", "flags"] })
        var claims = TestClaims()
        claims.roles = ["user", "admin"]
        claims.tier = "gold"
        claims.level = 3
        claims.iss = "not kept"
        claims.staff = true
        claims.flags = [false, true]
        let identity = try await authenticator.verify(try await Self.token(claims))
        // Booleans as true/false: they were "1" and "0", and an array of them was dropped.
        #expect(
            identity.claims == [
                "roles": ["user", "admin"], "tier": ["gold"], "level": ["3"], "staff": ["true"], "flags": ["false", "true"],
            ])
    }

    @Test func expiredTokenIsRefused() async throws {
        let authenticator = try await JWTAuthenticator(settings: Self.settings())
        let token = try await Self.token(TestClaims(expiresIn: -120))
        #expect(await Self.rejection(token, by: authenticator) == "token expired")
    }

    @Test func leewayToleratesARecentExpiry() async throws {
        let before = NIODeadline.now()
        let token = try await Self.token(TestClaims(expiresIn: -10))
        let lenient = try await JWTAuthenticator(settings: Self.settings())
        #expect(await Self.rejection(token, by: lenient) == nil)
        // The leeway that admits it also holds its session open for the rest of it (before, the
        // session was closed at once: "authentication expired").
        let expiresAt = try #require(try await lenient.verify(token).expiresAt)
        // 20 s after the token was made (its expiry in whole seconds: up to one less).
        #expect(expiresAt > before + .seconds(18) && expiresAt <= NIODeadline.now() + .seconds(20))
        let strict = try await JWTAuthenticator(settings: Self.settings { $0.leewaySeconds = 0 })
        #expect(await Self.rejection(token, by: strict) == "token expired")
    }

    @Test func tokenNotYetValidIsRefused() async throws {
        let authenticator = try await JWTAuthenticator(settings: Self.settings())
        var claims = TestClaims()
        claims.nbf = Date().timeIntervalSince1970 + 300
        #expect(await Self.rejection(try await Self.token(claims), by: authenticator) == "token not yet valid")
        claims.nbf = Date().timeIntervalSince1970 + 5
        #expect(await Self.rejection(try await Self.token(claims), by: authenticator) == nil, "within the leeway")
    }

    @Test func wrongSignatureIsRefused() async throws {
        let authenticator = try await JWTAuthenticator(settings: Self.settings())
        let forged = try await Self.token(TestClaims(), secret: "another-secret-that-is-32-bytes!")
        #expect(await Self.rejection(forged, by: authenticator) == "invalid signature")

        // A valid token whose payload was swapped for another user's.
        let parts = try await Self.token(TestClaims(sub: "alice")).split(separator: ".")
        let tampered = [String(parts[0]), Self.base64URL(#"{"sub":"mallory"}"#), String(parts[2])].joined(separator: ".")
        #expect(await Self.rejection(tampered, by: authenticator) == "invalid signature")
    }

    @Test(arguments: [TestClaims(sub: nil), TestClaims(sub: "")])
    func tokenWithoutSubjectIsRefused(claims: TestClaims) async throws {
        let authenticator = try await JWTAuthenticator(settings: Self.settings())
        #expect(await Self.rejection(try await Self.token(claims), by: authenticator) == "missing sub claim")
    }

    @Test func audienceAndIssuerAreCheckedWhenConfigured() async throws {
        let authenticator = try await JWTAuthenticator(
            settings: Self.settings {
                $0.audience = "switchboard"
                $0.issuer = "https://id.example"
            })
        var claims = TestClaims()
        claims.iss = "https://id.example"
        claims.aud = ["other", "switchboard"]
        #expect(await Self.rejection(try await Self.token(claims), by: authenticator) == nil)

        claims.aud = ["other"]
        #expect(await Self.rejection(try await Self.token(claims), by: authenticator) == "token audience does not include switchboard")
        claims.aud = nil
        #expect(await Self.rejection(try await Self.token(claims), by: authenticator) == "token audience does not include switchboard")

        claims.aud = ["switchboard"]
        claims.iss = "https://evil.example"
        #expect(await Self.rejection(try await Self.token(claims), by: authenticator) == "token issuer is not https://id.example")
        claims.iss = nil
        #expect(await Self.rejection(try await Self.token(claims), by: authenticator) == "token issuer is not https://id.example")
    }

    @Test(arguments: ["", "not-a-token", "a.b.c", "a.b"])
    func malformedTokenIsRefused(token: String) async throws {
        let authenticator = try await JWTAuthenticator(settings: Self.settings())
        #expect(await Self.rejection(token, by: authenticator) == "malformed token")
    }

    @Test func unsignedTokenIsRefused() async throws {
        let authenticator = try await JWTAuthenticator(settings: Self.settings())
        let unsigned = Self.base64URL(#"{"alg":"none","typ":"JWT"}"#) + "." + Self.base64URL(#"{"sub":"alice"}"#) + "."
        let reason = await Self.rejection(unsigned, by: authenticator)
        #expect(reason == "unsupported algorithm: the keys are for HS256")
    }

    /// With a JWKS alone, a token must name one of its keys (a key rotated away is refused).
    @Test func keyIdMustBeKnownToTheJWKS() async throws {
        let privateKey = ES256PrivateKey()
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("jwks-\(UUID().uuidString).json")
        let x = privateKey.publicKey.parameters!.x, y = privateKey.publicKey.parameters!.y
        try #"{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","kid":"k1","x":"\#(x)","y":"\#(y)"}]}"#.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let authenticator = try await JWTAuthenticator(settings: Self.settings(secret: nil) { $0.jwksFile = file.path })
        let named = try await JWTKeyCollection().add(ecdsa: privateKey, kid: "k1").sign(TestClaims(), kid: "k1")
        #expect(await Self.rejection(named, by: authenticator) == nil)
        let unknown = try await JWTKeyCollection().add(ecdsa: privateKey, kid: "rotated-away").sign(TestClaims(), kid: "rotated-away")
        #expect(await Self.rejection(unknown, by: authenticator) == "no key for this token")
    }

    /// With an HMAC secret or PEM files, the issuer's kid is accepted (identity providers put one
    /// in every token; a PEM file names none): the signature decides. An RS256 token with a kid
    /// was refused, "no key for this token".
    @Test func anIssuersKeyIdIsFineWithASecretOrAPEMFile() async throws {
        let authenticator = try await JWTAuthenticator(settings: Self.settings())
        #expect(await Self.rejection(try await Self.token(TestClaims(), kid: "switchboard-hmac"), by: authenticator) == nil)
        #expect(await Self.rejection(try await Self.token(TestClaims(), kid: "issuer-key-7"), by: authenticator) == nil)
        let wrong = try await Self.token(TestClaims(), secret: String(repeating: "w", count: 32), kid: "issuer-key-7")
        #expect(await Self.rejection(wrong, by: authenticator) == "invalid signature")

        let privateKey = ES256PrivateKey()
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("jwt-\(UUID().uuidString).pem")
        try privateKey.publicKey.pemRepresentation.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let pem = try await JWTAuthenticator(settings: Self.settings(secret: nil) { $0.publicKeyFiles = [file.path] })
        let token = try await JWTKeyCollection().add(ecdsa: privateKey, kid: "abc").sign(TestClaims(sub: "svc"), kid: "abc")
        #expect(try await pem.verify(token).user == "svc")
    }

    @Test(arguments: ["", "too-short-for-hs256", String(repeating: "x", count: 31)])
    func hmacSecretShorterThan32BytesIsAConfigurationError(secret: String) async {
        let error = await #expect(throws: JWTKeyError.self) { _ = try await JWTAuthenticator(settings: Self.settings(secret: secret)) }
        #expect(error?.description == "auth.jwt.hmac-secret must be at least 32 bytes (256 bits) for HS256")
    }

    @Test func es256PublicKeyFileVerifiesTokensOfItsPrivateKey() async throws {
        let privateKey = ES256PrivateKey()
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("jwt-\(UUID().uuidString).pem")
        try privateKey.publicKey.pemRepresentation.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let authenticator = try await JWTAuthenticator(settings: Self.settings(secret: nil) { $0.publicKeyFiles = [file.path] })

        let signer = await JWTKeyCollection().add(ecdsa: privateKey)
        let token = try await signer.sign(TestClaims(sub: "svc"))
        #expect(try await authenticator.verify(token).user == "svc")

        let other = await JWTKeyCollection().add(ecdsa: ES256PrivateKey())
        #expect(await Self.rejection(try await other.sign(TestClaims()), by: authenticator) == "invalid signature")
        // An HS256 token, however well signed, has no key here: its algorithm is refused.
        let reason = await Self.rejection(try await Self.token(TestClaims()), by: authenticator)
        #expect(reason == "unsupported algorithm: the keys are for ES256")
    }

    @Test func unreadableOrInvalidKeyFilesAreConfigurationErrors() async throws {
        let missing = "/nonexistent/\(UUID().uuidString).pem"
        let error = await #expect(throws: JWTKeyError.self) {
            _ = try await JWTAuthenticator(settings: Self.settings(secret: nil) { $0.publicKeyFiles = [missing] })
        }
        #expect(error?.description == "cannot read public key file \(missing)")

        let garbage = FileManager.default.temporaryDirectory.appendingPathComponent("jwt-\(UUID().uuidString).pem")
        try "not a key".write(to: garbage, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: garbage) }
        let invalid = await #expect(throws: JWTKeyError.self) {
            _ = try await JWTAuthenticator(settings: Self.settings(secret: nil) { $0.publicKeyFiles = [garbage.path] })
        }
        #expect(invalid?.description == "\(garbage.path) holds no RSA or P-256 public key in PEM form")
    }

    @Test func authenticateOnAnEventLoopGivesTheSameAnswers() async throws {
        let authenticator = try await JWTAuthenticator(settings: Self.settings())
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let identity = try await authenticator.authenticate(token: try await Self.token(TestClaims(sub: "bob")), on: loop).get()
        #expect(identity.user == "bob")
        let error = await #expect(throws: AuthenticationFailure.self) {
            _ = try await authenticator.authenticate(token: try await Self.token(TestClaims(expiresIn: -600)), on: loop).get()
        }
        #expect(error?.reason == "token expired")
    }

    @Test func settingsWithoutKeysAreEmpty() {
        #expect(JWTKeySettings().isEmpty)
        #expect(!Self.settings().isEmpty)
        #expect(!Self.settings(secret: nil) { $0.jwksFile = "/k.json" }.isEmpty)
    }
}
