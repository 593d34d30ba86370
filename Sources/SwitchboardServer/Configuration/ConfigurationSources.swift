import Configuration
import Foundation
import NIOConcurrencyHelpers
import SwitchboardWire
import SystemPackage
import Yams

/// Where the settings come from, weakest first: a YAML file, `SWITCHBOARD_*` environment
/// variables, flags (`--set key=value` and the shortcuts).
///
/// Loading is strict: an unknown key in the file or the flags, a value of the wrong type or out
/// of range stops start-up with an error naming the key ("unknown key redis.ulr; did you mean
/// redis.url?"). An unknown `SWITCHBOARD_*` variable is only a warning, as environments carry
/// unrelated variables.
package struct ConfigurationSources: Sendable {
    /// The YAML file (`--config`).
    package var yamlFile: String?
    /// Flag settings in order (a later one wins): key as given, value.
    package var flags: [(key: String, value: String)]
    /// The process environment; only `SWITCHBOARD_*` variables are read.
    package var environment: [String: String]

    /// `SWITCHBOARD_*` variables of the project's own tools (build flags, test and benchmark
    /// scripts), not configuration keys: gateways started by them inherit these silently.
    static let toolVariables: Set<String> = ["BIN", "BENCH_BIN", "BASELINE_BIN", "LOADGEN", "BENCHMARKS", "FUZZ", "SOAK"]
    /// Prefixes of tool variables (sizes of the soak tests).
    static let toolVariablePrefixes = ["JITTER_", "CHURN_"]

    static func isToolVariable(_ name: String) -> Bool {
        toolVariables.contains(name) || toolVariablePrefixes.contains { name.hasPrefix($0) }
    }

    package init(yamlFile: String? = nil, flags: [(key: String, value: String)] = [], environment: [String: String] = [:]) {
        self.yamlFile = yamlFile
        self.flags = flags
        self.environment = environment
    }

    /// A loaded configuration and the warnings to log once logging is set up.
    package struct Loaded: Sendable {
        package var configuration: SwitchboardConfiguration
        package var warnings: [String]
        /// Every key looked up while loading (for the test that the catalog matches them).
        package var keysRead: Set<String>
    }

    /// Reads and checks every setting.
    package func load() async throws -> Loaded {
        var flagValues: [String: String] = [:]
        for (key, value) in flags { flagValues[ConfigKeyCheck.environmentName(key)] = value }
        var variables: [String: String] = [:]
        for (name, value) in environment where name.hasPrefix("SWITCHBOARD_") {
            variables[String(name.dropFirst("SWITCHBOARD_".count))] = value
        }
        var providers: [any ConfigProvider] = [
            EnvironmentVariablesProvider(environmentVariables: flagValues),
            EnvironmentVariablesProvider(environmentVariables: variables),
        ]
        var fileKeys: [String] = []
        if let yamlFile {
            guard FileManager.default.fileExists(atPath: yamlFile) else {
                throw SwitchboardConfiguration.Invalid(description: "configuration file not found: \(yamlFile)")
            }
            fileKeys = try Self.yamlKeys(file: yamlFile)
            providers.append(try await FileProvider<YAMLSnapshot>(filePath: FilePath(yamlFile)))
        }
        let plain = ConfigReader(providers: providers)
        let typeErrors = TypeErrorCollector()
        let reader = ConfigReader(providers: providers, accessReporter: typeErrors)
        let check = ConfigKeyCheck(
            names: Dictionary(
                ConfigKeyCatalog.all.compactMap(\.namesKey).map {
                    ($0, reader.stringArray(forKey: ConfigKey($0), default: []))
                }, uniquingKeysWith: { a, _ in a }))
        if let typeError = typeErrors.first(rawValues: plain) { throw typeError }
        for (key, _) in flags where check.knownKey(environmentName: ConfigKeyCheck.environmentName(key)) == nil {
            throw SwitchboardConfiguration.Invalid(description: check.unknownKeyProblem(key) + " (--set)")
        }
        for key in fileKeys where !check.isKnown(key) {
            throw SwitchboardConfiguration.Invalid(description: check.unknownKeyProblem(key) + " (in \(yamlFile ?? ""))")
        }
        let warnings = variables.keys.sorted().filter {
            check.knownKey(environmentName: $0) == nil && !Self.isToolVariable($0)
        }.map(check.unknownEnvironmentWarning)

        let configuration: SwitchboardConfiguration
        do {
            configuration = try SwitchboardConfiguration(reader: reader)
        } catch {
            throw typeErrors.first(rawValues: plain) ?? error
        }
        if let typeError = typeErrors.first(rawValues: plain) { throw typeError }
        return Loaded(configuration: configuration, warnings: warnings + configuration.securityWarnings, keysRead: typeErrors.keysRead)
    }

    /// The leaf keys of a YAML file, dot-joined as swift-configuration's YAML provider keys them.
    static func yamlKeys(file: String) throws -> [String] {
        let text: String
        do { text = try String(contentsOfFile: file, encoding: .utf8) } catch {
            throw SwitchboardConfiguration.Invalid(description: "cannot read \(file): \(error)")
        }
        let root: Node?
        do { root = try Yams.compose(yaml: text) } catch {
            throw SwitchboardConfiguration.Invalid(description: "\(file) is not valid YAML: \(error)")
        }
        guard let root else { return [] }
        guard let mapping = root.mapping else {
            throw SwitchboardConfiguration.Invalid(description: "\(file) must hold a YAML mapping (key: value)")
        }
        var keys: [String] = []
        var pending: [(String, Node.Mapping)] = [("", mapping)]
        var next = 0
        while next < pending.count {
            let (prefix, mapping) = pending[next]
            next += 1
            for (keyNode, value) in mapping {
                let key = prefix + (keyNode.string ?? "\(keyNode)")
                if let nested = value.mapping { pending.append((key + ".", nested)) } else { keys.append(key) }
            }
        }
        return keys
    }
}

/// Records the keys read, and values that could not be read as their key's type: swift-configuration's
/// non-throwing getters fall back to the default then, which would hide `http.port=abc`.
final class TypeErrorCollector: AccessReporter, Sendable {
    private let failures = NIOLockedValueBox<[(key: String, type: ConfigType)]>([])
    private let read = NIOLockedValueBox<Set<String>>([])

    var keysRead: Set<String> { read.withLockedValue { $0 } }

    func report(_ event: AccessEvent) {
        _ = read.withLockedValue { $0.insert(event.metadata.key.components.joined(separator: ".")) }
        let failed =
            event.conversionError != nil
            || event.providerResults.contains {
                if case .failure = $0.result { return true } else { return false }
            }
        guard failed else { return }
        let key = event.metadata.key.components.joined(separator: ".")
        failures.withLockedValue { list in
            if !list.contains(where: { $0.key == key }) { list.append((key, event.metadata.valueType)) }
        }
    }

    /// The first failure as an error naming the key and (unless secret) the value.
    func first(rawValues: ConfigReader) -> SwitchboardConfiguration.Invalid? {
        guard let (key, type) = failures.withLockedValue({ $0.first }) else { return nil }
        let expected =
            switch type {
            case .int: "an integer"
            case .double: "a number"
            case .bool: "true or false"
            case .stringArray: "a list"
            default: "a \(type)"
            }
        let value: String
        if ConfigKeyCatalog.spec(named: key)?.isSecret == true {
            value = "(secret)"
        } else if let raw = rawValues.string(forKey: ConfigKey(key)) {
            value = "'\(raw)'"
        } else {
            value = "a list or mapping"
        }
        return SwitchboardConfiguration.Invalid(description: "\(key) must be \(expected), got \(value)")
    }
}
