import NIOCore
import Testing

@testable import Redis

/// A RESP value for building replies in tests.
indirect enum R {
    case bulk(String)
    case int(Int)
    case array([R])
    case map([(String, R)])

    var text: String {
        switch self {
        case .bulk(let s): "$\(s.utf8.count)\r\n\(s)\r\n"
        case .int(let n): ":\(n)\r\n"
        case .array(let a): "*\(a.count)\r\n" + a.map(\.text).joined()
        case .map(let m): "%\(m.count)\r\n" + m.map { R.bulk($0.0).text + $0.1.text }.joined()
        }
    }
}

func shardNode(_ port: Int, role: String, health: String = "online") -> R {
    .map([("id", .bulk("id\(port)")), ("port", .int(port)), ("ip", .bulk("127.0.0.1")), ("endpoint", .bulk("127.0.0.1")), ("role", .bulk(role)), ("health", .bulk(health))])
}

func address(_ port: Int) -> RedisServerAddress { RedisServerAddress(host: "127.0.0.1", port: port) }

@Suite("Redis Cluster: hash slots, slot map, redirects, subscription plans")
struct ClusterRoutingTests {
    /// Values of the server's `CLUSTER KEYSLOT` (and the examples of the cluster specification).
    @Test(arguments: [
        ("foo", 12182), ("bar", 5061), ("hello", 866), ("123456789", 12739), ("{user1000}.following", 3443),
        ("{user1000}.followers", 3443), ("foo{}{bar}", 8363), ("foo{{bar}}zap", 4015), ("foo{bar}{zap}", 5061), ("{}", 15257), ("", 0),
        ("sb:{/topic/a}:seq", 8785), ("é", 10180),
    ])
    func hashSlotMatchesKeyslot(key: String, slot: Int) {
        #expect(HashSlot(key: key).rawValue == slot)
    }

    @Test func hashTagsAndCrossSlot() throws {
        #expect(HashSlot(key: "a{x}b") == HashSlot(key: "x"))
        #expect(HashSlot(key: "{x}:seq") == HashSlot(key: "{x}:log"))
        #expect(try HashSlot(keys: []) == nil)
        #expect(try HashSlot(keys: ["{d}:seq", "{d}:log"]) == HashSlot(key: "d"))
        #expect(throws: RedisClientError.crossSlot) { try HashSlot(keys: ["foo", "bar"]) }
        #expect(GET("k").keysAffected == ["k"])
        #expect(FCALL(function: "f", keys: ["{a}1", "{a}2"], arguments: ["x"]).keysAffected == ["{a}1", "{a}2"])
        #expect(SPUBLISH(channel: "c", message: "m").keysAffected == ["c"])
        #expect(XREAD(streams: [(key: "s1", id: "0"), (key: "s2", id: "0")]).keysAffected == ["s1", "s2"])
        #expect(PING().keysAffected.isEmpty)
    }

    @Test func decodesClusterShards() throws {
        let reply = R.array([
            .map([("slots", .array([.int(0), .int(5460)])), ("nodes", .array([shardNode(7000, role: "master"), shardNode(7003, role: "replica")]))]),
            // A failed-over shard: the old primary is still listed as a failed master.
            .map([
                ("slots", .array([.int(5461), .int(10922)])),
                ("nodes", .array([shardNode(7001, role: "master", health: "failed"), shardNode(7004, role: "master")])),
            ]),
            .map([("slots", .array([.int(10923), .int(16000), .int(16001), .int(16383)])), ("nodes", .array([shardNode(7002, role: "master")]))]),
            .map([("slots", .array([])), ("nodes", .array([shardNode(7005, role: "master")]))]),
        ])
        let topology = try RedisClusterTopology(fromRESP: token(reply.text))
        #expect(topology.primaries == [address(7000), address(7004), address(7002)])
        #expect(topology.shards[0].replicas == [address(7003)])
        #expect(topology.coversAllSlots)
        #expect(topology.primary(for: HashSlot(rawValue: 0)) == address(7000))
        #expect(topology.primary(for: HashSlot(rawValue: 5461)) == address(7004))
        #expect(topology.primary(for: HashSlot(rawValue: 16383)) == address(7002))
        // Members: every node listed but the failed one (the one without slots too), so a
        // subscriber on them is not taken for one on a node that left the cluster.
        #expect(topology.members == Set([7000, 7002, 7003, 7004, 7005].map(address)))
        #expect(Set(topology.nodes) == [address(7000), address(7003), address(7004), address(7002)])
    }

