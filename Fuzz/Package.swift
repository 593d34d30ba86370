// swift-tools-version:6.1
//
// Fuzz targets for Switchboard's parsers (libFuzzer). A separate package so the main build
// never sees `-sanitize=fuzzer` or unsafe flags. The library targets are the main package's
// own sources, reached through relative symlinks in Sources/ (committed in git).
//
// Build and run with Fuzz/run.sh; see docs/fuzzing.md.
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

// libFuzzer provides `main`; the fuzz entry point is `LLVMFuzzerTestOneInput`.
let fuzzSettings: [SwiftSetting] = swiftSettings + [
    .unsafeFlags(["-parse-as-library"]),
]

let package = Package(
    name: "SwitchboardFuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    ],
    targets: [
        // Symlink: Sources/STOMPCodec -> ../../Sources/STOMPCodec
        .target(
            name: "STOMPCodec",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // Symlink: Sources/RedisClient -> ../../Sources/RedisClient
        .target(
            name: "RedisClient",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["README.md"],
            swiftSettings: swiftSettings
        ),
        // Symlink: Sources/SwitchboardCore -> ../../Sources/SwitchboardCore
        .target(
            name: "SwitchboardCore",
            dependencies: [
                "STOMPCodec",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Symlink: Sources/SwitchboardAPIModel -> ../../Sources/SwitchboardAPIModel
        .target(
            name: "SwitchboardAPIModel",
            dependencies: [
                "STOMPCodec",
                "SwitchboardCore",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            exclude: ["README.md"],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "FuzzSTOMPDecoder",
            dependencies: [
                "STOMPCodec",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: fuzzSettings
        ),
        .executableTarget(
            name: "FuzzRESPParser",
            dependencies: [
                "RedisClient",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: fuzzSettings
        ),
        .executableTarget(
            name: "FuzzAPIJSON",
            dependencies: [
                "SwitchboardAPIModel",
                "STOMPCodec",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: fuzzSettings
        ),
    ]
)
