import NIOCore

/// Redis Cluster settings: the seed nodes and the limits of the routing.
public struct RedisClusterConfiguration: Sendable, Hashable {
    /// Nodes asked for the slot map (`CLUSTER SHARDS`) at start; later, the nodes of the last map
    /// are asked first.
    public var nodes: [RedisServerAddress]
    /// How many `MOVED`/`ASK` redirects and retries (`TRYAGAIN`, `CLUSTERDOWN`, unreachable node)
    /// one command may take before it fails with ``RedisClientError/tooManyRedirects``.
    public var maximumRedirects: Int
    /// The first retry delay (after `TRYAGAIN`, `CLUSTERDOWN` or an unreachable node); the n-th
    /// retry waits n times as long.
    public var retryDelay: TimeAmount
    /// Commands in flight on one node's command connection at most; more fail at once with
    /// ``RedisClientError/queueFull`` (back-pressure; nothing is queued in the client).
    public var maximumPendingCommandsPerNode: Int
    /// How often the slot map is read even without a redirect or lost connection.
    public var topologyRefreshInterval: TimeAmount

    public init(
        nodes: [RedisServerAddress],
        maximumRedirects: Int = 16,
        retryDelay: TimeAmount = .milliseconds(100),
        maximumPendingCommandsPerNode: Int = 10_000,
        topologyRefreshInterval: TimeAmount = .seconds(10)
    ) {
        self.nodes = nodes
        self.maximumRedirects = maximumRedirects
        self.retryDelay = retryDelay
        self.maximumPendingCommandsPerNode = maximumPendingCommandsPerNode
        self.topologyRefreshInterval = topologyRefreshInterval
    }

    /// Parses `host:port`, `[v6]:port` or `host` (port 6379).
    public static func parseNode(_ text: String) throws -> RedisServerAddress {
        do {
            let address = try RedisSentinelConfiguration.parseNode(text)
            let hasPort = text.hasPrefix("[") ? text.contains("]:") : text.contains(":")
            return hasPort ? address : RedisServerAddress(host: address.host, port: 6379)
        } catch {
            throw RedisClientError.invalidConfiguration("bad cluster node address '\(text)'")
        }
    }
}