    /// A node listening on a plain and a TLS port lists both: a TLS client reached every
    /// node with TLS on its plain port.
    @Test func aTLSClientTakesTheTLSPort() throws {
        let both = R.map([
            ("id", .bulk("a")), ("port", .int(7000)), ("tls-port", .int(17000)), ("ip", .bulk("127.0.0.1")), ("role", .bulk("master")),
            ("health", .bulk("online")),
        ])
        let onlyTLS = R.map([("id", .bulk("b")), ("tls-port", .int(17001)), ("ip", .bulk("127.0.0.1")), ("role", .bulk("master"))])
        let reply = R.array([
            .map([("slots", .array([.int(0), .int(8000)])), ("nodes", .array([both]))]),
            .map([("slots", .array([.int(8001), .int(16383)])), ("nodes", .array([onlyTLS]))]),
        ])
        #expect(try RedisClusterTopology(fromRESP: token(reply.text), tls: true).primaries == [address(17000), address(17001)])
        #expect(try RedisClusterTopology(fromRESP: token(reply.text)).primaries == [address(7000), address(17001)])
    }

    @Test func decodesClusterSlots() throws {
        func node(_ port: Int) -> R { .array([.bulk("127.0.0.1"), .int(port), .bulk("id\(port)")]) }
        let reply = R.array([
            .array([.int(0), .int(100), node(7000), node(7003)]),
            .array([.int(101), .int(16383), node(7001)]),
            .array([.int(50), .int(40), node(7002)]),
        ])
        var topology = try RedisClusterTopology(fromRESP: token(reply.text))
        #expect(topology.primaries == [address(7000), address(7001)])
        #expect(topology.primary(for: HashSlot(rawValue: 100)) == address(7000))
        #expect(topology.primary(for: HashSlot(rawValue: 101)) == address(7001))
        topology.recordMoved(slot: HashSlot(rawValue: 100), to: address(7001))
        #expect(topology.primary(for: HashSlot(rawValue: 100)) == address(7001))
        #expect(!RedisClusterTopology(shards: [RedisClusterShard(primary: address(1), slots: [0...10])]).coversAllSlots)
        #expect(throws: RESPDecodeError.self) { try RedisClusterTopology(fromRESP: token(":1\r\n")) }
    }

    @Test func parsesRedirects() {
        let sender = address(7000)
        let moved = ClusterRedirect(RedisServerError(message: "MOVED 3999 127.0.0.1:6381"), sender: sender)
        #expect(moved?.kind == .moved && moved?.slot.rawValue == 3999 && moved?.address == address(6381))
        let ask = ClusterRedirect(RedisServerError(message: "ASK 1 :6380"), sender: sender)
        #expect(ask?.kind == .ask && ask?.slot.rawValue == 1 && ask?.address == address(6380), "an empty host is the sender's")
        #expect(ClusterRedirect(RedisServerError(message: "MOVED 1 [::1]:6380"), sender: sender)?.address == RedisServerAddress(host: "::1", port: 6380))
        #expect(ClusterRedirect(RedisServerError(message: "MOVED 99999 h:1"), sender: sender) == nil)
        #expect(ClusterRedirect(RedisServerError(message: "ERR wrong"), sender: sender) == nil)
        #expect(ClusterRedirect(RedisServerError(message: "MOVED x h:1"), sender: sender) == nil)
    }

    @Test(arguments: [
        ("MOVED 3999 127.0.0.1:6381", true), ("ASK 1 :6380", true), ("TRYAGAIN Multiple keys request during rehashing of slot", true),
        ("CLUSTERDOWN The cluster is down", true), ("ERR unknown command", false), ("LOADING Redis is loading", false),
        ("MOVEDX 1 h:1", false),
    ])
    func clusterRefusalsAreTheFourCodesThatDidNotRun(message: String, refusal: Bool) {
        #expect(RedisServerError(message: message).isClusterRefusal == refusal)
    }

