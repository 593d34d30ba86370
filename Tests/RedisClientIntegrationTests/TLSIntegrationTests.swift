import Foundation
import NIOCore
import RedisServerTesting
import Testing

@testable import Redis

/// TLS (`rediss://`) and ACL users against a real TLS-only redis-server, with certificates made
/// by `openssl` in a temporary directory.
@Suite(
    "Real redis-server over TLS",
    .enabled(if: RedisServerProcess.isAvailable && TestCertificates.openssl != nil, "needs redis-server, openssl and glibc 2.34+")
)
struct TLSIntegrationTests {
    /// The detail of the ``RedisClientError`` thrown by `body`, or a note of what happened instead.
    func tlsFailure(_ body: () async throws -> Void) async -> (error: RedisClientError?, text: String) {
        do {
            try await body()
            return (nil, "no error")
        } catch {
            return (error as? RedisClientError, "\(error)")
        }
    }

    @Test func commandsAndPubSubOverTLS() async throws {
        let server = try await RedisServerProcess.start(tls: .init(certificates: try TestCertificates()))
        let connection = try await server.connect()
        #expect(connection.protocolVersion == 3)
        #expect(try await connection.execute(PING()) == "PONG")
        #expect(try await connection.execute(SET("k", value: "over tls")) != nil)
        #expect(try await connection.execute(GET("k")) == ByteBuffer(string: "over tls"))
        await connection.close()

        // A client from a rediss:// URL (by name: SNI and the certificate's DNS name `localhost`).
        var configuration = try RedisConfiguration(url: "rediss://localhost:\(server.port)")
        configuration.tls?.caFile = server.tls?.certificates.caFile
        configuration.connectTimeout = .seconds(10)
        let client = RedisClient(configuration: configuration)
        client.start()
        try await client.waitUntilConnected(timeout: .seconds(30))
        let subscription = try await client.subscribe(to: ["news"])
        #expect(try await client.execute(PUBLISH(channel: "news", message: "hello")) == 1)
        let message = try #require(try await nextMessage(subscription))
        #expect(message.channel == "news" && String(buffer: message.payload) == "hello")
        await subscription.unsubscribe()
        await client.shutdown()
    }

    /// `kill -9` of a TLS server while a command waits for its reply: the TLS layer reports an
    /// unclean shutdown (no `close_notify`), and the command fails as lost, outcome unknown,
    /// as over plain TCP. It failed with the TLS error itself, which callers took for "not
    /// run" (a publish answered 503, retried by its backend: a duplicate).
    @Test func aCommandInFlightWhenTheServerDiesFailsAsLost() async throws {
        let server = try await RedisServerProcess.start(tls: .init(certificates: try TestCertificates()))
        let connection = try await server.connect()
        let observer = try await server.connect()
        let blocked = connection.send(RawCommand("BLPOP", "nothing", "0"))
        let waiting = try await eventually(timeout: .seconds(10)) {
            let reply = try await observer.execute(RawCommand("INFO", "clients"))
            guard case .verbatimString(let text) = reply.value else { return false }
            return String(buffer: text).contains("blocked_clients:1")
        }
        #expect(waiting, "the server holds the BLPOP")
        server.kill()
        do {
            _ = try await blocked.get()
            Issue.record("a reply came")
        } catch {
            #expect((error as? RedisClientError) == .connectionClosed, "\(error)")
        }
        await observer.close()
        await connection.close()
    }

    @Test func mutualTLS() async throws {
        let server = try await RedisServerProcess.start(tls: .init(certificates: try TestCertificates(), requireClientCertificates: true))
        // With the client certificate (the fixture's configuration has it).
        let connection = try await server.connect()
        #expect(try await connection.execute(PING()) == "PONG")
        await connection.close()
        // Without it: refused, and the error says why.
        let failure = await tlsFailure {
            _ = try await server.connect {
                $0.tls?.certificateFile = nil
                $0.tls?.privateKeyFile = nil
            }
        }
        #expect(failure.error == .tlsHandshakeFailed, "\(failure.text)")
        #expect(failure.text.contains("client certificate"), "\(failure.text)")
        // A certificate without its key is a configuration error before any connection.
        let halfConfigured = await tlsFailure { _ = try await server.connect { $0.tls?.privateKeyFile = nil } }
        #expect(halfConfigured.error == .tlsConfiguration && halfConfigured.text.contains("certificateFile is set without privateKeyFile"))
    }

