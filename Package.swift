// swift-tools-version:6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny")
]

// Optional parts, reached from this one manifest behind environment flags, so a plain build (and
// every package that depends on this one) never resolves their dependencies nor sees unsafe flags:
//   SWITCHBOARD_LOADGEN=1     the load generator switchboard-bench (hdrhistogram-swift), used by
//                             scripts/test and scripts/bench, docs/benchmarks.md
//   SWITCHBOARD_BENCHMARKS=1  micro-benchmarks (ordo-one/benchmark), docs/micro-benchmarks.md
//   SWITCHBOARD_FUZZ=1        libFuzzer targets (unsafe flags), built by Fuzz/run.sh, docs/fuzzing.md
func flag(_ name: String) -> Bool {
    guard let value = Context.environment[name] else { return false }
    return !value.isEmpty && value != "0"
}

let package = Package(
    name: "switchboard",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "switchboard", targets: ["switchboard"]),
        .executable(name: "greeting-service", targets: ["greeting-service"]),
        .library(name: "STOMPCodec", targets: ["STOMPCodec"]),
        .library(name: "Redis", targets: ["Redis"]),
        .library(name: "SwitchboardWire", targets: ["SwitchboardWire"]),
        .library(name: "SwitchboardKit", targets: ["SwitchboardKit"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-configuration.git", from: "1.4.0", traits: ["YAML"]),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1", traits: []),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-system.git", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.7.1"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-crypto.git", "4.1.0"..<"5.0.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        // Webhooks: pooled keep-alive connections, https, deadlines.
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        // Already resolved for swift-configuration's YAML trait; read directly to list a
        // configuration file's keys (unknown keys stop start-up).
        .package(url: "https://github.com/jpsim/Yams", "5.4.0"..<"7.0.0"),
    ],
    targets: [
        .target(
            name: "STOMPCodec",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio")
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "SwitchboardWire",
            dependencies: [
                "STOMPCodec",
                "Redis",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ],
            exclude: ["README.md"],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "SwitchboardCore",
            dependencies: [
                "STOMPCodec",
                "SwitchboardWire",
                "SwitchboardRoutes",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "SwitchboardRoutes",
            dependencies: [
                "SwitchboardWire",
                "STOMPCodec",
                "Redis",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "Redis",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["README.md"],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "SwitchboardRedis",
            dependencies: [
                "STOMPCodec",
                .product(name: "Metrics", package: "swift-metrics"),
                "SwitchboardCore",
                "SwitchboardRoutes",
                "SwitchboardWire",
                "Redis",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "SwitchboardConsole",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio")
            ],
            exclude: ["README.md"],
            resources: [.copy("Assets")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "SwitchboardAPIModel",
            dependencies: [
                "STOMPCodec",
                "SwitchboardCore",
                "SwitchboardRoutes",
                "SwitchboardWire",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            exclude: ["README.md"],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "SwitchboardAuth",
            dependencies: [
                "SwitchboardCore",
                "SwitchboardRoutes",
                "SwitchboardWire",
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            exclude: ["README.md"],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "SwitchboardServer",
            dependencies: [
                "STOMPCodec",
                "SwitchboardCore",
                "SwitchboardWire",
                "SwitchboardRoutes",
                "SwitchboardRedis",
                "Redis",
                "SwitchboardConsole",
                "SwitchboardAPIModel",
                "SwitchboardAuth",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "switchboard",
            dependencies: [
                "SwitchboardServer",
                "SwitchboardAuth",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "SwitchboardKit",
            dependencies: [
                "Redis",
                "SwitchboardWire",
                "STOMPCodec",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["README.md"],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "greeting-service",
            dependencies: [
                "SwitchboardKit",
                "Redis",
                "STOMPCodec",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RedisClientTests",
            dependencies: [
                "Redis",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // The one redis-server fixture of the tests that need a real server.
        .target(
            name: "RedisServerTesting",
            dependencies: [
                "Redis",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/RedisServerTesting",
            swiftSettings: swiftSettings
        ),
        // RedisClient against a real redis-server (RedisClientTests: without one).
        .testTarget(
            name: "RedisClientIntegrationTests",
            dependencies: [
                "Redis",
                "RedisServerTesting",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "SwitchboardKitTests",
            dependencies: [
                "RedisServerTesting",
                "SwitchboardKit",
                "SwitchboardRoutes",
                "SwitchboardRedis",
                "SwitchboardCore",
                "SwitchboardWire",
                "Redis",
                "STOMPCodec",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "STOMPCodecTests",
            dependencies: [
                "STOMPCodec",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "SwitchboardCoreTests",
            dependencies: [
                "SwitchboardCore",
                "SwitchboardRoutes",
                "SwitchboardWire",
                .product(name: "Logging", package: "swift-log"),
                "STOMPCodec",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "SwitchboardAPIModelTests",
            dependencies: [
                "SwitchboardAPIModel",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "SwitchboardServerTests",
            dependencies: [
                "SwitchboardServer",
                "RedisServerTesting",
                "Redis",
                "SwitchboardCore",
                "SwitchboardRoutes",
                "SwitchboardWire",
                "SwitchboardAPIModel",
                "SwitchboardAuth",
                "STOMPCodec",
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .testTarget(
            name: "SwitchboardAuthTests",
            dependencies: [
                "SwitchboardAuth",
                "SwitchboardCore",
                "SwitchboardRoutes",
                "SwitchboardWire",
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "SwitchboardRoutesTests",
            dependencies: [
                "SwitchboardRoutes",
                "RedisServerTesting",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                "SwitchboardCore",
                "SwitchboardWire",
                "STOMPCodec",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "SwitchboardRedisTests",
            dependencies: [
                "Redis",
                "RedisServerTesting",
                "SwitchboardRedis",
                "SwitchboardCore",
                "SwitchboardRoutes",
                "SwitchboardWire",
                "STOMPCodec",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ]
        ),
    ]
)

if flag("SWITCHBOARD_LOADGEN") {
    package.dependencies.append(.package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.1.0"))
    package.products.append(.executable(name: "switchboard-bench", targets: ["switchboard-bench"]))
    package.products.append(.executable(name: "switchboard-kit-bench", targets: ["switchboard-kit-bench"]))
    // SwitchboardKit's publisher at a paced rate, for scripts/bench/kit-publish.
    package.targets.append(
        .executableTarget(
            name: "switchboard-kit-bench",
            dependencies: [
                "SwitchboardKit",
                "SwitchboardWire",
                "Redis",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        )
    )
    package.targets.append(
        .executableTarget(
            name: "switchboard-bench",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: swiftSettings
        )
    )
}

if flag("SWITCHBOARD_BENCHMARKS") {
    // `swift package --disable-sandbox benchmark` runs the executable targets whose directory is
    // in a folder named Benchmarks/.
    package.dependencies.append(
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.1", traits: ["MallocInterposer"])
    )
    package.targets.append(
        .executableTarget(
            name: "SwitchboardBenchmarks",
            dependencies: [
                "STOMPCodec",
                "SwitchboardCore",
                "SwitchboardRoutes",
                "SwitchboardWire",
                "Redis",
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/SwitchboardBenchmarks",
            swiftSettings: swiftSettings,
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        )
    )
}

if flag("SWITCHBOARD_FUZZ") {
    // Build with `--sanitize=fuzzer` (Fuzz/run.sh) so the code under test is instrumented too.
    // libFuzzer provides `main`; the entry point is `LLVMFuzzerTestOneInput`.
    let fuzzSwiftSettings = swiftSettings + [.unsafeFlags(["-parse-as-library"])]
    let fuzzLinkerSettings: [LinkerSetting] = [.unsafeFlags(["-sanitize=fuzzer"])]
    let fuzzTargets: [(name: String, dependencies: [Target.Dependency])] = [
        ("FuzzSTOMPDecoder", ["STOMPCodec"]),
        ("FuzzRESPParser", ["Redis"]),
        ("FuzzAPIJSON", ["SwitchboardAPIModel", "STOMPCodec"]),
    ]
    for fuzz in fuzzTargets {
        package.targets.append(
            .executableTarget(
                name: fuzz.name,
                dependencies: fuzz.dependencies + [.product(name: "NIOCore", package: "swift-nio")],
                path: "Fuzz/\(fuzz.name)",
                swiftSettings: fuzzSwiftSettings,
                linkerSettings: fuzzLinkerSettings
            )
        )
    }
}
