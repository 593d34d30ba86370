import Hummingbird
import NIOConcurrencyHelpers
import NIOCore
import Prometheus
import Redis
import STOMPCodec
import SwitchboardCore
import SwitchboardRedis
import SwitchboardRoutes
import SwitchboardWire

/// `GET /metrics` in Prometheus text format.
///
/// Hot-path counters live per event loop (``ShardCounters``) and gauges in ``GatewayStats``;
/// a scrape reads them (one hop per loop) and brings the Prometheus registry up to date.
/// Histograms (Redis command latency, HTTP request duration) and Hummingbird's HTTP request
/// counters are recorded through swift-metrics into the same registry when the executable
/// bootstrapped `MetricsSystem` with a `PrometheusMetricsFactory` on it.
final class MetricsEndpoint: Sendable {
    let registry: PrometheusCollectorRegistry
    let services: GatewayServices
    let httpConnections: [HTTPConnectionCount]
    /// Connections in their first request (``PendingHandshakes/refused``).
    let pending: PendingHandshakes?
    /// API publishes in flight (``PublishBytesBudget``).
    let publishBytes: PublishBytesBudget?
    /// Last value pushed into each counter, to increment by the difference.
    private let synced = NIOLockedValueBox<[String: Int]>([:])

    init(
        registry: PrometheusCollectorRegistry, services: GatewayServices, httpConnections: [HTTPConnectionCount] = [], pending: PendingHandshakes? = nil,
        publishBytes: PublishBytesBudget? = nil
    ) {
        self.pending = pending
        self.publishBytes = publishBytes
        self.registry = registry
        self.services = services
        self.httpConnections = httpConnections
    }