    @Test func wrongCAIsRefused() async throws {
        let certificates = try TestCertificates()
        let server = try await RedisServerProcess.start(tls: .init(certificates: certificates))
        let failure = await tlsFailure { _ = try await server.connect { $0.tls?.caFile = certificates.otherCAFile } }
        #expect(failure.error == .tlsHandshakeFailed, "\(failure.text)")
        #expect(failure.text.contains("not signed by a trusted CA"), "\(failure.text)")
        // No CA file: the system's trust roots do not know the test CA either.
        let system = await tlsFailure { _ = try await server.connect { $0.tls?.caFile = nil } }
        #expect(system.error == .tlsHandshakeFailed, "\(system.text)")
        // Plain TCP to a TLS port, and TLS to a plain port, fail too (not hang).
        let plainToTLS = await tlsFailure { _ = try await server.connect { $0.tls = nil } }
        #expect(plainToTLS.error != nil || plainToTLS.text != "no error")
        let plainServer = try await RedisServerProcess.start()
        let tlsToPlain = await tlsFailure {
            _ = try await plainServer.connect {
                $0.tls = RedisTLSConfiguration(caFile: certificates.caFile)
                $0.connectTimeout = .milliseconds(500)
            }
        }
        // The server answers the ClientHello as a command (a TLS error), or, on a loaded machine,
        // not within the 500 ms connect timeout: either way it fails, and a TLS error says so.
        // (CI failed once on the second: the timeout's text does not name TLS.)
        #expect(tlsToPlain.error == .tlsHandshakeFailed || tlsToPlain.error == .connectTimeout, "\(tlsToPlain.text)")
        if tlsToPlain.error == .tlsHandshakeFailed { #expect(tlsToPlain.text.contains("TLS"), "\(tlsToPlain.text)") }
        // An unreadable CA file.
        let missing = await tlsFailure { _ = try await server.connect { $0.tls?.caFile = "/nonexistent/ca.pem" } }
        #expect(missing.error == .tlsConfiguration && missing.text.contains("caFile '/nonexistent/ca.pem'"), "\(missing.text)")
    }

    @Test func serverNameMismatchFailsUnlessVerificationIsOff() async throws {
        let certificates = try TestCertificates()
        // This certificate names redis.example.com only, not 127.0.0.1 (nor localhost).
        let server = try await RedisServerProcess.start(tls: .init(certificates: certificates, certificateForOtherName: true))
        let failure = await tlsFailure { _ = try await server.connect() }
        #expect(failure.error == .tlsHandshakeFailed, "\(failure.text)")
        #expect(failure.text.contains("does not name '127.0.0.1'"), "\(failure.text)")
        let byName = await tlsFailure { _ = try await server.connect { $0.tls?.serverName = "localhost" } }
        #expect(byName.text.contains("does not name 'localhost'"), "\(byName.text)")
        // The expected name (SNI too) for a host whose certificate has another name.
        let named = try await server.connect { $0.tls?.serverName = "redis.example.com" }
        #expect(try await named.execute(PING()) == "PONG")
        await named.close()
        let unverified = try await server.connect { $0.tls?.verifyServerName = false }
        #expect(try await unverified.execute(PING()) == "PONG")
        await unverified.close()
        // Turning the name check off still verifies the chain.
        let wrongCA = await tlsFailure {
            _ = try await server.connect {
                $0.tls?.verifyServerName = false
                $0.tls?.caFile = certificates.otherCAFile
            }
        }
        #expect(wrongCA.error == .tlsHandshakeFailed, "\(wrongCA.text)")
    }

    @Test func aclUserOverTLS() async throws {
        let server = try await RedisServerProcess.start(tls: .init(certificates: try TestCertificates(), requireClientCertificates: true))
        let admin = try await server.connect()
        _ = try await admin.execute(RawCommand("ACL", "SETUSER", "app", "on", ">app-secret", "~*", "&*", "+@all"))
        await admin.close()
        var configuration = try RedisConfiguration(url: server.url("app:app-secret@"))
        #expect(configuration.tls != nil && configuration.username == "app")
        configuration.tls = server.tls?.clientConfiguration
        configuration.connectTimeout = .seconds(10)  // a TLS handshake on a loaded machine takes seconds
        let connection = try await RedisConnection.connect(configuration: configuration)
        #expect(connection.protocolVersion == 3)
        #expect(try String(fromRESP: try await connection.sendRaw(RawCommand("ACL", "WHOAMI")).get()) == "app")
        await connection.close()
        // A wrong password: the server's WRONGPASS, not a TLS error.
        configuration.password = "wrong"
        await #expect {
            _ = try await RedisConnection.connect(configuration: configuration)
        } throws: {
            ($0 as? RedisServerError)?.code == "WRONGPASS"
        }
        // The long-lived client keeps retrying, and tells why.
        let client = RedisClient(configuration: configuration)
        client.start()
        #expect(try await eventually { client.lastConnectError(.commands)?.contains("WRONGPASS") == true })
        await client.shutdown()
    }
}
