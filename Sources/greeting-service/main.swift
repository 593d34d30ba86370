import ArgumentParser
import Dispatch
import Logging
import Redis
import STOMPCodec
import SwitchboardKit
import SwitchboardWire

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An example backend for Switchboard: answers `/app/greet` messages with `Hello, <body>!`.
///
/// Reads the gateway's outbound stream in a consumer group (run several replicas: each message
/// is handled by one of them), publishes the answer on the reply destination with
/// `x-processed-by`, `x-request-id` and (if the SEND had one) `x-msg-id`, and acknowledges the
/// entry afterwards. Prints `processed <entry-id> by <consumer>` to stderr per message.
@main
struct GreetingService: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "greeting-service",
        abstract: "Answers Switchboard /app/greet messages from a Redis stream with greetings."
    )

    @Option(help: "Redis URL. With --redis-cluster-nodes only its scheme (rediss:// for TLS), user and password are used.")
    var redisURL = "redis://127.0.0.1:6379"

    @Option(help: "Redis Cluster seed nodes, host:port,host:port (as the gateway's redis.cluster.nodes).")
    var redisClusterNodes: String?

    @Option(name: .customLong("redis-tls-ca-file"), help: "With rediss://: PEM file of the CAs trusted to sign the Redis servers' certificates (default: the system's).")
    var redisTLSCAFile: String?

    @Option(name: .customLong("redis-tls-cert-file"), help: "With rediss://: PEM client certificate for servers that require one (mTLS); with --redis-tls-key-file.")
    var redisTLSCertFile: String?

    @Option(name: .customLong("redis-tls-key-file"), help: "With rediss://: the PEM private key of --redis-tls-cert-file.")
    var redisTLSKeyFile: String?

    @Option(help: "The outbound stream the gateway writes /app/greet messages to.")
    var stream = "GREETING_CHANNEL_OUTBOUND"

    @Option(help: "The consumer group shared by all replicas.")
    var group = "greeting-service"

    @Option(help: "This replica's consumer name (default: <hostname>-<pid>-<random>).")
    var consumer: String?

    @Option(help: "Handle entries for this destination; others are acknowledged and skipped ('*' handles all).")
    var destination = "/app/greet"

    @Option(help: "Where the greeting is published.")
    var replyDestination = "/topic/greetings"

    @Flag(help: "Answer only the sender's session instead of every subscriber of the reply destination.")
    var replyToSender = false

    @Flag(help: "Redis runs with appendonly yes and appendfsync always: as the gateway's redis.appendfsync-always.")
    var appendfsyncAlways = false

    @Option(help: "Take over entries idle this long (ms) from crashed replicas; also the longest a single message may take before another replica may process it too.")
    var claimMinIdleMs = 5000

    @Option(help: "Scan for entries to take over this often (ms).")
    var claimIntervalMs = 1000

    @Option(help: "Sleep this long (ms) before handling each message (for crash tests).")
    var processingDelayMs = 0

    @Option(help: "Attempts per message before it goes to the dead-letter stream (<stream>:dead).")
    var maxDeliveries = 5

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"

    @Option(help: "Gateway Redis channel prefix.")
    var channelPrefix = "switchboard:"

    @Option(help: "Also log presence changes, read from the gateway's lifecycle events (events.enabled) in this consumer group.")
    var presenceGroup: String?

    @Option(help: "The gateway's events stream (events.stream).")
    var eventsStream = "switchboard:events"

    func validate() throws {
        guard Logger.Level(rawValue: self.logLevel) != nil else { throw ValidationError("unknown log level '\(self.logLevel)'") }
        guard self.maxDeliveries >= 1 else { throw ValidationError("--max-deliveries must be at least 1") }
        guard self.claimMinIdleMs >= 1, self.claimIntervalMs >= 1, self.processingDelayMs >= 0 else {
            throw ValidationError("durations must be positive")
        }
        if self.redisClusterNodes != nil, self.presenceGroup != nil {
            throw ValidationError(
                "--presence-group is not available with --redis-cluster-nodes: the gateway's lifecycle events (events.enabled) need one Redis")
        }
    }

    /// The Redis of the gateway: one server, or a cluster from `--redis-cluster-nodes`.
    func makeRedis(logger: Logger) async throws -> GatewayRedis {
        var configuration = try RedisConfiguration(url: self.redisURL)
        if self.redisTLSCAFile != nil || self.redisTLSCertFile != nil || self.redisTLSKeyFile != nil {
            guard configuration.tls != nil else { throw ValidationError("--redis-tls-* options need a rediss:// --redis-url") }
            guard (self.redisTLSCertFile == nil) == (self.redisTLSKeyFile == nil) else {
                throw ValidationError("--redis-tls-cert-file and --redis-tls-key-file go together")
            }
            configuration.tls?.caFile = self.redisTLSCAFile
            configuration.tls?.certificateFile = self.redisTLSCertFile
            configuration.tls?.privateKeyFile = self.redisTLSKeyFile
        }
        guard let nodes = self.redisClusterNodes else {
            let client = RedisClient(configuration: configuration, logger: logger, enableSubscriptions: false)
            client.start()
            return .single(client)
        }
        let seeds = try nodes.split(separator: ",").map { node in
            do { return try RedisClusterConfiguration.parseNode(node.trimmingCharacters(in: .whitespaces)) } catch {
                throw ValidationError("--redis-cluster-nodes: '\(node)' is not host:port")
            }
        }
        guard !seeds.isEmpty else { throw ValidationError("--redis-cluster-nodes: no node given") }
        configuration.cluster = RedisClusterConfiguration(nodes: seeds)
        let client: RedisClusterClient
        do {
            client = try RedisClusterClient(configuration: configuration, logger: logger)
        } catch {
            throw ValidationError("--redis-cluster-nodes: \(error)")
        }
        client.start()
        return .cluster(client)
    }

    func run() async throws {
        let level = Logger.Level(rawValue: self.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "greeting-service")
        let redis = try await self.makeRedis(logger: logger)

        var configuration = StreamConsumerConfiguration(
            stream: self.stream,
            group: self.group,
            claimMinIdle: .milliseconds(self.claimMinIdleMs),
            claimInterval: .milliseconds(self.claimIntervalMs),
            maxDeliveries: self.maxDeliveries,
            channelNaming: .init(prefix: self.channelPrefix)
        )
        if let consumer = self.consumer { configuration.consumerName = consumer }
        configuration.appendfsyncAlways = self.appendfsyncAlways
        let consumer = StreamConsumer(redis: redis, configuration: configuration, logger: logger)
        let presence = redis.singleClient.flatMap { client in self.presenceGroup.map { (client, $0) } }.map { client, group in
            var events = StreamConsumerConfiguration(stream: self.eventsStream, group: group, channelNaming: .init(prefix: self.channelPrefix))
            events.consumerName = configuration.consumerName
            return LifecycleEventConsumer(client: client, configuration: events, logger: logger)
        }

        let signals = Self.onTermination { signal in
            logger.info("signal received; stopping", metadata: ["signal": "\(signal)"])
            consumer.stop()
            presence?.stop()
        }
        defer { signals.forEach { $0.cancel() } }

        let name = consumer.name
        let wanted = self.destination
        let replyDestination = self.replyDestination
        let replyToSender = self.replyToSender
        let delay = self.processingDelayMs
        logger.info("greeting-service started", metadata: ["consumer": "\(name)", "stream": "\(self.stream)", "group": "\(self.group)"])

        let presenceTask = presence.map { presence in
            Task {
                try await presence.run { event in
                    switch event.type {
                    case .userOnline: Self.printLine("presence: \(event.user ?? "?") online (\(event.instance ?? "?"))")
                    case .userOffline: Self.printLine("presence: \(event.user ?? "?") offline (\(event.reason?.rawValue ?? "?"))")
                    case .presenceReset: Self.printLine("presence: reset (the events before are gone: forget them)")
                    default: break
                    }
                }
            }
        }
        try await consumer.run { message in
            guard wanted == "*" || message.destination == wanted else {
                logger.debug("skipping entry for another destination", metadata: ["entry": "\(message.id)", "destination": "\(message.destination)"])
                return
            }
            if delay > 0 { try await Task.sleep(for: .milliseconds(delay)) }
            var headers: STOMPHeaders = ["x-processed-by": name, "x-request-id": message.id]
            if let messageID = message.headers["x-msg-id"] { headers.add("x-msg-id", messageID) }
            let body = "Hello, \(message.bodyString)!"
            if replyToSender {
                try await consumer.reply(to: message, destination: replyDestination, body: body, headers: headers)
            } else {
                try await consumer.publish(destination: replyDestination, body: body, headers: headers)
            }
            Self.printLine("processed \(message.id) by \(name)")
        }
        presence?.stop()
        try await presenceTask?.value
        await redis.shutdown()
        logger.info("greeting-service stopped")
    }

    /// Writes one line to stderr, unbuffered.
    static func printLine(_ line: String) {
        var text = line + "\n"
        text.withUTF8 { bytes in _ = write(2, bytes.baseAddress, bytes.count) }
    }

    /// Calls `action` on SIGTERM and SIGINT (instead of terminating the process).
    static func onTermination(_ action: @escaping @Sendable (Int32) -> Void) -> [any DispatchSourceSignal] {
        [SIGTERM, SIGINT].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { action(number) }
            source.resume()
            return source
        }
    }
}
