import Foundation
import Testing

@testable import SwitchboardServer

/// Configuration mistakes are loud: unknown keys (file, flags), wrong types and out-of-range
/// values stop loading with an error naming the key; unknown environment variables warn.
@Suite struct ConfigurationCheckTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Loads from `--set`-style flags, optional YAML text and environment; returns the error text.
    func loadError(_ flags: [String] = [], yaml: String? = nil, environment: [String: String] = [:]) async -> String? {
        do {
            _ = try await load(flags, yaml: yaml, environment: environment)
            return nil
        } catch {
            return "\(error)"
        }
    }

    func load(_ flags: [String] = [], yaml: String? = nil, environment: [String: String] = [:]) async throws -> ConfigurationSources.Loaded {
        var file: String?
        if let yaml {
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("switchboard-config-\(UUID()).yaml").path
            try yaml.write(toFile: path, atomically: true, encoding: .utf8)
            file = path
        }
        defer { if let file { try? FileManager.default.removeItem(atPath: file) } }
        let pairs = flags.map { item in
            let eq = item.firstIndex(of: "=")!
            return (key: String(item[..<eq]), value: String(item[item.index(after: eq)...]))
        }
        return try await ConfigurationSources(yamlFile: file, flags: pairs, environment: environment).load()
    }

    @Test func unknownFlagKeyNamesTheClosestKnownOne() async {
        #expect(await loadError(["redis.ulr=redis://127.0.0.1:6379"]) == "unknown key redis.ulr; did you mean redis.url? (--set)")
        #expect(await loadError(["stomp.heartbeat.send=100"])?.contains("did you mean stomp.heartbeat.send-ms?") == true)
        #expect(await loadError(["port=9000"])?.contains("unknown key port; did you mean http.port?") == true)
    }

    @Test func unknownYAMLKeyNamesTheClosestKnownOne() async {
        let error = await loadError(yaml: "redis:\n  ulr: redis://127.0.0.1:6379\n")
        #expect(error?.hasPrefix("unknown key redis.ulr; did you mean redis.url? (in ") == true)
        #expect(await loadError(yaml: "http:\n  prot: 9000\n")?.contains("unknown key http.prot; did you mean http.port?") == true)
    }

    @Test func routeKeysNeedTheirNameInTheNamesList() async throws {
        let yaml = """
            routes:
              names: [greet]
              greet: {destination: /app/greet, url: "http://127.0.0.1:9/x"}
              other: {destination: /app/other, url: "http://127.0.0.1:9/y"}
            """
        #expect(await loadError(yaml: yaml)?.contains("unknown key routes.other.destination: 'other' is not in routes.names") == true)
        #expect(
            await loadError(yaml: yaml.replacingOccurrences(of: "  other:", with: "  greet2:").replacingOccurrences(of: "url: \"http://127.0.0.1:9/y\"", with: "ulr: x"))?
                .contains("'greet2' is not in routes.names") == true)
        let listed = try await load(yaml: yaml.replacingOccurrences(of: "[greet]", with: "[greet, other]"))
        #expect(listed.configuration.routes.map(\.name) == ["greet", "other"])
        #expect(
            await loadError(["routes.names=greet", "routes.greet.destination=/app/g", "routes.greet.ulr=http://x"])?
                .contains("unknown key routes.greet.ulr; did you mean routes.greet.url?") == true)
    }

    @Test func unknownEnvironmentVariableIsOnlyAWarning() async throws {
        let loaded = try await load(environment: [
            "SWITCHBOARD_REDIS_ULR": "redis://x", "SWITCHBOARD_HTTP_PORT": "9001",
            "SWITCHBOARD_BIN": "/usr/bin/switchboard", "SWITCHBOARD_LOADGEN": "1", "SWITCHBOARD_CHURN_SESSIONS": "600",
            "SWITCHBOARD_CHURNY": "1", "HOME": "/root",
        ])
        #expect(loaded.configuration.http.port == 9001)
        #expect(loaded.configuration.redis == nil)
        // The tools' own variables (SWITCHBOARD_BIN, SWITCHBOARD_LOADGEN, SWITCHBOARD_CHURN_*) are
        // not warned about; a name merely starting like one is.
        #expect(loaded.warnings.count == 2)
        #expect(loaded.warnings.contains("unknown environment variable SWITCHBOARD_REDIS_ULR (not a configuration key; ignored); did you mean SWITCHBOARD_REDIS_URL?"))
        #expect(loaded.warnings.contains { $0.hasPrefix("unknown environment variable SWITCHBOARD_CHURNY ") })
    }

    @Test(arguments: [
        (["http.port=abc"], "http.port must be an integer, got 'abc'"),
        (["http.tcp-nodelay=maybe"], "http.tcp-nodelay must be true or false, got 'maybe'"),
        (["stomp.heartbeat.tolerance=high"], "stomp.heartbeat.tolerance must be a number, got 'high'"),
        (["http.port=70000"], "http.port must be 0…65535, got 70000"),
        (["limits.max-subscriptions=-1"], "limits.max-subscriptions must be ≥ 1, got -1"),
        (["limits.frames-per-second=-5"], "limits.frames-per-second must be ≥ 0, got -5"),
        (["http.backlog=0"], "http.backlog must be ≥ 1, got 0"),
        (["auth.jwt.leeway-seconds=-1"], "auth.jwt.leeway-seconds must be ≥ 0, got -1"),
        (["redis.url=localhost:6379"], "redis.url 'localhost:6379' is not a valid redis:// URL"),
        (["redis.url=redis://user:hunter2@host:99999"], "redis.url 'redis://***@host:99999' is not a valid redis:// URL"),
        (["redis.url=redis://x", "redis.command-timeout-ms=0"], "redis.command-timeout-ms must be ≥ 1, got 0"),
        (["redis.url=redis://x", "redis.channel-prefix=sb{1}:"], "redis.channel-prefix must not contain '{' or '}', got 'sb{1}:'"),
        (["redis.url=redis://x", "redis.unreachable-wait-ms=-1"], "redis.unreachable-wait-ms must be ≥ 0, got -1"),
        (["redis.url=redis://x", "redis.wait-replicas=-1"], "redis.wait-replicas must be ≥ 0, got -1"),
        (["redis.url=redis://x", "redis.wait-replicas-timeout-ms=0"], "redis.wait-replicas-timeout-ms must be ≥ 1, got 0"),
        (
            ["routes.names=o", "routes.o.destination=/app/o", "routes.o.type=redis-stream", "routes.o.stream=s", "routes.o.wait-replicas=-1"],
            "routes.o.wait-replicas must be ≥ 0, got -1"
        ),
        (["routes.names=g", "routes.g.destination=/app/g", "routes.g.url=ftp://x/y"], "routes.g.url: the webhook url must be an absolute http:// or https:// URL"),
        (["routes.names=g", "routes.g.destination=/app/g", "routes.g.url=http://x/", "routes.g.timeout-ms=-1"], "routes.g.timeout-ms must be ≥ 1, got -1"),
        (["http.allowed-origins=https://a.example/app"], "http.allowed-origins entry 'https://a.example/app' is not an origin: scheme://host[:port]"),
        // Too large to use: each trapped at start-up or at the first connection.
        (["server.shutdown-grace-ms=9223372036854775807"], "server.shutdown-grace-ms must be ≤ 1099511627776, got 9223372036854775807"),
        (["server.drain-delay-ms=9223372036854775807"], "server.drain-delay-ms must be ≤ 1099511627776, got 9223372036854775807"),
        (["http.backlog=3000000000"], "http.backlog must be ≤ 2147483647, got 3000000000"),
        (["limits.max-frame-bytes=4294967296"], "limits.max-frame-bytes must be ≤ 1073741824, got 4294967296"),
        (
            ["redis.url=redis://127.0.0.1:1", "redis.canary-interval-ms=2000"],
            "redis.canary-timeout-ms (3000) must be at least twice redis.canary-interval-ms (2000)"
        ),
        (["limits.frames-per-second=4611686018427387904"], "limits.frames-per-second must be ≤ 1099511627776, got 4611686018427387904"),
        (["limits.bytes-per-second=4611686018427387904"], "limits.bytes-per-second must be ≤ 1099511627776, got 4611686018427387904"),
        (
            ["routes.names=g", "routes.g.destination=/app/g", "routes.g.url=http://x/", "routes.g.timeout-ms=9223372036854775807"],
            "routes.g.timeout-ms must be ≤ 1099511627776, got 9223372036854775807"
        ),
    ])
    func badValueNamesKeyAndValue(flags: [String], message: String) async {
        let error = await loadError(flags)
        #expect(error?.hasPrefix(message) == true, "\(error ?? "no error")")
        #expect(error?.contains("hunter2") != true)
    }

    @Test func badValueInYAMLNamesKeyAndValue() async {
        #expect(await loadError(yaml: "http:\n  port: abc\n") == "http.port must be an integer, got 'abc'")
        #expect(await loadError(yaml: "routes:\n  names: greet\n") == "routes.names must be a list, got 'greet'")
        #expect(await loadError(yaml: "http: [1, 2]\n")?.hasPrefix("unknown key http; did you mean") == true)
        #expect(await loadError(yaml: "- a\n- b\n")?.contains("must hold a YAML mapping") == true)
    }

    @Test func oldFallbackKeyAndEnvironmentSpellingOfFlagsStayAccepted() async throws {
        let loaded = try await load(["http.nagle-when-busy-percent=70", "stomp_heartbeat_send_ms=1234"])
        #expect(loaded.configuration.server.busyPercent == 70)
        #expect(loaded.configuration.stomp.heartBeat.send == 1234)
    }

    @Test func logSettingsAreReadWithTheRest() async throws {
        let loaded = try await load(["log.format=json", "log.levels.http=warning"])
        #expect(loaded.configuration.log.format == .json)
        #expect(loaded.configuration.log.levels == ["http": .warning])
        #expect(await loadError(["log.levels.redis=loud"]) == "log.levels.redis must be one of trace, debug, info, notice, warning, error, critical; got 'loud'")
    }

    @Test func everyExampleFileLoads() async throws {
        let examples = Self.repository.appendingPathComponent("examples")
        let files = try FileManager.default.contentsOfDirectory(atPath: examples.path).filter { $0.hasSuffix(".yaml") }
        #expect(!files.isEmpty)
        for file in files {
            let path = examples.appendingPathComponent(file).path
            let loaded = try await ConfigurationSources(yamlFile: path).load()
            #expect(loaded.warnings.isEmpty, "\(file)")
        }
    }
}
