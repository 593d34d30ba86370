import NIOCore
import NIOSSL

/// TLS settings of a connection (`rediss://`).
///
/// Modelled on valkey-swift's `ValkeyConnectionConfiguration.TLS`, but holding file paths rather
/// than an `NIOSSLContext`, so that ``RedisConfiguration`` stays `Hashable` and a reconnect picks up
/// rotated certificates: the context is built (``makeSSLContext()``) each time a connection is made.
///
/// The server's certificate is always verified against ``caFile`` (or the system's trust roots
/// without one). Its name is checked against ``serverName``, or the host connected to, unless
/// ``verifyServerName`` is `false`. SNI carries the same name (not sent for an IP address host;
/// the certificate must then name that IP address).
public struct RedisTLSConfiguration: Sendable, Hashable {
    /// PEM file of the certificate authorities trusted to sign the server's certificate; `nil`: the
    /// system's trust roots.
    public var caFile: String?
    /// PEM certificate chain presented to servers that require client certificates (mTLS); set
    /// together with ``privateKeyFile``.
    public var certificateFile: String?
    /// PEM private key of ``certificateFile``.
    public var privateKeyFile: String?
    /// Check that the server's certificate names the host (on by default). Turning it off still
    /// verifies the certificate chain; it only accepts a certificate issued for another name.
    public var verifyServerName: Bool
    /// The name sent in SNI and expected in the server's certificate; `nil`: the host connected to.
    public var serverName: String?

    public init(
        caFile: String? = nil,
        certificateFile: String? = nil,
        privateKeyFile: String? = nil,
        verifyServerName: Bool = true,
        serverName: String? = nil
    ) {
        self.caFile = caFile
        self.certificateFile = certificateFile
        self.privateKeyFile = privateKeyFile
        self.verifyServerName = verifyServerName
        self.serverName = serverName
    }

    /// Loads the files and builds the context.
    ///
    /// - Throws: ``RedisClientError/tlsConfiguration`` naming the setting at fault: a certificate
    ///   without its key (or the reverse), or a file that cannot be read or parsed.
    public func makeSSLContext() throws -> NIOSSLContext {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = self.verifyServerName ? .fullVerification : .noHostnameVerification
        if let caFile = self.caFile {
            tls.trustRoots = .certificates(try Self.loadCertificates(caFile, setting: "caFile"))
        }
        switch (self.certificateFile, self.privateKeyFile) {
        case (nil, nil):
            break
        case (let certificateFile?, let privateKeyFile?):
            tls.certificateChain = try Self.loadCertificates(certificateFile, setting: "certificateFile").map { .certificate($0) }
            tls.privateKey = .privateKey(try Self.loadPrivateKey(privateKeyFile, setting: "privateKeyFile"))
        case (.some, nil):
            throw RedisClientError.tlsConfiguration("certificateFile is set without privateKeyFile")
        case (nil, .some):
            throw RedisClientError.tlsConfiguration("privateKeyFile is set without certificateFile")
        }
        do {
            return try NIOSSLContext(configuration: tls)
        } catch {
            throw RedisClientError.tlsConfiguration("cannot build the TLS context (does the private key match the certificate?): \(error)")
        }
    }

    /// The SNI name for a connection to `host`: ``serverName`` or `host`, `nil` for an IP address.
    func sniHostname(host: String) -> String? {
        let name = self.serverName ?? host
        if (try? SocketAddress(ipAddress: name, port: 0)) != nil { return nil }
        return name
    }

    /// Reads the PEM certificates of `path` (at least one).
    ///
    /// - Throws: ``RedisClientError/tlsConfiguration`` naming `setting` and the file.
    public static func loadCertificates(_ path: String, setting: String) throws -> [NIOSSLCertificate] {
        let certificates: [NIOSSLCertificate]
        do {
            certificates = try NIOSSLCertificate.fromPEMFile(path)
        } catch {
            throw RedisClientError.tlsConfiguration("\(setting) '\(path)' cannot be read as PEM certificates: \(error)")
        }
        guard !certificates.isEmpty else {
            throw RedisClientError.tlsConfiguration("\(setting) '\(path)' holds no PEM certificate")
        }
        return certificates
    }

    /// Reads the PEM private key of `path`.
    ///
    /// - Throws: ``RedisClientError/tlsConfiguration`` naming `setting` and the file.
    public static func loadPrivateKey(_ path: String, setting: String) throws -> NIOSSLPrivateKey {
        do {
            return try NIOSSLPrivateKey(file: path, format: .pem)
        } catch {
            throw RedisClientError.tlsConfiguration("\(setting) '\(path)' cannot be read as a PEM private key: \(error)")
        }
    }

    /// Wraps a failure of the TLS layer on a connection to `host:port` in
    /// ``RedisClientError/tlsHandshakeFailed`` with a likely cause; other errors are returned as they are.
    static func describeFailure(_ error: any Error, host: String, port: Int, configuration: RedisTLSConfiguration) -> any Error {
        let text = "\(error)"
        let cause: String
        switch error {
        case let extra as NIOSSLExtraError where extra == .failedToValidateHostname:
            cause =
                "the server's certificate does not name '\(configuration.serverName ?? host)'"
                + " (set the expected serverName, or turn verifyServerName off)"
        case is NIOSSLError, is BoringSSLError, is NIOSSLExtraError:
            if text.contains("CERTIFICATE_VERIFY_FAILED") {
                cause = "the server's certificate is not signed by a trusted CA (caFile)"
            } else if text.contains("CERTIFICATE_REQUIRED") || text.contains("HANDSHAKE_FAILURE") {
                cause = "the server refused the handshake; does it require a client certificate (certificateFile, privateKeyFile)?"
            } else if text.contains("WRONG_VERSION_NUMBER") || text.contains("PACKET_LENGTH_TOO_LONG") {
                cause = "the server does not speak TLS on this port"
            } else {
                cause = "TLS error"
            }
        default:
            return error
        }
        return RedisClientError.tlsHandshakeFailed("TLS with \(host):\(port) failed: \(cause): \(text)")
    }
}
