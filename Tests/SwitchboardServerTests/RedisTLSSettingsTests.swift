import Foundation
import RedisServerTesting
import Testing

@testable import SwitchboardServer

/// `redis.tls.*`: read with a `rediss://` URL; a bad combination or an unreadable file stops
/// start-up with an error naming the key.
@Suite struct RedisTLSSettingsTests {
    func loadError(_ flags: [String]) async -> String? { await ConfigurationCheckTests().loadError(flags) }

    /// A throw-away CA certificate and key made with `openssl`, or nil without it.
    static func makeCertificate() throws -> (directory: URL, certificate: String, key: String)? {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl") else { return nil }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("redis-tls-settings-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let arguments = [
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test", "-keyout", "key.pem", "-out", "cert.pem",
        ]
        guard try ChildProcess.spawn("/usr/bin/openssl", arguments, directory: directory.path).process.waitUntilExit() == 0 else { return nil }
        return (directory, directory.appendingPathComponent("cert.pem").path, directory.appendingPathComponent("key.pem").path)
    }

    @Test func rejectsBadCombinationsNamingTheKey() async throws {
        #expect(
            await loadError(["redis.url=redis://127.0.0.1:6379", "redis.tls.ca-file=/x.pem"])
                == "redis.tls.ca-file is set but redis.url does not start with rediss:// (TLS)")
        #expect(
            await loadError(["redis.url=rediss://127.0.0.1:6379", "redis.tls.cert-file=/x.pem"])
                == "redis.tls.cert-file is set without redis.tls.key-file")
        #expect(
            await loadError(["redis.url=rediss://127.0.0.1:6379", "redis.tls.key-file=/x.pem"])
                == "redis.tls.key-file is set without redis.tls.cert-file")
        let missing = await loadError(["redis.url=rediss://127.0.0.1:6379", "redis.tls.ca-file=/nonexistent/ca.pem"])
        #expect(missing?.hasPrefix("redis.tls.ca-file '/nonexistent/ca.pem' cannot be read as PEM certificates") == true)
        #expect(await loadError(["redis.url=rediss://127.0.0.1:6379", "redis.tls.verify-server-name=maybe"])?.contains("redis.tls.verify-server-name") == true)
    }

    @Test func readsTheFilesAndDefaults() async throws {
        let plain = try await ConfigurationCheckTests().load(["redis.url=rediss://127.0.0.1:6379"])
        #expect(plain.configuration.redis?.tls == RedisTLSSettings())
        #expect(try await ConfigurationCheckTests().load(["redis.url=redis://127.0.0.1:6379"]).configuration.redis?.tls == nil)
        guard let (directory, certificate, key) = try Self.makeCertificate() else { return }
        defer { try? FileManager.default.removeItem(at: directory) }
        let loaded = try await ConfigurationCheckTests().load([
            "redis.url=rediss://u:p@127.0.0.1:6379", "redis.tls.ca-file=\(certificate)", "redis.tls.cert-file=\(certificate)",
            "redis.tls.key-file=\(key)", "redis.tls.verify-server-name=false", "redis.tls.server-name=redis.internal",
        ])
        let tls = try #require(loaded.configuration.redis?.tls?.configuration)
        #expect(tls.caFile == certificate && tls.certificateFile == certificate && tls.privateKeyFile == key)
        #expect(!tls.verifyServerName && tls.serverName == "redis.internal")
        // A certificate file given as the key.
        let wrongKey = await loadError(["redis.url=rediss://127.0.0.1:6379", "redis.tls.cert-file=\(certificate)", "redis.tls.key-file=\(certificate)"])
        #expect(wrongKey?.hasPrefix("redis.tls.key-file '\(certificate)' cannot be read as a PEM private key") == true)
    }
}