    @Test func requestStateMachineFollowsRedirectsUpToTheLimit() {
        var machine = ClusterRequestStateMachine(maximumAttempts: 2, retryDelay: .milliseconds(10))
        let node = address(7000)
        guard case .follow(let target, asking: false, recordMoved: let slot?) = machine.failed(.server(RedisServerError(message: "MOVED 5 127.0.0.1:7001")), from: node)
        else { Issue.record("expected MOVED to be followed"); return }
        #expect(target == address(7001) && slot.rawValue == 5)
        guard case .follow(address(7002), asking: true, recordMoved: nil) = machine.failed(.server(RedisServerError(message: "ASK 5 127.0.0.1:7002")), from: target)
        else { Issue.record("expected ASK to be followed"); return }
        guard case .fail(let error, refreshTopology: true) = machine.failed(.server(RedisServerError(message: "MOVED 5 127.0.0.1:7000")), from: node)
        else { Issue.record("expected the limit"); return }
        #expect(error as? RedisClientError == .tooManyRedirects)
    }

    /// A command whose node stays unreachable (a primary killed, not yet replaced) fails once
    /// the next retry would pass its deadline, rather than waiting for the promotion and being
    /// sent after its caller gave up.
    @Test func requestStateMachineStopsRetryingAtTheDeadline() {
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var machine = ClusterRequestStateMachine(maximumAttempts: 100, retryDelay: .milliseconds(100), deadline: start + .milliseconds(450))
        let node = address(7000)
        var now = start
        var retries = 0
        while case .retryAfterRefresh(let delay) = machine.failed(.unreachable(RedisClientError.connectTimeout), from: node, now: now) {
            now = now + delay
            retries += 1
        }
        #expect(retries == 2, "100 + 200 ms fit before the deadline, + 300 ms does not")
        guard case .fail(let error, refreshTopology: true) = machine.failed(.unreachable(RedisClientError.connectTimeout), from: node, now: now) else {
            Issue.record("past the deadline the command fails"); return
        }
        #expect(error as? RedisClientError == .clusterUnavailable)
        #expect("\(error)".contains("not sent"))
    }

    @Test func requestStateMachineRetriesOnlyWhatWasNotSent() {
        var machine = ClusterRequestStateMachine(maximumAttempts: 5, retryDelay: .milliseconds(10))
        let node = address(7000)
        guard case .retryAfterRefresh(let first) = machine.failed(.unreachable(RedisClientError.connectTimeout), from: node) else {
            Issue.record("an unreachable node is retried"); return
        }
        guard case .retryAfterRefresh(let second) = machine.failed(.server(RedisServerError(message: "TRYAGAIN Multiple keys")), from: node) else {
            Issue.record("TRYAGAIN is retried"); return
        }
        #expect(first == .milliseconds(10) && second == .milliseconds(20))
        guard case .retryAfterRefresh = machine.failed(.server(RedisServerError(message: "CLUSTERDOWN The cluster is down")), from: node) else {
            Issue.record("CLUSTERDOWN is retried"); return
        }
        guard case .fail(let lost, refreshTopology: true) = machine.failed(.connectionLost(RedisClientError.connectionClosed), from: node) else {
            Issue.record("a command in flight is not retried"); return
        }
        #expect(lost as? RedisClientError == .connectionClosed)
        guard case .fail(let wrongType, refreshTopology: false) = machine.failed(.server(RedisServerError(message: "WRONGTYPE x")), from: node) else {
            Issue.record("other errors fail"); return
        }
        #expect((wrongType as? RedisServerError)?.code == "WRONGTYPE")
    }

    @Test func subscriptionPlanFollowsOwners() {
        let a = address(7000)
        let b = address(7001)
        // "foo" (12182) and "bar" (5061) are owned by a; "hello" (866) has no owner.
        var owners: [String: RedisServerAddress] = ["foo": a, "bar": a, "{foo}x": a]
        let plan = ShardedSubscriptionPlan(desired: ["foo", "bar", "{foo}x", "hello"], subscribed: [a: ["bar"], b: ["old"]]) { owners[$0] }
        #expect(plan.unowned == ["hello"])
        #expect(plan.unsubscribe == [.init(node: b, names: ["old"])])
        // Grouped per slot: foo and {foo}x share one SSUBSCRIBE.
        #expect(plan.subscribe == [.init(node: a, names: ["foo", "{foo}x"])])
        // The slot of foo moves to b: unsubscribe on a, subscribe on b.
        owners["foo"] = b
        owners["{foo}x"] = b
        let moved = ShardedSubscriptionPlan(desired: ["foo", "{foo}x", "bar"], subscribed: [a: ["foo", "{foo}x", "bar"]]) { owners[$0] }
        #expect(moved.unsubscribe == [.init(node: a, names: ["foo", "{foo}x"])])
        #expect(moved.subscribe == [.init(node: b, names: ["foo", "{foo}x"])])
        #expect(ShardedSubscriptionPlan(desired: ["bar"], subscribed: [a: ["bar"]]) { owners[$0] }.isEmpty)
    }

