import Testing

@testable import SwitchboardServer

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The open-files limit: raised to the hard limit at start, and compared with the connections
/// the configuration admits (the defaults admit 100,000 sessions and 10,000 HTTP connections
/// per port, far past the soft limit of 1,024 most shells give).
@Suite struct ProcessFilesTests {
    @Test func theSoftLimitIsRaisedToTheHardOne() throws {
        let soft = try #require(ProcessFiles.raiseSoftLimit())
        var limit = rlimit()
        #expect(getrlimit(ProcessFiles.resource, &limit) == 0)
        #if os(Linux)
        #expect(limit.rlim_cur == limit.rlim_max)
        #endif
        #expect(soft == (limit.rlim_cur >= rlim_t(Int.max) ? Int.max : Int(limit.rlim_cur)))
    }

    @Test func aLimitBelowWhatTheConfigurationAdmitsIsWarnedOf() async throws {
        let defaults = try await ConfigurationCheckTests().load().configuration
        let warning = try #require(ProcessFiles.warning(for: defaults, openFiles: 20_000))
        #expect(warning.contains("open-files limit (20000)"))
        #expect(ProcessFiles.warning(for: defaults, openFiles: 200_000) == nil)
        // 5,000 sessions and 1,000 HTTP connections on each of two ports, with the reserve.
        let small = try await ConfigurationCheckTests().load(["limits.max-connections=5000", "http.max-connections=1000", "http.api-port=0"]).configuration
        #expect(ProcessFiles.warning(for: small, openFiles: 8_024) == nil)
        #expect(ProcessFiles.warning(for: small, openFiles: 8_023) != nil)
        // http.max-connections turned off (0) cannot be compared.
        let unlimited = try await ConfigurationCheckTests().load(["http.max-connections=0"]).configuration
        #expect(ProcessFiles.warning(for: unlimited, openFiles: 10) == nil)
    }
}
