import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Redis

/// A throw-away `redis-server` on a free port with its own temporary directory, killed on
/// `stop()` or deinit: the one fixture of every test target that needs a real server
/// (`RedisClientIntegrationTests`, `SwitchboardKitTests`). With ``TLS`` the port speaks TLS only
/// (`--port 0 --tls-port`), and ``configuration``, ``url(_:database:)`` and ``client()`` use it.
package final class RedisServerProcess: @unchecked Sendable {
    /// TLS on the server's port.
    package struct TLS: Sendable {
        package var certificates: TestCertificates
        /// `--tls-auth-clients yes`: the server requires a client certificate signed by the CA (mTLS).
        package var requireClientCertificates: Bool
        /// Present the certificate for `redis.example.com` rather than `localhost`/`127.0.0.1`.
        package var certificateForOtherName: Bool

        package init(certificates: TestCertificates, requireClientCertificates: Bool = false, certificateForOtherName: Bool = false) {
            self.certificates = certificates
            self.requireClientCertificates = requireClientCertificates
            self.certificateForOtherName = certificateForOtherName
        }

        var arguments: [String] {
            [
                "--tls-cert-file", certificateForOtherName ? certificates.otherNameCertificateFile : certificates.serverCertificateFile,
                "--tls-key-file", certificateForOtherName ? certificates.otherNameKeyFile : certificates.serverKeyFile,
                "--tls-ca-cert-file", certificates.caFile, "--tls-auth-clients", requireClientCertificates ? "yes" : "no",
            ]
        }

        /// What a client needs: the CA, and the client certificate when the server requires one.
        package var clientConfiguration: RedisTLSConfiguration {
            var configuration = RedisTLSConfiguration(caFile: certificates.caFile)
            if requireClientCertificates {
                configuration.certificateFile = certificates.clientCertificateFile
                configuration.privateKeyFile = certificates.clientKeyFile
            }
            return configuration
        }
    }

    package static let executable: String? = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for dir in path.split(separator: ":") + ["/usr/bin", "/usr/local/bin"] {
            let candidate = "\(dir)/redis-server"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }()

    package static var isAvailable: Bool { executable != nil && ChildProcess.isSupported }

    package let port: Int
    package let directory: URL
    package let extraArguments: [String]
    package let tls: TLS?
    /// For a sentinel (``startSentinel(monitoring:masterName:quorum:downAfterMilliseconds:failoverTimeoutMilliseconds:)``):
    /// its initial configuration file (which the sentinel rewrites).
    package let sentinelConfiguration: String?
    private var process: ChildProcess?
    /// How many times the process was started.
    private var launches = 0

    private init(port: Int, extraArguments: [String], tls: TLS?, sentinelConfiguration: String? = nil) throws {
        self.port = port
        self.extraArguments = extraArguments
        self.tls = tls
        self.sentinelConfiguration = sentinelConfiguration
        self.directory = FileManager.default.temporaryDirectory.appendingPathComponent("redis-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: self.directory, withIntermediateDirectories: true)
    }

    /// Starts a server and waits until it answers PING.
    ///
    /// A port found free can be taken before the server binds it (by another test's server, or
    /// as the local port of an outgoing connection), and a cluster node also binds its bus port,
    /// port + 10,000: a server that exits at start is started again on another port.
    package static func start(_ extraArguments: [String] = [], tls: TLS? = nil) async throws -> RedisServerProcess {
        var attempt = 1
        while true {
            // A cluster node binds its bus port too, port + 10,000, after it listens on its port
            // (a taken bus port ends it then, after it looked started).
            let busOffset = extraArguments.contains("--cluster-enabled") ? 10_000 : nil
            let server = try RedisServerProcess(port: try await freePort(busOffset: busOffset), extraArguments: extraArguments, tls: tls)
            do {
                try await server.launch()
                return server
            } catch {
                let exited = !server.isRunning
                server.stop()
                guard exited, attempt < 5 else { throw error }
                attempt += 1
            }
        }
    }

    /// A replica of `primary` (`--replicaof`); waits until its link to the primary is up.
    /// With `tls` (the primary's), replication runs over TLS too.
    package static func startReplica(of primary: RedisServerProcess, password: String? = nil, tls: TLS? = nil) async throws -> RedisServerProcess {
        let auth = password.map { ["--masterauth", $0, "--requirepass", $0] } ?? []
        let replica = try await start(["--replicaof", "127.0.0.1", "\(primary.port)"] + auth + (tls == nil ? [] : ["--tls-replication", "yes"]), tls: tls)
        let connection = try await replica.connect { $0.password = password }
        defer { Task { await connection.close() } }
        let linked = try await eventually {
            let info = try await connection.execute(RawCommand("INFO", "replication"))
            return "\(info)".contains("master_link_status:up")
        }
        guard linked else { throw RedisClientError.connectTimeout }
        return replica
    }

    /// A sentinel (`redis-server <file> --sentinel`) monitoring `primary` as `masterName`, with short
    /// timeouts so that a failover takes about a second. `extraConfiguration`: more lines, e.g.
    /// `sentinel auth-pass` or `requirepass`.
    package static func startSentinel(
        monitoring primary: RedisServerProcess, masterName: String, quorum: Int = 1,
        downAfterMilliseconds: Int = 1000, failoverTimeoutMilliseconds: Int = 3000, extraConfiguration: String = "", tls: TLS? = nil
    ) async throws -> RedisServerProcess {
        let configuration = """
            sentinel monitor \(masterName) 127.0.0.1 \(primary.port) \(quorum)
            sentinel down-after-milliseconds \(masterName) \(downAfterMilliseconds)
            sentinel failover-timeout \(masterName) \(failoverTimeoutMilliseconds)
            sentinel parallel-syncs \(masterName) 1
            \(extraConfiguration)

            """
        let sentinel = try RedisServerProcess(port: try await freePort(), extraArguments: [], tls: tls, sentinelConfiguration: configuration)
        do {
            try await sentinel.launch()
        } catch {
            sentinel.stop()
            throw error
        }
        return sentinel
    }

    /// (Re)starts the server process on the same port. Started again, it tries for up to 10 s
    /// while its port is taken (as the local port of an outgoing connection, until it closes).
    package func launch() async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            do {
                try await self.launchOnce()
                self.launches += 1
                return
            } catch {
                guard self.launches > 0, !self.isRunning, ContinuousClock.now < deadline else { throw error }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    private func launchOnce() async throws {
        let arguments: [String]
        if let sentinelConfiguration {
            let file = self.directory.appendingPathComponent("sentinel.conf")
            if !FileManager.default.fileExists(atPath: file.path) { try sentinelConfiguration.write(to: file, atomically: true, encoding: .utf8) }
            let ports = self.tls.map { ["--port", "0", "--tls-port", "\(self.port)"] + $0.arguments + ["--tls-replication", "yes"] } ?? ["--port", "\(self.port)"]
            arguments = [file.path, "--sentinel"] + ports + ["--bind", "127.0.0.1", "--dir", self.directory.path] + self.extraArguments
        } else {
            arguments =
                (self.tls.map { ["--port", "0", "--tls-port", "\(self.port)"] + $0.arguments } ?? ["--port", "\(self.port)"])
                + [
                    "--bind", "127.0.0.1", "--dir", self.directory.path, "--save", "", "--appendonly", "no", "--daemonize", "no",
                ] + self.extraArguments
        }
        self.process = try ChildProcess.spawn(Self.executable!, arguments).process
        try await self.waitUntilReady()
    }

    /// Accepts TCP connections (for a TLS port too; a cluster node on its bus port as well,
    /// which it binds after its port). Fails at once when the process exits (a port in use).
    private func waitUntilReady() async throws {
        // A deadline, not a count of attempts: on a loaded machine a start (and each attempt)
        // takes longer.
        let deadline = ContinuousClock.now + .seconds(30)
        var ports = [self.port] + (self.extraArguments.contains("--cluster-enabled") ? [self.port + 10_000] : [])
        var lastError = "none"
        while ContinuousClock.now < deadline {
            guard self.isRunning else {
                throw RedisClientError.connectTimeout("redis-server on port \(self.port) exited at start (its port taken?)")
            }
            do {
                let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .connect(host: "127.0.0.1", port: ports[0]).get()
                try await channel.close()
                ports.removeFirst()
                if ports.isEmpty { return }
            } catch {
                lastError = "\(error)"
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        throw RedisClientError.connectTimeout(
            "redis-server on port \(ports[0]) (running: \(self.isRunning)) accepted no connection within 30 s; last: \(lastError)")
    }

    /// Whether the process runs (it was not killed).
    package var isRunning: Bool { self.process?.isRunning ?? false }

    /// Kills the server (SIGKILL) and waits for it to exit.
    package func kill() {
        guard let process = self.process else { return }
        process.send(SIGKILL)
        process.waitUntilExit()
        self.process = nil
    }

    /// Stops the process (SIGSTOP) without closing its sockets: it neither answers nor
    /// acknowledges replication until ``resume()``.
    package func pause() {
        guard let process = self.process else { return }
        process.send(SIGSTOP)
    }

    /// Lets a paused process go on (SIGCONT).
    package func resume() {
        guard let process = self.process else { return }
        process.send(SIGCONT)
    }

    /// Kills the server and removes its directory.
    package func stop() {
        self.kill()
        try? FileManager.default.removeItem(at: self.directory)
    }

    deinit { self.stop() }

    package var configuration: RedisConfiguration {
        var configuration = RedisConfiguration(host: "127.0.0.1", port: self.port)
        configuration.connectTimeout = .seconds(10)  // a TLS handshake on a loaded machine took more than 2 s
        configuration.commandTimeout = .seconds(5)
        configuration.tls = self.tls?.clientConfiguration
        return configuration
    }

    package func url(_ userInfo: String = "", database: Int? = nil) -> String {
        "\(self.tls == nil ? "redis" : "rediss")://\(userInfo)127.0.0.1:\(self.port)" + (database.map { "/\($0)" } ?? "")
    }

    package func connect(_ configure: (inout RedisConfiguration) -> Void = { _ in }) async throws -> RedisConnection {
        var configuration = self.configuration
        configure(&configuration)
        return try await RedisConnection.connect(configuration: configuration)
    }

    /// A started client (pub/sub enabled) that is connected.
    package func client(_ configure: (inout RedisConfiguration) -> Void = { _ in }) async throws -> RedisClient {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        var configuration = self.configuration
        configure(&configuration)
        let client = RedisClient(configuration: configuration, logger: logger)
        client.start()
        try await client.waitUntilConnected(timeout: .seconds(30))
        return client
    }

    /// A port free now, and not handed out before in this process (a test that kills its server
    /// starts it again on the same port, which another test's server must not have taken
    /// meanwhile), drawn below the kernel's ephemeral range (32768 and up by default), so that
    /// no outgoing connection takes it as its local port (as `tests/support/process.py` does).
    /// With `busOffset` (a cluster node's bus port), `port + busOffset` is free and below that
    /// range too.
    package static func freePort(busOffset: Int? = nil) async throws -> Int {
        for _ in 0..<500 {
            let port = Int.random(in: 20_000..<(32_000 - (busOffset ?? 0)))
            let ports = [port] + (busOffset.map { [port + $0] } ?? [])
            let taken = handedOut.withLockedValue { handed in
                guard ports.allSatisfy({ !handed.contains($0) }) else { return false }
                handed.formUnion(ports)
                return true
            }
            guard taken else { continue }
            var free = true
            for candidate in ports {
                guard
                    let channel = try? await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                        .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
                        .bind(host: "127.0.0.1", port: candidate).get()
                else {
                    free = false
                    break
                }
                try await channel.close()
            }
            if free { return port }
        }
        throw RedisClientError.connectTimeout
    }

    private static let handedOut = NIOLockedValueBox<Set<Int>>([])
}

/// Polls `condition` until it holds or `timeout` elapses (30 s unless told: the conditions
/// waited for involve reconnects and TLS handshakes, slow on a loaded machine; only a failing
/// run waits that long).
package func eventually(timeout: Duration = .seconds(30), _ condition: @Sendable () async throws -> Bool) async throws -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}

/// Reads the next message from a subscription, with a timeout.
package func nextMessage(_ subscription: RedisSubscription, timeout: Duration = .seconds(15)) async throws -> RedisPubSubMessage? {
    try await withThrowingTaskGroup(of: RedisPubSubMessage?.self) { group in
        group.addTask {
            var iterator = subscription.makeAsyncIterator()
            return await iterator.next()
        }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        let first = try await group.next()!
        group.cancelAll()
        return first
    }
}
