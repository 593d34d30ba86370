import Hummingbird
import HummingbirdCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import Prometheus
import Redis
import ServiceLifecycle
import SwitchboardAuth
import SwitchboardCore
import SwitchboardRedis
import SwitchboardRoutes
import SwitchboardWire
import UnixSignals

/// A gateway instance: the HTTP API and the STOMP endpoint on one port, the fan-out hub,
/// the broker engine and the `/app` routes.
package struct SwitchboardGateway: Sendable {
    package let configuration: SwitchboardConfiguration
    package let services: GatewayServices
    let group: MultiThreadedEventLoopGroup
    /// The loops of `http.api-port`, when set: they serve API requests and run no sessions.
    let apiGroup: MultiThreadedEventLoopGroup?
    let admission = ConnectionAdmission()
    let pending: PendingHandshakes
    let logger: Logger
    /// Set in Redis mode.
    let redis: RedisParts?
    /// The HTTP client (connection pool) of the webhook routes and the events webhook, when
    /// there is one of them.
    let webhookClient: WebhookClient?
    /// Presence and lifecycle events on the embedded broker (`events.webhook.url`).
    let eventsWebhook: WebhookLifecycle?

    struct RedisParts: Sendable {
        let redis: GatewayRedis
        let engine: RedisEngine
        let streamRoutes: [RedisStreamRoute]
        let inbound: [RedisInboundRoute]
        /// With `events.enabled`: the sessions' facts, and this instance's lease.
        let lifecycle: RedisLifecycle?
        let lease: InstanceLease?
        /// With `redis.wait-replicas`: the stream routes' replicated writes (their own client).
        let replication: ReplicaAcknowledgement?
    }

    /// Where `/metrics` reads from; bootstrap `MetricsSystem` with a `PrometheusMetricsFactory`
    /// on the same registry so swift-metrics histograms (Redis latency, HTTP requests) show too.
    let metricsRegistry: PrometheusCollectorRegistry

    let limiter: ConnectionLimiter
    /// Plain-HTTP connections open on `http.port` and on `http.api-port` (`http.max-connections` each).
    let httpConnections: (main: HTTPConnectionCount, api: HTTPConnectionCount)
    /// API publishes in flight on the whole instance (`http.max-publish-bytes`).
    let publishBytes: PublishBytesBudget
    let apiKeys: APIKeyStore
    let tls: NIOSSLContext?

    package init(configuration: SwitchboardConfiguration, logger: Logger, metricsRegistry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) async throws {
        var session = configuration.session
        let auth = configuration.auth
        if !auth.jwt.isEmpty {
            session.authenticator = try await JWTAuthenticator(settings: auth.jwt)
            session.allowAnonymous = auth.allowAnonymous ?? false
        } else {
            session.allowAnonymous = auth.allowAnonymous ?? true
        }
        if !auth.subscribeRules.isEmpty || !auth.sendRules.isEmpty || !auth.presenceRules.isEmpty {
            session.accessPolicy = try AccessRules(subscribe: auth.subscribeRules, send: auth.sendRules, presence: auth.presenceRules)
        }
        // Join/leave notices come from the lifecycle functions (Redis mode, events on).
        session.presenceNotices = configuration.redis != nil && configuration.events.enabled
        if let files = configuration.http.tls {
            do {
                let chain = try NIOSSLCertificate.fromPEMFile(files.certificateFile).map { NIOSSLCertificateSource.certificate($0) }
                let key = try NIOSSLPrivateKey(file: files.keyFile, format: .pem)
                var tlsConfiguration = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
                // After our close_notify, the peer's is waited for this long, not NIO's 5 s: most
                // clients just close the socket, and the connection (its descriptor, its place
                // under http.max-connections) is held until then.
                tlsConfiguration.shutdownTimeout = .seconds(1)
                self.tls = try NIOSSLContext(configuration: tlsConfiguration)
            } catch {
                throw SwitchboardConfiguration.Invalid(description: "TLS: cannot load http.tls.certificate-file/key-file: \(error)")
            }
        } else {
            self.tls = nil
        }
        let addressKey = ClientAddressKey(ipv6PrefixLength: configuration.limits.ipv6PrefixLength)
        self.limiter = ConnectionLimiter(
            maxTotal: configuration.limits.maxConnections, maxPerAddress: configuration.limits.maxConnectionsPerIP, key: addressKey)
        self.httpConnections = (
            HTTPConnectionCount(port: "main", limit: configuration.http.maxConnections),
            HTTPConnectionCount(port: "api", limit: configuration.http.maxConnections)
        )
        self.apiKeys = APIKeyStore(keys: auth.apiKeys)
        self.metricsRegistry = metricsRegistry
        self.configuration = configuration
        self.logger = logger
        let taskPhases = TaskPhaseCounter()
        self.publishBytes = PublishBytesBudget(limit: configuration.http.maxPublishBytes)
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: configuration.server.threads, metricsDelegate: taskPhases)
        self.apiGroup = configuration.http.apiPort.map { _ in MultiThreadedEventLoopGroup(numberOfThreads: configuration.http.apiThreads) }
        let apiLoops = apiGroup.map { Array($0.makeIterator()) } ?? []
        let loops = Array(group.makeIterator())
        self.pending = PendingHandshakes(
            eventLoops: loops + apiLoops, maxPerAddress: configuration.limits.maxPendingConnectionsPerIP, key: addressKey,
            logger: Logger(label: "switchboard.http"))
        let hub = FanoutHub(
            eventLoops: loops, heartbeatResolution: .milliseconds(Int64(configuration.stomp.heartbeatResolutionMs)),
            writeCoalescing: .microseconds(Int64(configuration.server.writeCoalesceMicros)),
            busyWriteCoalescing: .microseconds(Int64(configuration.server.busyWriteCoalesceMicros)),
            busyPercent: configuration.server.busyPercent,
            nagleWhenBusy: configuration.http.tcpNoDelay, taskPhase: taskPhases.read,
            maxBacklogBytes: configuration.server.maxFanoutBacklogBytes,
            admissionTimeout: .milliseconds(Int64(configuration.server.publishAdmissionTimeoutMs)),
            maxPendingBytesTotal: configuration.limits.maxPendingBytesTotal)
        let instanceID = configuration.instanceID ?? Self.randomInstanceID()
        // This process's token: in session ids, and in the name of its presence registry.
        let incarnation = Self.randomInstanceID()
        // A configured instance id is taken again by the next process (a restarted pod): then
        // message and session ids carry this process's token too, so none is given out twice.
        // Otherwise a reply addressed to a session of the previous process reached the new
        // session with the same id (another user's), and clients that drop repeated message
        // ids dropped new messages.
        let reusesID = configuration.instanceID != nil
        let messageIDs = MessageIDGenerator(instanceID: reusesID ? "\(instanceID)-\(incarnation)" : instanceID)
        let history = configuration.history.store.map { DestinationHistory(settings: $0) }
        var engine: any BrokerEngine = InMemoryEngine(hub: hub, history: history)
        var gatewayRedis: GatewayRedis?
        var replication: ReplicaAcknowledgement?
        var redisEngine: RedisEngine?
        var lifecycle: RedisLifecycle?
        var lease: InstanceLease?
        if let settings = configuration.redis {
            var redisConfiguration = try RedisConfiguration(url: settings.url)
            redisConfiguration.commandTimeout = .milliseconds(Int64(settings.commandTimeoutMs))
            redisConfiguration.commandConnectionPerEventLoop = settings.connectionPerLoop
            redisConfiguration.connectTimeout = .milliseconds(Int64(settings.connectTimeoutMs))
            redisConfiguration.reconnectWait = .milliseconds(Int64(settings.reconnectWaitMs))
            redisConfiguration.subscriberPingInterval = .milliseconds(Int64(settings.subscriberPingIntervalMs))
            redisConfiguration.clientName = "switchboard-\(instanceID)"
            if let tls = settings.tls { redisConfiguration.tls = tls.configuration }
            redisConfiguration.sentinel = settings.sentinel
            var redisLogger = Logger(label: "switchboard.redis")
            redisLogger[metadataKey: "instance"] = "\(instanceID)"
            let redis: GatewayRedis
            if let cluster = settings.cluster {
                redisConfiguration.cluster = cluster
                redis = .cluster(try await Self.connectCluster(configuration: redisConfiguration, group: group, logger: redisLogger))
            } else {
                if redisConfiguration.sentinel != nil {
                    try await Self.checkMasterName(configuration: redisConfiguration, group: group, logger: redisLogger)
                }
                redis = .single(
                    RedisClient(configuration: redisConfiguration, eventLoopGroup: group, additionalCommandLoops: apiLoops, logger: redisLogger))
            }
            let mostReplicas =
                configuration.routes.compactMap { route -> Int? in
                    guard case .redisStream(_, _, _, let waitReplicas) = route.target else { return nil }
                    return waitReplicas ?? settings.waitReplicas
                }.max() ?? 0
            if mostReplicas > 0 {
                // A WAIT holds its connection: the replicated writes get connections of their own.
                var own = redisConfiguration
                own.clientName = "switchboard-\(instanceID)-replicated"
                let writes: GatewayRedis =
                    own.cluster != nil
                    ? .cluster(try await Self.connectCluster(configuration: own, group: group, logger: redisLogger))
                    : .single(
                        RedisClient(
                            configuration: own, eventLoopGroup: group, additionalCommandLoops: apiLoops, logger: redisLogger,
                            enableSubscriptions: false))
                replication = ReplicaAcknowledgement(
                    redis: writes, replicas: mostReplicas, timeout: .milliseconds(Int64(settings.waitReplicasTimeoutMs)))
            }
            let re = RedisEngine(
                redis: redis, hub: hub, naming: RedisChannelNaming(prefix: settings.channelPrefix), instanceID: instanceID,
                messageIDs: messageIDs, eventLoop: loops[0], logger: redisLogger,
                canary: settings.canaryIntervalMs > 0
                    ? (.milliseconds(Int64(settings.canaryIntervalMs)), .milliseconds(Int64(settings.canaryTimeoutMs))) : nil,
                history: configuration.history.store, unreachableWait: .milliseconds(Int64(settings.unreachableWaitMs)),
                durableRedis: settings.appendfsyncAlways)
            gatewayRedis = redis
            redisEngine = re
            engine = re
            if configuration.events.enabled, let client = redis.singleClient {
                let events = configuration.events
                let stream = LifecycleStreamSettings(
                    stream: events.stream, maxLength: events.maxLength, types: events.types, prefix: settings.channelPrefix)
                let shards = hub.shards
                // Only the sessions that joined before the loss was told: a client closed on one
                // loop may reconnect on another before this thread reaches that loop.
                let closeAll: @Sendable () -> Void = {
                    let told = NIODeadline.now()
                    for shard in shards {
                        shard.closeAll(reason: "this instance lost its presence lease in Redis, reconnect", kind: .leaseLost, joinedBefore: told)
                    }
                }
                let facts = RedisLifecycle(
                    client: client, settings: stream, instance: "\(instanceID)~\(incarnation)", loops: loops,
                    limits: .init(maxQueued: events.maxQueued, maxBatch: events.maxBatch),
                    unreachableWait: .milliseconds(Int64(settings.unreachableWaitMs)), logger: redisLogger, onRegistryLost: closeAll)
                lifecycle = facts
                lease = InstanceLease(
                    client: client, stream: stream, instance: facts.instance,
                    settings: .init(
                        ttl: .milliseconds(events.leaseTTLMs), renewInterval: .milliseconds(events.leaseRenewMs),
                        grace: .milliseconds(events.graceMs),
                        settle: .nanoseconds(redisConfiguration.reconnectBackoffMaximum.nanoseconds)),
                    logger: redisLogger, registered: { facts.hasApplied }, losses: facts.losses,
                    onLost: closeAll)
            }
        }
        var webhookClient: WebhookClient?  // made for the events webhook or the first webhook route, shared by all
        var eventsWebhook: WebhookLifecycle?
        if configuration.redis == nil, configuration.events.enabled, let hook = configuration.events.webhook {
            let client = try WebhookClient(settings: configuration.webhooks, eventLoopGroup: group)
            webhookClient = client
            let events = configuration.events
            var eventsLogger = Logger(label: "switchboard.server")
            eventsLogger[metadataKey: "instance"] = "\(instanceID)"
            eventsWebhook = WebhookLifecycle(
                target: .init(url: hook.url, timeout: .milliseconds(Int64(hook.timeoutMs))), instance: instanceID, incarnation: incarnation,
                types: events.types,
                limits: .init(
                    maxQueued: events.maxQueued, maxBatch: events.maxBatch, backoff: .milliseconds(Int64(hook.backoffMs)),
                    maxBackoff: .milliseconds(Int64(hook.backoffMaxMs))),
                client: client, loop: loops[0], logger: eventsLogger)
        }
        var routes = RouteTable()
        var streamRoutes: [RedisStreamRoute] = []
        for route in configuration.routes {
            let pattern = try DestinationPattern(route.destination)
            switch (route.target, gatewayRedis) {
            case (.webhook(let url, let timeoutMs), _):
                let client = try webhookClient ?? WebhookClient(settings: configuration.webhooks, eventLoopGroup: group)
                webhookClient = client
                routes.add(pattern, try WebhookRoute(url: url, timeout: .milliseconds(Int64(timeoutMs)), client: client))
            case (.redisStream(let stream, let maxLength, let groups, let waitReplicas), let redis?):
                // The route's own count, on the replicated writes' client (made for the largest).
                let replicas = waitReplicas ?? configuration.redis?.waitReplicas ?? 0
                let own = replicas > 0 ? replication.map { ReplicaAcknowledgement(redis: $0.redis, replicas: replicas, timeout: $0.timeout) } : nil
                let r = RedisStreamRoute(
                    stream: stream, maxLength: maxLength, redis: redis, groups: groups, replication: own, eventLoop: loops[0])
                streamRoutes.append(r)
                routes.add(pattern, r)
            case (.redisPubSub(let channel, let requireSubscriber), let redis?):
                routes.add(pattern, RedisPubSubRoute(channel: channel, redis: redis, requireSubscriber: requireSubscriber))
            case (.redisStream, nil), (.redisPubSub, nil):
                throw SwitchboardConfiguration.Invalid(description: "routes.\(route.name).type \(route.target.typeName) needs redis.url")
            }
        }
        if let gatewayRedis, let redisEngine, let settings = configuration.redis {
            self.redis = RedisParts(
                redis: gatewayRedis, engine: redisEngine, streamRoutes: streamRoutes, inbound: settings.inbound.map(\.route),
                lifecycle: lifecycle, lease: lease, replication: replication)
        } else {
            self.redis = nil
        }
        self.webhookClient = webhookClient
        self.eventsWebhook = eventsWebhook
        var recorder: (any LifecycleRecorder)? = lifecycle
        if let eventsWebhook { recorder = eventsWebhook }
        var sessionLogger = Logger(label: "switchboard.session")
        sessionLogger[metadataKey: "instance"] = "\(instanceID)"
        var routesLogger = Logger(label: "switchboard.routes")
        routesLogger[metadataKey: "instance"] = "\(instanceID)"
        self.services = GatewayServices(
            configuration: session, hub: hub, engine: engine,
            routes: routes, instanceID: instanceID, messageIDs: messageIDs, logger: sessionLogger, routesLogger: routesLogger, lifecycle: recorder,
            incarnation: configuration.events.enabled || reusesID ? incarnation : nil)
    }

    /// Makes the cluster client and reads the slot map once, so that a wrong `redis.cluster.nodes`
    /// stops start-up with an error naming the key instead of retrying for ever.
    static func connectCluster(configuration: RedisConfiguration, group: any EventLoopGroup, logger: Logger) async throws -> RedisClusterClient {
        let client: RedisClusterClient
        do {
            client = try RedisClusterClient(configuration: configuration, eventLoopGroup: group, logger: logger)
        } catch {
            throw SwitchboardConfiguration.Invalid(description: "redis.cluster.nodes: \(error)")
        }
        do {
            try await client.refreshTopology()
            return client
        } catch let error as RedisClientError {
            await client.shutdown()
            if error == .notCluster {
                // The detail reads "<host:port> is not a cluster node (…)".
                throw SwitchboardConfiguration.Invalid(description: "redis.cluster.nodes: \(error.detail ?? "a node is not a cluster node (cluster_enabled:0)")")
            }
            throw SwitchboardConfiguration.Invalid(description: "redis.cluster.nodes: no seed node answered (\(error.detail ?? "\(error)"))")
        } catch {
            await client.shutdown()
            throw SwitchboardConfiguration.Invalid(description: "redis.cluster.nodes: cannot read the slot map: \(error)")
        }
    }

    /// Asks the sentinels once for `redis.sentinel.master-name`: when some answer and none knows
    /// the name, start-up stops with an error naming the key (a typo would otherwise retry for
    /// ever). When none answers, the gateway starts and keeps asking, not ready meanwhile, as
    /// it does when one Redis is down.
    static func checkMasterName(configuration: RedisConfiguration, group: any EventLoopGroup, logger: Logger) async throws {
        guard let sentinel = configuration.sentinel else { return }
        let resolver = SentinelResolver(configuration: configuration)
        var answered: [String] = []
        var failed: [String] = []
        for node in sentinel.nodes {
            do {
                let connection = try await RedisConnection.connect(
                    configuration: resolver.sentinelConfiguration(for: node), eventLoopGroup: group, logger: logger)
                let address: RedisServerAddress?
                do {
                    address = try await connection.execute(SENTINEL_GET_MASTER_ADDR_BY_NAME(masterName: sentinel.masterName))
                } catch {
                    await connection.close()
                    throw error
                }
                await connection.close()
                if address != nil { return }
                answered.append("\(node)")
            } catch {
                failed.append("\(node): \(error)")
            }
        }
        guard !answered.isEmpty else { return }
        let others = failed.isEmpty ? "" : "; not answering: " + failed.joined(separator: "; ")
        throw SwitchboardConfiguration.Invalid(
            description: "redis.sentinel.master-name: no sentinel monitors a primary named '\(sentinel.masterName)' "
                + "(asked \(answered.joined(separator: ", "))\(others)); check `sentinel monitor <name> ...` in the sentinels' configuration")
    }

    static func randomInstanceID() -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
        return String((0..<6).map { _ in alphabet.randomElement()! })
    }

    /// Builds the listeners serving this gateway: STOMP sessions and the HTTP API (a
    /// Hummingbird router) on `http.port`, and the API alone on `http.api-port` when set.
    func makeListeners(
        onServerRunning: @escaping @Sendable (_ api: Bool, any Channel) async -> Void
    ) -> (main: GatewayListener, api: GatewayListener?) {
        let router = Router()
        router.add(middleware: ConnectionCloseMiddleware())
        router.add(middleware: MetricsMiddleware())
        router.add(middleware: CORSAllowlistMiddleware(allowedOrigins: configuration.http.allowedOrigins))
        // Innermost: CORS and metrics see its JSON 404/405 like any other answer.
        router.add(middleware: NoRouteMiddleware())
        MetricsEndpoint(
            registry: metricsRegistry, services: services, httpConnections: [httpConnections.main, httpConnections.api], pending: pending,
            publishBytes: publishBytes
        )
        .register(on: router)
        let publisher = NotificationPublisher(
            services: services, apiKeys: apiKeys, maxBodyBytes: configuration.http.maxBodyBytes, maxBatchItems: configuration.http.maxBatchItems,
            publishBytes: publishBytes)
        let streamGroups = redis?.streamRoutes.compactMap(\.groups) ?? []
        PublishAPI(services: services, publisher: publisher, eventLoopGroup: group, admission: admission, streamGroups: streamGroups)
            .register(on: router)
        var presence: (any PresenceSource)? = redis?.lifecycle
        if let eventsWebhook { presence = eventsWebhook }
        PresenceAPI(publisher: publisher, policy: services.policy, source: presence, maxUsers: configuration.events.presenceMaxUsers)
            .register(on: router)
        if configuration.console.enabled {
            let inbound = (configuration.redis?.inbound ?? []).compactMap { setting -> String? in
                switch setting.route {
                case .channel(let channel, _), .broadcast(let channel): channel
                case .stream: nil
                }
            }
            ConsoleRoutes(path: configuration.console.path, services: services, inboundChannels: inbound, publisher: publisher)
                .register(on: router)
        }
        let httpLogger = Logger(label: "switchboard.http")
        let dates = HTTPDateCache()
        let http = HTTPAPIChannel(
            responder: HTTPAPIChannel.responder(router.buildResponder(), serverName: "switchboard", dates: dates, logger: httpLogger),
            secure: tls != nil, idleTimeout: .milliseconds(Int64(configuration.http.idleTimeoutMs)),
            requestTimeout: .milliseconds(Int64(configuration.http.handshakeTimeoutMs)),
            shutdownGrace: .milliseconds(Int64(configuration.server.shutdownGraceMs)), publisher: publisher, dates: dates,
            readiness: ReadinessCheck(services: services, admission: admission, streamGroups: streamGroups))
        let handshake = WebSocketHandshake(
            services: services, stompPath: configuration.stomp.path, admission: admission, limiter: limiter,
            allowedOrigins: configuration.http.allowedOrigins, handshakeCookie: configuration.auth.handshakeCookie)
        var settings = GatewayListener.Settings(
            host: configuration.http.host, port: configuration.http.port, backlog: configuration.http.backlog,
            handshakeTimeout: .milliseconds(Int64(configuration.http.handshakeTimeoutMs)),
            maxWebSocketFrameBytes: configuration.limits.decoder.maxFrameBytes + WebSocketSTOMPTransport.frameMargin, tls: tls)
        settings.tcpNoDelay = configuration.http.tcpNoDelay
        // A second more than a connection's own grace (``HTTPConnectionIdleState``), which
        // should have closed it first.
        settings.closeGrace = .milliseconds(Int64(configuration.server.shutdownGraceMs) + 1_000)
        let main = GatewayListener(
            settings: settings, handshake: handshake, http: http, pending: pending, httpConnections: httpConnections.main, group: group,
            onServerRunning: { await onServerRunning(false, $0) }, logger: httpLogger)
        guard let apiGroup, let apiPort = configuration.http.apiPort else { return (main, nil) }
        settings.port = apiPort
        settings.acceptsSessions = false
        let api = GatewayListener(
            settings: settings, handshake: handshake, http: http, pending: pending, httpConnections: httpConnections.api, group: apiGroup,
            onServerRunning: { await onServerRunning(true, $0) }, logger: httpLogger)
        return (main, api)
    }

    /// Runs until SIGTERM or SIGINT, then drains: new sessions are refused, every session
    /// gets an `ERROR` ("server shutting down, reconnect"), and the process returns once
    /// they are closed or the grace period ends.
    package func run() async throws {
        let logger = self.logger
        let host = configuration.http.host
        let (listener, apiListener) = makeListeners { api, channel in
            if api {
                logger.notice("switchboard API listening", metadata: ["address": "\(host):\(channel.localAddress?.port ?? 0)"])
                return
            }
            logger.notice(
                "switchboard listening",
                metadata: [
                    "address": "\(host):\(channel.localAddress?.port ?? 0)",
                    "tls": "\(configuration.http.tls != nil)",
                    "stomp": "\(configuration.stomp.path)",
                    "engine": "\(services.engine.name)",
                    "instance": "\(services.instanceID)",
                ])
        }
        let drain = DrainService(
            services: services, admission: admission, pending: pending, redis: [redis?.redis, redis?.replication?.redis].compactMap { $0 },
            delay: .milliseconds(Int64(configuration.server.drainDelayMs)), grace: .milliseconds(Int64(configuration.server.shutdownGraceMs)),
            apiLoops: apiGroup.map { Array($0.makeIterator()) } ?? [], logger: logger)
        var list: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let redis {
            list.append(.init(service: RedisService(parts: redis, services: services, logger: logger)))
        }
        if let eventsWebhook, let hook = configuration.events.webhook {
            list.append(.init(service: EventsWebhookService(events: eventsWebhook, drainTimeout: .milliseconds(hook.drainTimeoutMs))))
        }
        // Stopped in reverse: sessions drain first, then the session port closes, and the API
        // port last (backends can publish while sessions drain).
        // A listener failing (its port accepts nothing any more) shuts the others down
        // gracefully: sessions drain, the lease is left, Redis's last writes go out.
        if let apiListener { list.append(.init(service: apiListener, failureTerminationBehavior: .gracefullyShutdownGroup)) }
        list += [.init(service: listener, failureTerminationBehavior: .gracefullyShutdownGroup), .init(service: drain)]
        var groupConfiguration = ServiceGroupConfiguration(services: list, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        // Every stage has its own bound; this one holds if a stage still never finished: its
        // services are cancelled, and past the cancellation bound the process stops (a
        // shutdown that hangs would otherwise wait for SIGKILL).
        groupConfiguration.maximumGracefulShutdownDuration = shutdownBound
        groupConfiguration.maximumCancellationDuration = .seconds(5)
        // A second SIGTERM or SIGINT during the graceful shutdown stops now (as a second
        // Ctrl-C does in most servers): the stages left are cancelled, sessions are closed
        // without waiting for their steps, and the process exits with an error.
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        let interrupted = NIOLockedValueBox(false)
        let configured = groupConfiguration
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await ServiceGroup(configuration: configured).run() }
            tasks.addTask {
                // (One within a second of the first is taken for the same stop: Ctrl-C in a
                // terminal and a supervisor's SIGTERM passed on together.)
                var first: ContinuousClock.Instant?
                for await signal in signals {
                    guard let since = first else {
                        first = .now
                        continue
                    }
                    guard since.duration(to: .now) >= .seconds(1) else { continue }
                    logger.error("second \(signal) during the graceful shutdown: stopping now")
                    interrupted.withLockedValue { $0 = true }
                    return
                }
            }
            // The group's end (the watcher's then ends with its cancellation), or the watcher's
            // (the group is then cancelled, within its cancellation bound).
            try await tasks.next()
            tasks.cancelAll()
        }
        // Past the bound the group cancelled the stages left (their last writes, the lease's
        // leave), saying so at debug level only: an error, and a failed exit.
        // (The group's clock starts a moment before the drain's: within a second of the bound
        // is taken as past it; a shutdown that ends in time ends 10 s before it, the margin.)
        let overran = drain.started.withLockedValue { $0 }.map { $0.duration(to: .now) >= shutdownBound - .seconds(1) } ?? false
        if overran {
            logger.error(
                "graceful shutdown took longer than its bound: the stages left were cancelled (presence facts or the lease's leave may be lost)",
                metadata: ["bound.ms": "\(shutdownBound.components.seconds * 1_000)"])
        }
        for shard in services.hub.shards { shard.stop() }
        try? await webhookClient?.shutdown()
        try? await self.group.shutdownGracefully()
        try? await self.apiGroup?.shutdownGracefully()
        if interrupted.withLockedValue({ $0 }) { throw ShutdownInterrupted() }
        if overran { throw ShutdownOverran(bound: shutdownBound) }
        logger.notice("switchboard stopped")
    }

    /// A second SIGTERM or SIGINT cut the graceful shutdown short: the process exits with an error.
    struct ShutdownInterrupted: Error, CustomStringConvertible {
        var description: String { "graceful shutdown cut short by a second signal" }
    }

    /// The graceful shutdown went past ``shutdownBound``: the process exits with an error.
    struct ShutdownOverran: Error, CustomStringConvertible {
        var bound: Duration
        var description: String { "graceful shutdown took longer than \(bound)" }
    }

    /// The longest a graceful shutdown may take: its stages one after the other (the drain:
    /// its delay, then the sessions' grace and a last second; the session port's connections,
    /// and the API port's when there is one: the grace and a second each), the Redis side's
    /// shutdown (10 s) and the events webhook's drain, plus a margin of 10 s.
    var shutdownBound: Duration {
        let server = configuration.server
        let stages = configuration.http.apiPort == nil ? 2 : 3
        var milliseconds = server.drainDelayMs + stages * (server.shutdownGraceMs + 1_000) + 10_000
        // The Redis side: its last writes (3 s), reads scheduled to be retried (1 s), its own
        // tasks (3 s) and the client's (3 s).
        if redis != nil { milliseconds += 10_000 }
        if eventsWebhook != nil, let hook = configuration.events.webhook { milliseconds += hook.drainTimeoutMs }
        return .milliseconds(milliseconds)
    }
}
