import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Testing

@testable import Redis

@Suite("Replicated writes (writes, then one WAIT per flush)")
struct ReplicatedWriteTests {
    static let wait = WAIT(replicas: 1, timeout: .milliseconds(250))

    @Test func encodesTheWriteAloneAndNamesItsWait() {
        var encoder = RESPCommandEncoder(buffer: ByteBuffer())
        let write = ReplicatedWrite(SET("k", value: "v"), replicas: 2, timeout: .milliseconds(250))
        write.encode(into: &encoder)
        #expect(String(buffer: encoder.buffer) == "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")
        var waitEncoder = RESPCommandEncoder(buffer: ByteBuffer())
        write.wait.encode(into: &waitEncoder)
        #expect(String(buffer: waitEncoder.buffer) == "*3\r\n$4\r\nWAIT\r\n$1\r\n2\r\n$3\r\n250\r\n")
        #expect(write.keysAffected == ["k"])
        #expect(write.replicaWait == WAIT(replicas: 2, timeout: .milliseconds(250)))
        #expect(write.blockingTimeout == nil)
        #expect(SET("k", value: "v").replicaWait == nil)
    }

    @Test func oneWaitCoversTheWritesBeforeItWithTheLargestCountAndTimeout() throws {
        var machine = readyMachine()
        #expect(machine.takeOwedWait() == nil)
        _ = machine.enqueue(1, kind: .replicatedWrite(WAIT(replicas: 1, timeout: .milliseconds(300))), deadline: nil)
        _ = machine.enqueue(2, deadline: nil)
        _ = machine.enqueue(3, kind: .replicatedWrite(WAIT(replicas: 2, timeout: .milliseconds(100))), deadline: nil)
        #expect(machine.takeOwedWait() == WAIT(replicas: 2, timeout: .milliseconds(300)))
        #expect(machine.takeOwedWait() == nil)  // owed once
        _ = machine.enqueue(4, kind: .replicaWait, deadline: nil)

        guard case .none = machine.receivedToken(token("$3\r\n1-0\r\n")) else { Issue.record("the write's reply must be held"); return }
        guard case .succeed(2, _) = machine.receivedToken(token("+OK\r\n")) else { Issue.record("an ordinary command in between"); return }
        guard case .none = machine.receivedToken(token("$3\r\n2-0\r\n")) else { Issue.record("the write's reply must be held"); return }
        // One replica acknowledged: enough for the first write, not for the second.
        guard case .complete(let outcomes) = machine.receivedToken(token(":1\r\n")) else { Issue.record("expected completions"); return }
        #expect(outcomes.map(\.0) == [1, 3, 4])
        #expect(try outcomes[0].1.get() == token("$3\r\n1-0\r\n"))
        #expect(throws: RedisClientError.notReplicated) { try outcomes[1].1.get() }
        if case .failure(let error) = outcomes[1].1 { #expect("\(error)".contains("acknowledged by 1 of the 2 replicas")) }
        #expect(machine.pendingCount == 0)
    }

    /// The replies owed for commands that may not have run yet leave out the `WAIT`s: a
    /// connection waiting only for its replicas does not hold back commands elsewhere.
    @Test func aPendingWaitIsNotACommandThatMayStillRun() {
        var machine = readyMachine()
        _ = machine.enqueue(1, kind: .replicatedWrite(Self.wait), deadline: nil)
        _ = machine.enqueue(2, kind: .replicaWait, deadline: nil)
        #expect(machine.pendingCount == 2 && machine.unrunCount == 1)
        _ = machine.receivedToken(token("$3\r\n1-0\r\n"))
        #expect(machine.pendingCount == 1 && machine.unrunCount == 0)
        _ = machine.receivedToken(token(":1\r\n"))
        #expect(machine.pendingCount == 0 && machine.unrunCount == 0)
        _ = machine.enqueue(3, kind: .replicaWait, deadline: nil)
        _ = machine.channelInactive()
        #expect(machine.unrunCount == 0)
    }

    @Test func aWriteRedisRefusedFailsAtOnce() {
        var machine = readyMachine()
        _ = machine.enqueue(1, kind: .replicatedWrite(Self.wait), deadline: nil)
        _ = machine.enqueue(2, kind: .replicaWait, deadline: nil)
        guard case .fail(1, let error) = machine.receivedToken(token("-WRONGTYPE Operation against a key holding the wrong kind of value\r\n")) else {
            Issue.record("expected failure"); return
        }
        #expect((error as? RedisServerError)?.code == "WRONGTYPE")
        guard case .complete(let outcomes) = machine.receivedToken(token(":1\r\n")) else { Issue.record("the WAIT's own reply"); return }
        #expect(outcomes.map(\.0) == [2])
    }

    /// The writes are stored on the primary whatever the WAIT's reply: an error (an ACL that
    /// refuses WAIT, say) or a reply that is no count leaves their replication unknown, not
    /// their storing (a plain failure had a stream route's client send the entry again).
    @Test(arguments: ["-ERR WAIT cannot be used with replica instances\r\n", "-NOPERM this user has no permissions to run the 'wait' command\r\n", "+OK\r\n"])
    func aWaitThatFailsLeavesTheWritesStoredButNotKnownReplicated(reply: String) {
        var machine = readyMachine()
        _ = machine.enqueue(1, kind: .replicatedWrite(Self.wait), deadline: nil)
        _ = machine.enqueue(2, kind: .replicaWait, deadline: nil)
        _ = machine.receivedToken(token("+OK\r\n"))
        guard case .complete(let outcomes) = machine.receivedToken(token(reply)) else {
            Issue.record("expected completions"); return
        }
        #expect(outcomes.map(\.0) == [1, 2])
        #expect(throws: RedisClientError.notReplicated) { try outcomes[0].1.get() }
        if case .failure(let error) = outcomes[0].1 { #expect("\(error)".contains("stored on the primary, but WAIT")) }
    }

    @Test func closingFailsHeldWrites() {
        var machine = readyMachine()
        _ = machine.enqueue(1, kind: .replicatedWrite(Self.wait), deadline: nil)
        _ = machine.enqueue(2, kind: .replicaWait, deadline: nil)
        _ = machine.receivedToken(token("+OK\r\n"))
        guard case .failAll(let promises, let error, _) = machine.channelInactive() else { Issue.record("expected failAll"); return }
        #expect(Set(promises) == [1, 2])
        #expect(error as? RedisClientError == .connectionClosed)
    }

    /// The handler writes one WAIT per flush, behind every replicated write of that flush.
    @Test func theHandlerWritesOneWaitAtATime() throws {
        let redis = try EmbeddedRedis()
        try redis.ready()
        let writes = (0..<3).map { n in redis.send(ReplicatedWrite(SET("k\(n)", value: "v"), replicas: 1, timeout: .milliseconds(200))) }
        // EmbeddedRedis.send flushes each write: a WAIT behind the first; the others wait for
        // its answer (none owed for a plain command).
        #expect(try redis.outbound() == resp("SET", "k0", "v") + resp("WAIT", "1", "200") + resp("SET", "k1", "v") + resp("SET", "k2", "v"))
        let plain = redis.send(GET("k0"))
        #expect(try redis.outbound() == resp("GET", "k0"))
        try redis.feed("+OK\r\n:1\r\n")
        #expect(try writes[0].wait() == token("+OK\r\n"))
        #expect(try redis.outbound() == resp("WAIT", "1", "200"))
        try redis.feed("+OK\r\n+OK\r\n$1\r\nv\r\n:0\r\n")
        let done = writes.allSatisfy { $0.isCompleteForTest } && plain.isCompleteForTest
        try #require(done)  // (not to hang below)
        #expect(throws: RedisClientError.notReplicated) { try writes[1].wait() }
        #expect(throws: RedisClientError.notReplicated) { try writes[2].wait() }
        #expect(try plain.wait() == token("$1\r\nv\r\n"))
    }

    /// Redis runs a connection's commands in order: with the replicas down each WAIT takes its
    /// whole timeout, and a WAIT written at every flush queued up behind the others until the
    /// commands behind them passed their deadline. One is in flight at a time; the one owed
    /// for the writes meanwhile is written when it is answered.
    @Test func aWaitInFlightHoldsTheNextUntilItIsAnswered() throws {
        let redis = try EmbeddedRedis()
        try redis.ready()
        let first = redis.send(ReplicatedWrite(SET("a", value: "v"), replicas: 1, timeout: .milliseconds(200)))
        #expect(try redis.outbound() == resp("SET", "a", "v") + resp("WAIT", "1", "200"))
        let later = (0..<2).map { n in redis.send(ReplicatedWrite(SET("b\(n)", value: "v"), replicas: 2, timeout: .milliseconds(100))) }
        #expect(try redis.outbound() == resp("SET", "b0", "v") + resp("SET", "b1", "v"), "no second WAIT while one is in flight")
        try redis.feed("+OK\r\n:1\r\n")
        #expect(try first.wait() == token("+OK\r\n"))
        // Answered: the owed WAIT (the largest count and timeout of the writes it covers) goes out.
        #expect(try redis.outbound() == resp("WAIT", "2", "100"))
        try redis.feed("+OK\r\n+OK\r\n:2\r\n")
        let done = later.allSatisfy { $0.isCompleteForTest }
        try #require(done)  // (not to hang below)
        for write in later { #expect(try write.wait() == token("+OK\r\n")) }
        #expect(try redis.outbound() == "")
    }

    /// A command written behind a WAIT in flight runs only once the WAIT is answered: its
    /// deadline is at least the WAIT's (it timed out, closing the connection, while the WAIT
    /// legitimately blocked).
    @Test func aCommandBehindAWaitHasAtLeastItsDeadline() throws {
        var configuration = RedisConfiguration()
        configuration.commandTimeout = .milliseconds(100)
        let redis = try EmbeddedRedis(configuration: configuration)
        try redis.ready()
        let write = redis.send(ReplicatedWrite(SET("a", value: "v"), replicas: 1, timeout: .milliseconds(500)))
        try redis.feed("+OK\r\n")
        redis.channel.embeddedEventLoop.advanceTime(by: .milliseconds(50))
        let behind = redis.send(GET("a"))
        redis.channel.embeddedEventLoop.advanceTime(by: .milliseconds(150))  // past its own 100 ms, not the WAIT's 600
        #expect(redis.channel.isActive && !behind.isCompleteForTest)
        try redis.feed(":1\r\n$1\r\nv\r\n")
        let done = write.isCompleteForTest && behind.isCompleteForTest
        try #require(done)
        #expect(try write.wait() == token("+OK\r\n"))
        #expect(try behind.wait() == token("$1\r\nv\r\n"))
    }

    /// Writes made in one loop tick (the connection's own flush) share one WAIT.
    @Test func writesOfOneTickShareOneWait() throws {
        let redis = try EmbeddedRedis()
        try redis.ready()
        let writes = (0..<3).map { n -> EventLoopFuture<RESPToken> in
            var encoder = RESPCommandEncoder()
            let write = ReplicatedWrite(SET("k\(n)", value: "v"), replicas: 1, timeout: .milliseconds(200))
            write.encode(into: &encoder)
            let promise = redis.channel.eventLoop.makePromise(of: RESPToken.self)
            redis.channel.write(RedisOutboundCommand(bytes: encoder.buffer, kind: .replicatedWrite(write.wait), promise: promise), promise: nil)
            return promise.futureResult
        }
        redis.channel.embeddedEventLoop.run()  // the scheduled flush
        #expect(try redis.outbound() == [0, 1, 2].map { resp("SET", "k\($0)", "v") }.joined() + resp("WAIT", "1", "200"))
        let completed = NIOLockedValueBox(0)
        for write in writes { write.whenComplete { _ in completed.withLockedValue { $0 += 1 } } }
        try redis.feed("+OK\r\n+OK\r\n+OK\r\n")
        #expect(completed.withLockedValue { $0 } == 0, "held until the WAIT's count")
        try redis.feed(":1\r\n")
        for write in writes { #expect(try write.wait() == token("+OK\r\n")) }
    }
}
