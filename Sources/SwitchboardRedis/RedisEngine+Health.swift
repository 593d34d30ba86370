import NIOConcurrencyHelpers
import NIOCore
import Redis
import SwitchboardWire

/// What readiness, `/health` and `/metrics` say about Redis, on one server or a cluster.
extension RedisEngine {
    /// Why Redis is not usable now (empty: it is): a connection down on one server, an
    /// unreachable cluster or one whose `cluster_state` is not `ok`.
    package var redisProblems: [String] {
        switch redis {
        case .single(let client):
            return [RedisConnectionRole.commands, .subscriptions].compactMap { role in
                guard client.connectionState(role) != .connected else { return nil }
                let lastError = client.lastConnectError(role).map { " (\($0))" } ?? ""
                return "redis \(role) connection is \(client.connectionState(role))\(lastError)"
            }
        case .cluster:
            return clusterHealth.withLockedValue { $0.problem }.map { [$0] } ?? []
        }
    }

    /// The state of a connection role as `/health` shows it (on a cluster: `connected` while the
    /// cluster answers with `cluster_state:ok`).
    package func connectionStateDescription(_ role: RedisConnectionRole) -> String {
        switch redis {
        case .single(let client): "\(client.connectionState(role))"
        case .cluster: redisProblems.isEmpty ? "connected" : "disconnected"
        }
    }

    /// On a cluster: asks a primary for `CLUSTER INFO` every second, and records a problem while
    /// it does not answer or answers another state than `ok` (before the first answer, the
    /// cluster counts as not reached yet).
    func startClusterHealthChecks() {
        guard redis.isCluster else { return }
        let redis = self.redis
        let health = self.clusterHealth
        let task = promiseLoop.scheduleRepeatedTask(initialDelay: .zero, delay: .seconds(1)) { _ in
            let check = health.withLockedValue { h in
                h.sent += 1
                return h.sent
            }
            redis.send(RawCommand(arguments: ["CLUSTER", "INFO"])).whenComplete { result in
                let problem: String?
                switch result {
                case .success(let token):
                    let text = (try? String(fromRESP: token)) ?? ""
                    let state = text.split(whereSeparator: \.isNewline).first { $0.hasPrefix("cluster_state:") }?.dropFirst("cluster_state:".count)
                    problem = state == "ok" ? nil : "redis cluster_state is \(state.map(String.init) ?? "unknown")"
                case .failure(let error):
                    problem = "redis cluster unreachable (\(error))"
                }
                health.withLockedValue { $0.record(problem, ofCheck: check) }
            }
        }
        clusterHealth.withLockedValue { $0.task = task }
    }

    func stopClusterHealthChecks() {
        clusterHealth.withLockedValue { $0.task }?.cancel()
    }
}

/// The last `CLUSTER INFO` verdict (see ``RedisEngine/startClusterHealthChecks()``).
struct ClusterHealth {
    var problem: String? = "redis cluster not reached yet"
    var task: RepeatedTask?
    /// Checks sent, and the newest whose answer was recorded: a check answered late (a node
    /// that timed out, a slow failover) does not overwrite the verdict of a later one.
    var sent: UInt64 = 0
    var recorded: UInt64 = 0

    mutating func record(_ problem: String?, ofCheck check: UInt64) {
        guard check > recorded else { return }
        recorded = check
        self.problem = problem
    }
}
