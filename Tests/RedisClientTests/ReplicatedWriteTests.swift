import NIOCore
import Testing

@testable import Redis

@Suite("Replicated writes (a write, then WAIT)")
struct ReplicatedWriteTests {
    @Test func encodesTheWriteThenWait() {
        var encoder = RESPCommandEncoder(buffer: ByteBuffer())
        let write = ReplicatedWrite(SET("k", value: "v"), replicas: 2, timeout: .milliseconds(250))
        write.encode(into: &encoder)
        #expect(String(buffer: encoder.buffer) == "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*3\r\n$4\r\nWAIT\r\n$1\r\n2\r\n$3\r\n250\r\n")
        #expect(write.keysAffected == ["k"])
        #expect(write.awaitedReplicas == 2)
        #expect(write.blockingTimeout == .milliseconds(250))
        #expect(SET("k", value: "v").awaitedReplicas == nil)
    }

    @Test func succeedsWithTheWritesReplyOnceEnoughReplicasAcknowledged() {
        var machine = readyMachine()
        _ = machine.enqueue(1, kind: .replicated(minimumReplicas: 1, reply: nil), deadline: nil)
        _ = machine.enqueue(2, deadline: nil)
        guard case .none = machine.receivedToken(token("$3\r\n1-0\r\n")) else { Issue.record("the write's reply must be held"); return }
        guard case .succeed(1, let reply) = machine.receivedToken(token(":2\r\n")) else { Issue.record("expected success"); return }
        #expect(reply == token("$3\r\n1-0\r\n"))
        // The replies stay matched: the next command gets the next reply.
        guard case .succeed(2, let next) = machine.receivedToken(token("+OK\r\n")) else { Issue.record("out of step"); return }
        #expect(next == token("+OK\r\n"))
    }

    @Test func failsNotReplicatedWhenTooFewAcknowledged() {
        var machine = readyMachine()
        _ = machine.enqueue(1, kind: .replicated(minimumReplicas: 2, reply: nil), deadline: nil)
        _ = machine.enqueue(2, deadline: nil)
        _ = machine.receivedToken(token("$3\r\n1-0\r\n"))
        guard case .fail(1, let error) = machine.receivedToken(token(":1\r\n")) else { Issue.record("expected failure"); return }
        #expect(error as? RedisClientError == .notReplicated)
        #expect("\(error)".contains("acknowledged by 1 of the 2 replicas"))
        guard case .succeed(2, _) = machine.receivedToken(token("+OK\r\n")) else { Issue.record("out of step"); return }
    }

    @Test func aFailedWriteFailsWithItsErrorAndWaitsReplyIsConsumed() {
        var machine = readyMachine()
        _ = machine.enqueue(1, kind: .replicated(minimumReplicas: 1, reply: nil), deadline: nil)
        _ = machine.enqueue(2, deadline: nil)
        guard case .none = machine.receivedToken(token("-WRONGTYPE Operation against a key holding the wrong kind of value\r\n")) else {
            Issue.record("the error must wait for WAIT's reply"); return
        }
        guard case .fail(1, let error) = machine.receivedToken(token(":1\r\n")) else { Issue.record("expected failure"); return }
        #expect((error as? RedisServerError)?.code == "WRONGTYPE")
        guard case .succeed(2, _) = machine.receivedToken(token("+OK\r\n")) else { Issue.record("out of step"); return }
    }

    @Test func anErrorFromWaitFailsTheWrite() {
        var machine = readyMachine()
        _ = machine.enqueue(1, kind: .replicated(minimumReplicas: 1, reply: nil), deadline: nil)
        _ = machine.receivedToken(token("+OK\r\n"))
        guard case .fail(1, let error) = machine.receivedToken(token("-ERR WAIT cannot be used with replica instances\r\n")) else {
            Issue.record("expected failure"); return
        }
        #expect((error as? RedisServerError)?.code == "ERR")
        #expect(machine.pendingCount == 0)
    }

    @Test func closingFailsAHalfAnsweredWrite() {
        var machine = readyMachine()
        _ = machine.enqueue(1, kind: .replicated(minimumReplicas: 1, reply: nil), deadline: nil)
        _ = machine.receivedToken(token("+OK\r\n"))
        guard case .failAll(let promises, let error, _) = machine.channelInactive() else { Issue.record("expected failAll"); return }
        #expect(promises == [1])
        #expect(error as? RedisClientError == .connectionClosed)
    }
}
