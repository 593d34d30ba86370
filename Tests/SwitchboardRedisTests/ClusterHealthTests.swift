import Testing

@testable import SwitchboardRedis

/// The cluster's health checks are sent every second, and their answers may come in any
/// order: a late answer (a node that timed out) does not overwrite a later check's verdict.
struct ClusterHealthTests {
    @Test func aLateAnswerDoesNotOverwriteTheVerdictOfALaterCheck() {
        var health = ClusterHealth()
        #expect(health.problem == "redis cluster not reached yet")
        // Check 1 hangs; check 2 answers `ok`; then check 1 fails.
        health.record(nil, ofCheck: 2)
        #expect(health.problem == nil)
        health.record("redis cluster unreachable (timed out)", ofCheck: 1)
        #expect(health.problem == nil)
        health.record("redis cluster_state is fail", ofCheck: 3)
        #expect(health.problem == "redis cluster_state is fail")
        health.record(nil, ofCheck: 3)
        #expect(health.problem == "redis cluster_state is fail")
        health.record(nil, ofCheck: 4)
        #expect(health.problem == nil)
    }
}
