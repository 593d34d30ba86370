import ArgumentParser
import Configuration
import Foundation
import Logging
import Metrics
import Prometheus
import SwitchboardServer
import SwitchboardAuth
import SystemPackage

/// `switchboard`: the gateway executable.
@main
struct SwitchboardCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchboard",
        abstract: "Real-time gateway: STOMP over WebSocket for browsers, HTTP and Redis for backends.",
        discussion: """
        Settings come from, weakest first: built-in defaults, a YAML file (--config), environment
        variables (SWITCHBOARD_ + the key in upper case with '.' and '-' as '_', e.g.
        SWITCHBOARD_HTTP_PORT=9000) and flags (--set key=value, or the shortcuts below).
        The keys are listed in the README's configuration table, e.g. http.port, stomp.path,
        stomp.heartbeat.send-ms, limits.max-frame-bytes, routes.names.
        """
    )

    @Option(name: .long, help: "YAML configuration file.")
    var config: String?

    @Option(name: .long, help: "Listen address (http.host). Default 0.0.0.0.")
    var host: String?

    @Option(name: .shortAndLong, help: "Listen port (http.port). Default 8080.")
    var port: Int?

    @Option(name: .long, help: "WebSocket STOMP endpoint path (stomp.path). Default /stomp.")
    var stompPath: String?

    @Option(name: .long, help: "Log level (log.level): trace, debug, info, notice, warning, error.")
    var logLevel: String?

    @Option(name: .customLong("hash-api-key"), help: ArgumentHelp("Print the SHA-256 to put in auth.api-keys.<name>.sha256 for this key, and exit.", valueName: "key"))
    var hashAPIKey: String?

    @Option(name: .customLong("set"), help: ArgumentHelp("Set any configuration key, e.g. --set stomp.heartbeat.send-ms=5000.", valueName: "key=value"))
    var overrides: [String] = []

    func run() async throws {
        if let hashAPIKey {
            print(APIKeyStore.hash(hashAPIKey))
            return
        }
        var flagValues: [String: String] = [:]
        func put(_ key: String, _ value: String?) {
            if let value { flagValues[Self.environmentName(key)] = value }
        }
        put("http.host", host)
        put("http.port", port.map(String.init))
        put("stomp.path", stompPath)
        put("log.level", logLevel)
        for item in overrides {
            guard let eq = item.firstIndex(of: "="), eq != item.startIndex else {
                throw ValidationError("--set expects key=value, got '\(item)'")
            }
            put(String(item[..<eq]), String(item[item.index(after: eq)...]))
        }
        var providers: [any ConfigProvider] = [
            EnvironmentVariablesProvider(environmentVariables: flagValues),
            EnvironmentVariablesProvider(environmentVariables: Self.prefixedEnvironment()),
        ]
        if let config {
            guard FileManager.default.fileExists(atPath: config) else {
                throw ValidationError("configuration file not found: \(config)")
            }
            providers.append(try await FileProvider<YAMLSnapshot>(filePath: FilePath(config)))
        }
        let reader = ConfigReader(providers: providers)
        let settings: SwitchboardConfiguration
        do {
            settings = try SwitchboardConfiguration(reader: reader)
        } catch {
            throw ValidationError("invalid configuration: \(error)")
        }
        var levels: [String: Logger.Level] = [:]
        for subsystem in ["server", "session", "http", "redis", "routes"] {
            if let raw = reader.string(forKey: ConfigKey("log.levels.\(subsystem)")) {
                guard let level = Logger.Level(rawValue: raw) else {
                    throw ValidationError("invalid configuration: log.levels.\(subsystem) must be trace, debug, info, notice, warning, error or critical")
                }
                levels[subsystem] = level
            }
        }
        let formatName = reader.string(forKey: "log.format", default: "text")
        guard let format = LogSetup.Format(rawValue: formatName) else {
            throw ValidationError("invalid configuration: log.format must be text or json, got '\(formatName)'")
        }
        LogSetup(format: format, defaultLevel: settings.logLevel, levels: levels).bootstrap()
        let logger = Logger(label: "switchboard.server")
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let gateway = try await SwitchboardGateway(configuration: settings, logger: logger, metricsRegistry: registry)
        try await gateway.run()
    }

    /// `stomp.heartbeat.send-ms` → `STOMP_HEARTBEAT_SEND_MS` (the environment provider's form).
    static func environmentName(_ key: String) -> String {
        String(key.uppercased().map { $0.isLetter || $0.isNumber ? $0 : "_" })
    }

    /// `SWITCHBOARD_*` environment variables with the prefix removed.
    static func prefixedEnvironment() -> [String: String] {
        var out: [String: String] = [:]
        for (k, v) in ProcessInfo.processInfo.environment where k.hasPrefix("SWITCHBOARD_") {
            out[String(k.dropFirst("SWITCHBOARD_".count))] = v
        }
        return out
    }
}
