import Configuration
import Logging
import NIOCore
import STOMPCodec
import SwitchboardCore

/// One `/app` route from configuration.
public struct RouteConfiguration: Sendable, Equatable {
    public enum Kind: String, Sendable { case webhook }
    public var name: String
    public var destination: String
    public var kind: Kind
    public var url: String
    public var timeoutMs: Int
}

/// Every setting of a gateway instance. See the configuration table in the README.
public struct SwitchboardConfiguration: Sendable {
    public var host = "0.0.0.0"
    public var port = 8080
    public var stompPath = "/stomp"
    public var instanceID: String?
    public var session = SessionConfiguration()
    public var routes: [RouteConfiguration] = []
    public var apiMaxBodyBytes = 1024 * 1024
    public var heartbeatResolutionMs = 250
    public var eventLoopThreads = System.coreCount
    public var backlog = 4096
    public var shutdownGraceMs = 5_000
    public var logLevel: Logger.Level = .info

    public init() {}

    /// A configuration problem, naming the key.
    public struct Invalid: Error, CustomStringConvertible {
        public var description: String
    }

    /// Reads every key from `reader` (YAML file, environment, flags, in that order of weight).
    public init(reader: ConfigReader) throws {
        self.init()
        host = reader.string(forKey: "http.host", default: host)
        port = reader.int(forKey: "http.port", default: port)
        guard (0...65535).contains(port) else { throw Invalid(description: "http.port must be 0…65535, got \(port)") }
        apiMaxBodyBytes = reader.int(forKey: "http.max-body-bytes", default: apiMaxBodyBytes)
        backlog = reader.int(forKey: "http.backlog", default: backlog)
        stompPath = reader.string(forKey: "stomp.path", default: stompPath)
        guard stompPath.hasPrefix("/") else { throw Invalid(description: "stomp.path must start with '/', got '\(stompPath)'") }
        instanceID = reader.string(forKey: "instance.id")
        eventLoopThreads = reader.int(forKey: "server.threads", default: eventLoopThreads)
        guard eventLoopThreads >= 1 && eventLoopThreads <= FanoutHub.maxShards else {
            throw Invalid(description: "server.threads must be 1…\(FanoutHub.maxShards)")
        }
        shutdownGraceMs = reader.int(forKey: "server.shutdown-grace-ms", default: shutdownGraceMs)
        if let level = reader.string(forKey: "log.level") {
            guard let parsed = Logger.Level(rawValue: level) else {
                throw Invalid(description: "log.level must be one of trace, debug, info, notice, warning, error, critical; got '\(level)'")
            }
            logLevel = parsed
        }

        var s = SessionConfiguration()
        s.heartBeat = STOMPHeartBeat(send: reader.int(forKey: "stomp.heartbeat.send-ms", default: s.heartBeat.send),
                                     receive: reader.int(forKey: "stomp.heartbeat.receive-ms", default: s.heartBeat.receive))
        guard s.heartBeat.send >= 0, s.heartBeat.receive >= 0 else { throw Invalid(description: "stomp.heartbeat.* must be ≥ 0") }
        s.heartBeatTolerance = reader.double(forKey: "stomp.heartbeat.tolerance", default: s.heartBeatTolerance)
        guard s.heartBeatTolerance >= 1 else { throw Invalid(description: "stomp.heartbeat.tolerance must be ≥ 1") }
        heartbeatResolutionMs = reader.int(forKey: "stomp.heartbeat.resolution-ms", default: heartbeatResolutionMs)
        guard heartbeatResolutionMs >= 10 else { throw Invalid(description: "stomp.heartbeat.resolution-ms must be ≥ 10") }
        s.connectTimeout = .milliseconds(Int64(reader.int(forKey: "stomp.connect-timeout-ms", default: 10_000)))
        s.decoderLimits.maxFrameBytes = reader.int(forKey: "limits.max-frame-bytes", default: s.decoderLimits.maxFrameBytes)
        s.decoderLimits.maxHeaders = reader.int(forKey: "limits.max-headers", default: s.decoderLimits.maxHeaders)
        s.decoderLimits.maxHeaderLineBytes = reader.int(forKey: "limits.max-header-line-bytes", default: s.decoderLimits.maxHeaderLineBytes)
        s.maxSubscriptionsPerSession = reader.int(forKey: "limits.max-subscriptions", default: s.maxSubscriptionsPerSession)
        s.maxPendingOutboundBytes = reader.int(forKey: "limits.max-pending-bytes", default: s.maxPendingOutboundBytes)
        s.maxFramesPerTransaction = reader.int(forKey: "limits.max-transaction-frames", default: s.maxFramesPerTransaction)
        for (key, value) in [("limits.max-frame-bytes", s.decoderLimits.maxFrameBytes), ("limits.max-headers", s.decoderLimits.maxHeaders),
                             ("limits.max-header-line-bytes", s.decoderLimits.maxHeaderLineBytes), ("limits.max-subscriptions", s.maxSubscriptionsPerSession),
                             ("limits.max-pending-bytes", s.maxPendingOutboundBytes), ("limits.max-transaction-frames", s.maxFramesPerTransaction)] where value < 1 {
            throw Invalid(description: "\(key) must be ≥ 1, got \(value)")
        }
        s.brokerPrefixes = reader.stringArray(forKey: "destinations.broker-prefixes", default: s.brokerPrefixes)
        s.applicationPrefixes = reader.stringArray(forKey: "destinations.app-prefixes", default: s.applicationPrefixes)
        for p in s.brokerPrefixes + s.applicationPrefixes where !p.hasPrefix("/") {
            throw Invalid(description: "destination prefixes must start with '/', got '\(p)'")
        }
        session = s

        for name in reader.stringArray(forKey: "routes.names", default: []) {
            let base = "routes.\(name)"
            guard let destination = reader.string(forKey: ConfigKey(base + ".destination")) else {
                throw Invalid(description: "\(base).destination is required")
            }
            guard s.isApplicationDestination(destination) else {
                throw Invalid(description: "\(base).destination '\(destination)' must start with \(s.applicationPrefixes.joined(separator: " or "))")
            }
            do { _ = try DestinationPattern(destination) } catch {
                throw Invalid(description: "\(base).destination: \(error)")
            }
            let kindName = reader.string(forKey: ConfigKey(base + ".type"), default: "webhook")
            guard let kind = RouteConfiguration.Kind(rawValue: kindName) else {
                throw Invalid(description: "\(base).type '\(kindName)' is not supported (supported: webhook)")
            }
            guard let url = reader.string(forKey: ConfigKey(base + ".url")) else {
                throw Invalid(description: "\(base).url is required for a webhook route")
            }
            let timeout = reader.int(forKey: ConfigKey(base + ".timeout-ms"), default: 5_000)
            routes.append(RouteConfiguration(name: name, destination: destination, kind: kind, url: url, timeoutMs: timeout))
        }
    }
}
