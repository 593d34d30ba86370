import Foundation
import Logging
import NIOCore
import NIOPosix
import RedisClient
import STOMPCodec
import SwitchboardCore
import SwitchboardKit
import SwitchboardRedis

/// A throw-away `redis-server` on a free port with its own temporary directory, killed on `stop()`/deinit.
final class KitRedisServer: @unchecked Sendable {
    static let executable: String? = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for dir in path.split(separator: ":") + ["/usr/bin", "/usr/local/bin"] {
            let candidate = "\(dir)/redis-server"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }()

    static var isAvailable: Bool { executable != nil }

    let port: Int
    let directory: URL
    private var process: Process?

    private init(port: Int) throws {
        self.port = port
        self.directory = FileManager.default.temporaryDirectory.appendingPathComponent("kit-redis-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: self.directory, withIntermediateDirectories: true)
    }

    /// Starts a server and waits until it accepts connections.
    static func start() async throws -> KitRedisServer {
        let server = try KitRedisServer(port: try await freePort())
        do {
            try await server.launch()
        } catch {
            server.stop()
            throw error
        }
        return server
    }

    /// (Re)starts the server process on the same port, with an empty dataset.
    func launch() async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.executable!)
        process.arguments = [
            "--port", "\(self.port)", "--bind", "127.0.0.1", "--dir", self.directory.path,
            "--save", "", "--appendonly", "no", "--daemonize", "no",
        ]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        for _ in 0..<250 {
            if let channel = try? await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(host: "127.0.0.1", port: self.port).get()
            {
                try? await channel.close()
                return
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw RedisClientError.connectTimeout
    }

    /// Kills the server process (SIGKILL) and waits for it to exit.
    func kill() {
        guard let process = self.process else { return }
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        self.process = nil
    }

    /// Kills the server (SIGKILL) and removes its directory.
    func stop() {
        self.kill()
        try? FileManager.default.removeItem(at: self.directory)
    }

    deinit { self.stop() }

    var configuration: RedisConfiguration {
        var configuration = RedisConfiguration(host: "127.0.0.1", port: self.port)
        configuration.connectTimeout = .seconds(2)
        configuration.commandTimeout = .seconds(5)
        return configuration
    }

    /// A started client (pub/sub enabled) that is connected.
    func client() async throws -> RedisClient {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let client = RedisClient(configuration: self.configuration, logger: logger)
        client.start()
        try await client.waitUntilConnected(timeout: .seconds(5))
        return client
    }

    private static func freePort() async throws -> Int {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .bind(host: "127.0.0.1", port: 0).get()
        let port = channel.localAddress!.port!
        try await channel.close()
        return port
    }
}

/// Polls `condition` until it holds or `timeout` elapses.
func eventually(timeout: Duration = .seconds(10), _ condition: @Sendable () async throws -> Bool) async throws -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while clock.now < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}

/// Reads the next message from a subscription, or `nil` after `timeout`.
func nextMessage(_ subscription: RedisSubscription, timeout: Duration = .seconds(5)) async throws -> RedisPubSubMessage? {
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

/// The quiet logger used by consumers under test.
let quietLogger: Logger = {
    var logger = Logger(label: "kit-test")
    logger.logLevel = .critical
    return logger
}()

/// Test configuration: short block and claim timings.
func testConfiguration(
    stream: String = "OUT", group: String = "svc", name: String = "c-\(UUID().uuidString.prefix(8))",
    claimMinIdle: Duration = .seconds(60), claimInterval: Duration = .seconds(60),
    retryDelay: Duration = .milliseconds(100), maxDeliveries: Int = 5, batchSize: Int = 16
) -> StreamConsumerConfiguration {
    StreamConsumerConfiguration(
        stream: stream, group: group, consumerName: name, batchSize: batchSize, blockTime: .milliseconds(500),
        claimMinIdle: claimMinIdle, claimInterval: claimInterval, retryDelay: retryDelay, maxDeliveries: maxDeliveries
    )
}

/// XADDs an entry with exactly the fields the gateway's stream route writes.
@discardableResult
func addGatewayEntry(
    _ client: RedisClient, stream: String = "OUT", destination: String = "/app/greet", body: String,
    session: String = "sess-1", user: String? = "alice", instance: String = "gw-1", headers: STOMPHeaders = [:]
) async throws -> String {
    let message = AppMessage(
        destination: destination, body: ByteBuffer(string: body), headers: headers, contentType: "text/plain",
        sessionID: session, user: user, instanceID: instance, timestamp: 1_700_000_000_123
    )
    return try await client.execute(XADD(key: stream, fields: RedisStreamRoute.fields(for: message)))
}

/// Number of entries pending in `group` (0 if the group does not exist).
func pendingCount(_ client: RedisClient, stream: String = "OUT", group: String = "svc") async throws -> Int {
    try await client.execute(XPENDING(key: stream, group: group)).count
}

/// Runs `consumer` in a task; returns the task so the test can await its end.
func start(_ consumer: StreamConsumer, _ handler: @escaping StreamConsumer.Handler) -> Task<Void, any Error> {
    Task { try await consumer.run(handler) }
}

/// Waits until `consumer` has created its group and is reading.
func waitUntilReading(_ consumer: StreamConsumer, _ client: RedisClient) async throws -> Bool {
    let stream = consumer.configuration.stream
    let group = consumer.configuration.group
    return try await eventually {
        guard consumer.statistics.connects >= 1 else { return false }
        return (try? await client.execute(XPENDING(key: stream, group: group))) != nil
    }
}

/// A test error.
struct Boom: Error, CustomStringConvertible {
    var description: String
}