    /// A map read that names no owner for a slot (an incomplete read) unsubscribed the wanted
    /// channels of that slot from the node delivering them: lost until a complete map came.
    @Test func aWantedChannelWithoutOwnerStaysWhereItIs() {
        let a = address(7000)
        let plan = ShardedSubscriptionPlan(desired: ["foo"], subscribed: [a: ["foo", "old"]]) { _ in nil }
        #expect(plan.unowned == ["foo"])
        #expect(plan.unsubscribe == [.init(node: a, names: ["old"])], "only the channel no longer wanted")
        #expect(plan.subscribe.isEmpty)
    }

    /// A node that hung (SIGSTOP, a VM stalled) cost each of its steps a timeout, one slot after
    /// another, while every shard subscribe waited for the pass. Its later steps are skipped.
    @Test func aNodeThatDidNotAnswerIsSkippedForTheRestOfThePass() {
        let a = address(7000)
        let b = address(7001)
        var steps = ShardSubscribeSteps([
            .init(node: a, names: ["a1"]), .init(node: a, names: ["a2"]), .init(node: b, names: ["b1"]), .init(node: a, names: ["a3"]),
        ])
        var ran: [String] = []
        while let step = steps.next() {
            ran += step.names
            steps.finished(step, step.node == a ? .unanswered : .done)
        }
        #expect(ran == ["a1", "b1"])
        #expect(steps.skipped == 2)
    }

    /// `NOPERM` refuses a whole `SSUBSCRIBE`: its names are sent again one at a time, before the
    /// steps after it; an answered error (`MOVED`) skips nothing.
    @Test func aRefusedStepIsSentAgainANameAtATime() {
        let a = address(7000)
        var steps = ShardSubscribeSteps([.init(node: a, names: ["x", "{x}y"]), .init(node: a, names: ["z"])])
        var ran: [[String]] = []
        while let step = steps.next() {
            ran.append(step.names)
            steps.finished(step, step.names.count > 1 ? .refused : .done)
        }
        #expect(ran == [["x", "{x}y"], ["x"], ["{x}y"], ["z"]])
        #expect(steps.skipped == 0)
    }

    @Test func serverUnsubscribeIsReported() {
        var machine = readyMachine()
        guard case .unsubscribedByServer(.shardChannel, "ch") = machine.receivedToken(token(">3\r\n$12\r\nsunsubscribe\r\n$2\r\nch\r\n:0\r\n")) else {
            Issue.record("expected a server-side unsubscribe"); return
        }
        guard case .none = machine.receivedToken(token(">2\r\n$10\r\ninvalidate\r\n*0\r\n")) else { Issue.record("other pushes are ignored"); return }
    }

    @Test func clusterConfiguration() throws {
        #expect(try RedisClusterConfiguration.parseNode("10.0.0.1:7000") == RedisServerAddress(host: "10.0.0.1", port: 7000))
        #expect(try RedisClusterConfiguration.parseNode("redis-a") == RedisServerAddress(host: "redis-a", port: 6379))
        #expect(throws: RedisClientError.invalidConfiguration) { try RedisClusterConfiguration.parseNode("a:b") }
        #expect(throws: RedisClientError.invalidConfiguration) { try RedisClusterClient(configuration: RedisConfiguration()) }
        var configuration = RedisConfiguration()
        configuration.cluster = RedisClusterConfiguration(nodes: [address(7000)])
        configuration.database = 1
        #expect(throws: RedisClientError.invalidConfiguration) { try RedisClusterClient(configuration: configuration) }
    }
}