    func register(on router: Router<BasicRequestContext>) {
        router.get("/metrics") { _, _ in
            await self.refresh()
            var out: [UInt8] = []
            self.registry.emit(into: &out)
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: out)))
        }
    }

    /// A full metric name as one descriptor component (the names here already carry their unit).
    private static func descriptor(_ name: String, help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    private func gauge(_ name: String, _ value: Int, labels: [(String, String)] = [], help: String) {
        registry.makeGauge(descriptor: Self.descriptor(name, help: help), labels: labels).set(Int64(value))
    }

    private func counter(_ name: String, _ total: Int, labels: [(String, String)] = [], help: String) {
        let key = name + labels.map { "|\($0.0)=\($0.1)" }.joined()
        // Never moved back: two scrapes at once, the older snapshot written second, counted
        // the difference twice at the next one.
        let delta = synced.withLockedValue { seen -> Int in
            let d = total - (seen[key] ?? 0)
            if d > 0 { seen[key] = total }
            return d
        }
        let c = registry.makeCounter(descriptor: Self.descriptor(name, help: help), labels: labels)
        if delta > 0 { c.increment(by: Int64(delta)) }
    }

    func refresh() async {
        let stats = services.stats
        let counters = await services.counters()
        gauge("switchboard_connections", stats.connectionsOpen.load(), help: "Open WebSocket connections.")
        counter("switchboard_connections_total", stats.connectionsTotal.load(), help: "WebSocket connections accepted.")
        for version in STOMPVersion.allCases {
            gauge(
                "switchboard_sessions", stats.sessionsByVersion[version.ordinal].load(), labels: [("version", version.rawValue)],
                help: "Connected STOMP sessions by negotiated version.")
        }
        gauge("switchboard_subscriptions", stats.subscriptions.load(), help: "Active subscriptions.")
        gauge("switchboard_destinations_active", services.hub.activeDestinationCount, help: "Destinations and patterns with local subscribers.")
        for command in STOMPCommand.allCases {
            let i = command.ordinal
            if i < STOMPCommand.connected.ordinal {
                counter("switchboard_frames_in_total", counters.framesIn[i], labels: [("command", command.rawValue)], help: "STOMP frames received, by command.")
            } else {
                counter("switchboard_frames_out_total", counters.framesOut[i], labels: [("command", command.rawValue)], help: "STOMP frames sent, by command.")
            }
        }
        counter("switchboard_messages_delivered_total", counters.messagesDelivered, help: "MESSAGE frames written to subscribers.")
        counter("switchboard_bytes_out_total", counters.bytesOut, help: "STOMP bytes written to connections.")
        gauge(
            "switchboard_event_loops_busy", counters.loopsBusy,
            help: "Event loops in busy mode: saturated, so their connections run with Nagle (TCP_NODELAY off) and wider write coalescing.")
        counter(
            "switchboard_busy_mode_switches_total", counters.busySwitches,
            help: "Times an event loop entered or left busy mode.")
        counter(
            "switchboard_event_loop_io_yields_total", counters.ioYields,
            help: "Times an event loop left messages from other loops for after its next I/O pass (a task phase past its budget).")
        for count in httpConnections {
            gauge(
                "switchboard_http_connections", count.open.load(ordering: .relaxed), labels: [("port", count.port)],
                help: "Plain-HTTP (API) connections open, by port (main: http.port, api: http.api-port).")
            counter(
                "switchboard_http_connections_refused_total", count.refused.load(ordering: .relaxed), labels: [("port", count.port)],
                help: "HTTP connections answered 503 and closed because the port had http.max-connections open.")
        }
        if let pending {
            counter(
                "switchboard_pending_connections_refused_total", pending.refused.load(ordering: .relaxed),
                help: "Connections closed at accept: their address had limits.max-pending-connections-per-ip in their first request already.")
        }
        gauge(
            "switchboard_outbound_pending_bytes", services.hub.outbound.total,
            help:
                "Bytes written to connections and not yet taken by them, all connections together, with the frames open transactions hold "
                + "(summed every second; see limits.max-pending-bytes-total).")
        counter(
            "switchboard_outbound_shed_sessions_total", services.hub.outbound.shedCount,
            help: "Sessions closed as slow consumers because the outbound bytes of all connections were over limits.max-pending-bytes-total.")
        if let publishBytes {
            gauge(
                "switchboard_http_publish_bytes_in_flight", publishBytes.inFlight,
                help: "Bytes of HTTP API publishes accepted and not answered yet (see http.max-publish-bytes).")
            counter(
                "switchboard_http_publish_refusals_total", publishBytes.refusedCount,
                help: "HTTP API publishes answered 503 (nothing published) because those in flight held http.max-publish-bytes.")
        }
        let admission = services.hub.admissionCounts
        counter(
            "switchboard_publish_admission_waits_total", admission.waits,
            help: "Publishes that waited because an event loop's fan-out backlog was over server.max-fanout-backlog-bytes.")
        counter(
            "switchboard_publish_admission_refusals_total", admission.refusals,
            help: "Publishes refused (nothing published) after waiting server.publish-admission-timeout-ms for the fan-out backlog.")
        if let history = services.engine.history {
            gauge("switchboard_history_retained_bytes", history.retainedBytes, help: "Bytes the embedded broker's history keeps (see history.max-bytes).")
        }
        for kind in SessionErrorKind.allCases {
            counter(
                "switchboard_session_errors_total", stats.errors(kind), labels: [("kind", kind.rawValue)],
                help: "Sessions closed with an ERROR, by cause (slow_consumer, heartbeat_timeout, auth, limit, protocol, route, shutdown, lease_lost).")
        }
        if let engine = services.engine as? RedisEngine {
            for role in [RedisConnectionRole.commands, .subscriptions] {
                gauge(
                    "switchboard_redis_connected", engine.connectionStateDescription(role) == "connected" ? 1 : 0, labels: [("role", "\(role)")],
                    help: "1 while the Redis connection is up.")
            }
            counter("switchboard_redis_reconnects_total", engine.redis.reconnectCount, help: "Redis reconnects.")
            gauge(
                "switchboard_redis_waiting_commands", engine.redis.waitingCommands,
                help: "Redis commands (publishes) waiting for the command connection to be back (redis.reconnect-wait-ms).")
            counter(
                "switchboard_redis_subscriber_read_pauses_total", engine.redis.subscriberReadPauses,
                help: "Times a Redis subscriber connection stopped reading because the fan-out backlog was over server.max-fanout-backlog-bytes.")
            if let cluster = engine.redis.clusterClient {
                counter(
                    "switchboard_redis_cluster_slot_map_changes_total", cluster.slotMapChangeCount,
                    help: "Redis Cluster: times a newly read slot map assigned slots differently (a reshard or a failover).")
                counter(
                    "switchboard_redis_cluster_connection_losses_total", cluster.connectionLossCount,
                    help: "Redis Cluster: command or subscriber connections to a node that were lost (not closed by the gateway).")
                counter(
                    "switchboard_redis_cluster_detoured_commands_total", cluster.detouredSendCount,
                    help: "Redis Cluster: commands redirected (or their node unreachable) that the later commands of their slot waited behind, to keep their order.")
            }
            if let age = engine.canary?.ownAge {
                registry.makeGauge(
                    descriptor: Self.descriptor(
                        "switchboard_delivery_canary_age_seconds",
                        help: "Seconds since this instance's own delivery canary last came back through Redis."),
                    labels: []
                ).set(age)
            }
            counter("switchboard_redis_pubsub_messages_in_total", engine.messagesIn.load(ordering: .relaxed), help: "Pub/Sub messages received from Redis.")
            counter("switchboard_redis_publish_failures_total", engine.publishFailures.load(ordering: .relaxed), help: "Publishes Redis did not accept.")
            counter(
                "switchboard_redis_inbound_record_retries_total", engine.inboundRecordRetries.load(ordering: .relaxed),
                help: "Inbound stream entries read again because their recording in history failed.")
            counter(
                "switchboard_redis_inbound_entries_given_up_total", engine.inboundEntriesGivenUp.load(ordering: .relaxed),
                help:
                    "Inbound stream entries given up: Redis refused to record them for 30 s for a reason that does not pass by itself (an ACL, a script error), or they were 9 minutes old and still not recorded."
            )
            counter(
                "switchboard_redis_inbound_read_failures_total", engine.inboundReadFailures.load(ordering: .relaxed),
                help: "Inbound stream reads that failed (the reader reconnects and reads again after a back-off).")
            counter(
                "switchboard_redis_inbound_entries_recorded_elsewhere_total", engine.inboundEntriesRecordedElsewhere.load(ordering: .relaxed),
                help: "Inbound stream entries not recorded by this instance: behind the instances' shared position and older than their once tokens.")
            for reason in InboundDrops.Reason.allCases {
                counter(
                    "switchboard_redis_inbound_dropped_total", engine.inboundDropped.count(reason), labels: [("reason", reason.rawValue)],
                    help: "Inbound Redis messages (Pub/Sub and stream routes) dropped, by reason; each is also logged (throttled).")
            }
            counter(
                "switchboard_redis_inbound_stream_rewinds_total", engine.inboundStreamRewinds.load(ordering: .relaxed),
                help: "Inbound streams found ending before the position read (Redis went back, or the key was deleted): read on from their end.")
            counter(
                "switchboard_redis_inbound_stream_read_pauses_total", engine.inboundStreamReadPauses.load(ordering: .relaxed),
                help: "Times an inbound stream reader stopped reading because the fan-out backlog was over server.max-fanout-backlog-bytes.")
            counter("switchboard_redis_xadd_failures_total", RedisStreamRoute.failures.load(ordering: .relaxed), help: "XADDs of /app messages that failed.")
            counter(
                "switchboard_redis_xadd_not_replicated_total", ReplicaAcknowledgement.failures.load(ordering: .relaxed),
                help: "XADDs of /app messages stored on the primary that too few replicas acknowledged in time (redis.wait-replicas).")
        }
    }
}
