import SwitchboardAuth
import Testing

@Suite struct APIKeyStoreTests {
    /// The store configured with the hashes of two keys, as the configuration file holds them.
    static let store = APIKeyStore(keys: [
        APIKeyStore.Key(name: "publisher", sha256: APIKeyStore.hash("s3cret-publisher"), scopes: ["/topic/"]),
        APIKeyStore.Key(name: "support", sha256: APIKeyStore.hash("s3cret-support"), scopes: ["/queue/", "/topic/support."]),
        APIKeyStore.Key(name: "orders", sha256: APIKeyStore.hash("s3cret-orders"), scopes: ["/topic/orders"]),
        APIKeyStore.Key(name: "café", sha256: APIKeyStore.hash("s3cret-cafe"), scopes: ["/topic/caf\u{E9}"]),
        APIKeyStore.Key(name: "all", sha256: APIKeyStore.hash("s3cret-all"), scopes: ["/"]),
    ])

    @Test func hashIsLowerCaseHexSHA256() {
        // FIPS 180-2 test vectors.
        #expect(APIKeyStore.hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(APIKeyStore.hash("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }

    @Test func configuredHashIsStoredLowerCase() {
        let key = APIKeyStore.Key(name: "k", sha256: "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD", scopes: [])
        #expect(key.sha256 == APIKeyStore.hash("abc"))
        #expect(APIKeyStore(keys: [key]).key(for: "abc")?.name == "k")
    }

    @Test func keyIsFoundByItsSecretOnly() {
        #expect(Self.store.key(for: "s3cret-publisher")?.name == "publisher")
        #expect(Self.store.key(for: "s3cret-support")?.name == "support")
        #expect(Self.store.key(for: "s3cret-publisher ") == nil)
        #expect(Self.store.key(for: "S3CRET-PUBLISHER") == nil)
        #expect(Self.store.key(for: "") == nil)
        // The hash itself is not a key.
        #expect(Self.store.key(for: APIKeyStore.hash("s3cret-publisher")) == nil)
    }

    @Test func malformedConfiguredHashesMatchNothing() {
        let store = APIKeyStore(keys: [
            APIKeyStore.Key(name: "short", sha256: String(APIKeyStore.hash("x").dropLast()), scopes: ["/"]),
            APIKeyStore.Key(name: "empty", sha256: "", scopes: ["/"]),
        ])
        #expect(store.key(for: "x") == nil)
        #expect(store.key(for: "") == nil)
    }

    @Test func emptyStore() {
        let store = APIKeyStore(keys: [])
        #expect(store.isEmpty)
        #expect(store.key(for: "anything") == nil)
        #expect(!Self.store.isEmpty)
    }

    @Test(arguments: [
        ("publisher", "/topic/news", true),
        ("publisher", "/topic/", true),
        ("publisher", "/queue/orders", false),
        ("publisher", "/topicx", false),
        ("publisher", "/app/greet", false),
        ("support", "/queue/tickets", true),
        ("support", "/topic/support.chat", true),
        ("support", "/topic/news", false),
        ("support", "/topic/support", false),
        // A scope not ending in a separator stops at a segment boundary.
        ("orders", "/topic/orders", true),
        ("orders", "/topic/orders/eu", true),
        ("orders", "/topic/orders.eu", true),
        ("orders", "/topic/orders-admin", false),
        ("orders", "/topic/ordersx/y", false),
        ("orders", "/topic/order", false),
        // Byte for byte: a canonically equal but differently encoded scope is another one.
        ("café", "/topic/caf\u{E9}/menu", true),
        ("café", "/topic/cafe\u{301}/menu", false),
        ("all", "/anything/at.all", true),
    ])
    func scopesArePrefixes(keyName: String, destination: String, allowed: Bool) throws {
        let key = try #require(Self.store.keys.first { $0.name == keyName })
        #expect(APIKeyStore.allows(key, destination) == allowed)
    }

    /// A user name may hold `.` and `/`: a scope naming one user covers that user only.
    @Test func aUserScopeCoversThatUserOnly() {
        let key = APIKeyStore.Key(name: "k", sha256: APIKeyStore.hash("k"), scopes: ["/user/alice", "/user/tenant1."])
        #expect(APIKeyStore.allows(key, user: "alice"))
        #expect(!APIKeyStore.allows(key, user: "alice.admin"))
        #expect(!APIKeyStore.allows(key, user: "alice/x"))
        #expect(!APIKeyStore.allows(key, user: "alic"))
        #expect(APIKeyStore.allows(key, user: "tenant1.bob"))
        #expect(!APIKeyStore.allows(key, user: "tenant2.bob"))
        for scope in ["/user/", "/user"] {
            let all = APIKeyStore.Key(name: "all", sha256: APIKeyStore.hash("a"), scopes: [scope])
            #expect(APIKeyStore.allows(all, user: "anyone.at/all"))
        }
        let userx = APIKeyStore.Key(name: "x", sha256: APIKeyStore.hash("x"), scopes: ["/use"])
        #expect(!APIKeyStore.allows(userx, user: "a"))
        let root = APIKeyStore.Key(name: "root", sha256: APIKeyStore.hash("r"), scopes: ["/"])
        #expect(APIKeyStore.allows(root, user: "x"))
    }

    @Test func keyWithoutScopesMayPublishNowhere() {
        let key = APIKeyStore.Key(name: "none", sha256: APIKeyStore.hash("n"), scopes: [])
        #expect(!APIKeyStore.allows(key, "/topic/a"))
        #expect(!APIKeyStore.allows(key, "/"))
    }
}
