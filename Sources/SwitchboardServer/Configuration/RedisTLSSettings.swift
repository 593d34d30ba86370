import Configuration
import Redis

/// `redis.tls.*`: TLS to Redis, with a `rediss://` `redis.url`.
///
/// Every file is loaded while the configuration is read, so a missing or unreadable file, or a
/// certificate without its key, stops start-up with an error naming the key.
package struct RedisTLSSettings: Sendable, Equatable {
    /// `redis.tls.ca-file`: PEM CAs trusted to sign the server's certificate (system roots without).
    package var caFile: String?
    /// `redis.tls.cert-file` and `redis.tls.key-file`: the client certificate for mTLS.
    package var certificateFile: String?
    package var keyFile: String?
    /// `redis.tls.verify-server-name`: check that the server's certificate names the host.
    package var verifyServerName = true
    /// `redis.tls.server-name`: the name sent in SNI and expected in the certificate (default: the URL's host).
    package var serverName: String?

    package init() {}

    static let keys = ["ca-file", "cert-file", "key-file", "verify-server-name", "server-name"]

    /// Reads the `redis.tls` scope: the defaults with a `rediss://` URL and no keys, nil with a
    /// `redis://` URL (where any of the keys is an error).
    init?(reader: ConfigReader, urlUsesTLS: Bool) throws {
        caFile = reader.string(forKey: "ca-file")
        certificateFile = reader.string(forKey: "cert-file")
        keyFile = reader.string(forKey: "key-file")
        serverName = reader.string(forKey: "server-name")
        let verify = reader.bool(forKey: "verify-server-name")
        guard urlUsesTLS else {
            let set = zip(Self.keys, [caFile, certificateFile, keyFile, verify.map { "\($0)" }, serverName]).first { $0.1 != nil }
            if let set {
                throw SwitchboardConfiguration.Invalid(description: "redis.tls.\(set.0) is set but redis.url does not start with rediss:// (TLS)")
            }
            return nil
        }
        verifyServerName = verify ?? true
        switch (certificateFile, keyFile) {
        case (.some, nil): throw SwitchboardConfiguration.Invalid(description: "redis.tls.cert-file is set without redis.tls.key-file")
        case (nil, .some): throw SwitchboardConfiguration.Invalid(description: "redis.tls.key-file is set without redis.tls.cert-file")
        default: break
        }
        if let serverName, serverName.isEmpty {
            throw SwitchboardConfiguration.Invalid(description: "redis.tls.server-name must not be empty")
        }
        try Self.check("redis.tls.ca-file", caFile) { _ = try RedisTLSConfiguration.loadCertificates($0, setting: "redis.tls.ca-file") }
        try Self.check("redis.tls.cert-file", certificateFile) { _ = try RedisTLSConfiguration.loadCertificates($0, setting: "redis.tls.cert-file") }
        try Self.check("redis.tls.key-file", keyFile) { _ = try RedisTLSConfiguration.loadPrivateKey($0, setting: "redis.tls.key-file") }
        do {
            _ = try configuration.makeSSLContext()
        } catch {
            throw SwitchboardConfiguration.Invalid(description: "redis.tls: \(Self.detail(error))")
        }
    }

    private static func check(_ key: String, _ path: String?, _ load: (String) throws -> Void) throws {
        guard let path else { return }
        do { try load(path) } catch { throw SwitchboardConfiguration.Invalid(description: detail(error)) }
    }

    /// A ``RedisClientError``'s detail (it names the key and file), else the error.
    private static func detail(_ error: any Error) -> String {
        (error as? RedisClientError)?.detail ?? "\(error)"
    }

    /// The client's TLS settings.
    package var configuration: RedisTLSConfiguration {
        RedisTLSConfiguration(
            caFile: caFile, certificateFile: certificateFile, privateKeyFile: keyFile, verifyServerName: verifyServerName,
            serverName: serverName)
    }
}
