#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The process's open-files limit (`RLIMIT_NOFILE`): every connection, Redis connection and
/// webhook connection is one. Raised to the hard limit at start (the soft limit is often
/// 1,024, the hard one much higher), and compared with what the configuration lets in.
package enum ProcessFiles {
    /// Raises the soft limit to the hard one; returns the soft limit then in force (nil: unknown).
    package static func raiseSoftLimit() -> Int? {
        var limit = rlimit()
        guard getrlimit(resource, &limit) == 0 else { return nil }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            // (Refused, e.g. macOS's unlimited hard limit: the soft one stays.)
            if setrlimit(resource, &raised) == 0 { limit = raised }
        }
        return limit.rlim_cur >= rlim_t(Int.max) ? Int.max : Int(limit.rlim_cur)
    }

    #if canImport(Glibc)
    package static let resource = Int32(RLIMIT_NOFILE.rawValue)
    #else
    package static let resource = Int32(RLIMIT_NOFILE)
    #endif

    /// Descriptors kept for Redis, webhooks, logs and the listening sockets.
    static let reserve = 1_024

    /// A warning when the connections the configuration admits (`limits.max-connections`,
    /// `http.max-connections` per HTTP port) and ``reserve`` need more descriptors than
    /// `openFiles`; nil when they fit or a limit is off (0).
    package static func warning(for configuration: SwitchboardConfiguration, openFiles: Int) -> String? {
        let ports = configuration.http.apiPort == nil ? 1 : 2
        let sessions = configuration.limits.maxConnections
        let http = configuration.http.maxConnections
        guard sessions > 0, http > 0 else { return nil }
        let (needed, overflow) = (sessions + ports * http).addingReportingOverflow(reserve)
        guard overflow || needed > openFiles else { return nil }
        return "the open-files limit (\(openFiles)) is below what limits.max-connections (\(sessions)) and http.max-connections "
            + "(\(http) per port) admit, with \(reserve) kept for Redis and webhooks: past it new connections wait (accepting pauses) "
            + "and Redis or webhook connections fail; raise the limit (ulimit -n, LimitNOFILE=) or lower those"
    }
}
