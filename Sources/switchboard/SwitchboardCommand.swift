import ArgumentParser
import Foundation
import Logging
import Metrics
import Prometheus
import SwitchboardAuth
import SwitchboardServer

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
            The keys are listed in docs/configuration.md (--configuration-reference prints it), e.g.
            http.port, stomp.path, stomp.heartbeat.send-ms, limits.max-frame-bytes, routes.names.
            An unknown key or a bad value stops start-up.
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

    @Flag(name: .customLong("configuration-reference"), help: "Print every configuration key (Markdown, as in docs/configuration.md) and exit.")
    var configurationReference = false

    func run() async throws {
        if configurationReference {
            print(ConfigKeyCatalog.markdown(), terminator: "")
            return
        }
        if let hashAPIKey {
            print(APIKeyStore.hash(hashAPIKey))
            return
        }
        var flags: [(key: String, value: String)] = []
        func put(_ key: String, _ value: String?) {
            if let value { flags.append((key, value)) }
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
        let sources = ConfigurationSources(yamlFile: config, flags: flags, environment: ProcessInfo.processInfo.environment)
        let loaded: ConfigurationSources.Loaded
        do {
            loaded = try await sources.load()
        } catch {
            throw ValidationError("invalid configuration: \(error)")
        }
        let settings = loaded.configuration
        LogSetup(format: settings.log.format, defaultLevel: settings.log.level, levels: settings.log.levels).bootstrap()
        let logger = Logger(label: "switchboard.server")
        for warning in loaded.warnings { logger.warning("\(warning)") }
        if let openFiles = ProcessFiles.raiseSoftLimit(), let warning = ProcessFiles.warning(for: settings, openFiles: openFiles) {
            logger.warning("\(warning)")
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let gateway = try await SwitchboardGateway(configuration: settings, logger: logger, metricsRegistry: registry)
        try await gateway.run()
    }
}
