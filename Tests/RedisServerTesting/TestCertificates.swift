import Foundation

/// A throw-away PKI made with `openssl` in a temporary directory: a CA, a server certificate for
/// `localhost` and `127.0.0.1`, a server certificate for `redis.example.com` only (for "name
/// mismatch" tests) and a client certificate signed by it, and a second, unrelated CA (for
/// "wrong CA" tests). EC P-256 keys; valid for two days. Removed on deinit.
package final class TestCertificates: Sendable {
    package static let openssl: String? = ["/usr/bin/openssl", "/usr/local/bin/openssl"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    package let directory: URL

    package init() throws {
        guard let openssl = Self.openssl else { throw Failure(description: "openssl not found") }
        self.directory = FileManager.default.temporaryDirectory.appendingPathComponent("redis-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: self.directory, withIntermediateDirectories: true)
        let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        func run(_ arguments: [String]) throws {
            let status = try ChildProcess.spawn(openssl, arguments, directory: self.directory.path).process.waitUntilExit()
            guard status == 0 else {
                throw Failure(description: "openssl \(arguments.joined(separator: " ")) exited with \(status)")
            }
        }
        for ca in ["ca", "other-ca"] {
            try run(["req", "-x509"] + key + ["-days", "2", "-subj", "/CN=Switchboard test \(ca)", "-keyout", "\(ca).key", "-out", "\(ca).pem"])
        }
        let leaves = [
            ("server", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
            ("client", "/CN=switchboard-client", "extendedKeyUsage=clientAuth\n"),
            ("other-name", "/CN=redis.example.com", "subjectAltName=DNS:redis.example.com\nextendedKeyUsage=serverAuth\n"),
        ]
        for (name, subject, extensions) in leaves {
            try extensions.write(to: self.directory.appendingPathComponent("\(name).ext"), atomically: true, encoding: .utf8)
            try run(["req"] + key + ["-subj", subject, "-keyout", "\(name).key", "-out", "\(name).csr"])
            try run([
                "x509", "-req", "-in", "\(name).csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
                "-extfile", "\(name).ext", "-out", "\(name).pem",
            ])
        }
    }

    deinit { try? FileManager.default.removeItem(at: self.directory) }

    private func path(_ name: String) -> String { self.directory.appendingPathComponent(name).path }

    /// The CA that signed the server and client certificates.
    package var caFile: String { self.path("ca.pem") }
    /// A CA that signed nothing here.
    package var otherCAFile: String { self.path("other-ca.pem") }
    package var serverCertificateFile: String { self.path("server.pem") }
    package var serverKeyFile: String { self.path("server.key") }
    /// Names `redis.example.com` only (neither `localhost` nor `127.0.0.1`).
    package var otherNameCertificateFile: String { self.path("other-name.pem") }
    package var otherNameKeyFile: String { self.path("other-name.key") }
    package var clientCertificateFile: String { self.path("client.pem") }
    package var clientKeyFile: String { self.path("client.key") }

    package struct Failure: Error, CustomStringConvertible {
        package var description: String
    }
}
