import Logging
import Testing

@testable import SwitchboardServer

/// The bound of a graceful shutdown counted the HTTP connections' grace once, while the
/// session port and the API port each take it (and a second) in turn: with `http.api-port`
/// and a grace above about 7 s, a shutdown whose stages all ran long was cut short, its
/// presence facts and the lease's leave cancelled, and the process still exited 0.
@Suite struct ShutdownBoundTests {
    static func bound(_ settings: [String]) async throws -> Duration {
        let loaded = try await ConfigurationCheckTests().load(["server.threads=1", "http.port=0", "http.host=127.0.0.1"] + settings)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let gateway = try await SwitchboardGateway(configuration: loaded.configuration, logger: logger)
        defer { Task { try? await gateway.group.shutdownGracefully() } }
        return gateway.shutdownBound
    }

    @Test func everyStageCounts() async throws {
        let grace = ["server.shutdown-grace-ms=20000", "server.drain-delay-ms=3000"]
        // drain (3 + 20 + 1 s), session port (21 s), margin 10 s
        #expect(try await Self.bound(grace) == .seconds(55))
        // and the API port's 21 s
        #expect(try await Self.bound(grace + ["http.api-port=0"]) == .seconds(76))
    }
}
