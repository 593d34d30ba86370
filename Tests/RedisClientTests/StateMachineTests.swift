import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import Redis

typealias SM = RedisConnectionStateMachine<Int>

func token(_ s: String) -> RESPToken { try! RESPToken(validating: ByteBuffer(string: s)) }

func readyMachine(version: Int = 3) -> SM {
    var machine = SM(handshake: .init(preference: version == 3 ? .resp3WithFallback : .resp2, hasPassword: false, hasClientName: false, database: 0))
    let action = machine.channelActive()
    if version == 3 {
        guard case .send(.hello) = action else { preconditionFailure() }
        guard case .handshakeSucceeded(3) = machine.receivedToken(token("%1\r\n+proto\r\n:3\r\n")) else { preconditionFailure() }
    } else {
        guard case .succeeded(2) = action else { preconditionFailure() }
    }
    return machine
}

@Suite("Connection state machine")
struct StateMachineTests {
    @Test func helloHandshakeWithSelect() {
        var machine = SM(handshake: .init(preference: .resp3WithFallback, hasPassword: true, hasClientName: true, database: 2))
        guard case .send(.hello) = machine.channelActive() else { Issue.record("expected HELLO"); return }
        #expect(!machine.isReady)
        guard case .fail(let error) = machine.enqueue(1, deadline: nil) else { Issue.record("must not accept commands"); return }
        #expect(error as? RedisClientError == .notConnected)
        // HELLO carries AUTH and SETNAME; only SELECT remains.
        guard case .sendHandshake(.select) = machine.receivedToken(token("%1\r\n+proto\r\n:3\r\n")) else { Issue.record("expected SELECT"); return }
        guard case .handshakeSucceeded(3) = machine.receivedToken(token("+OK\r\n")) else { Issue.record("expected ready"); return }
        #expect(machine.protocolVersion == 3)
    }

    @Test func helloErrorFallsBackToRESP2() {
        var machine = SM(handshake: .init(preference: .resp3WithFallback, hasPassword: true, hasClientName: false, database: 1))
        _ = machine.channelActive()
        guard case .sendHandshake(.auth) = machine.receivedToken(token("-ERR unknown command 'HELLO'\r\n")) else {
            Issue.record("expected AUTH fallback"); return
        }
        guard case .sendHandshake(.select) = machine.receivedToken(token("+OK\r\n")) else { Issue.record("expected SELECT"); return }
        guard case .handshakeSucceeded(2) = machine.receivedToken(token("+OK\r\n")) else { Issue.record("expected RESP2"); return }
    }

    @Test func authenticationErrorFailsHandshake() {
        var machine = SM(handshake: .init(preference: .resp3WithFallback, hasPassword: true, hasClientName: false, database: 0))
        _ = machine.channelActive()
        guard case .handshakeFailed(let error) = machine.receivedToken(token("-WRONGPASS invalid username-password pair\r\n")) else {
            Issue.record("expected failure"); return
        }
        #expect((error as? RedisServerError)?.isAuthenticationError == true)
        guard case .fail = machine.enqueue(1, deadline: nil) else { Issue.record("closed machine accepted command"); return }
    }

    @Test func resp2WithoutStepsIsReadyImmediately() {
        var machine = SM(handshake: .init(preference: .resp2, hasPassword: false, hasClientName: false, database: 0))
        guard case .succeeded(2) = machine.channelActive() else { Issue.record("expected immediate ready"); return }
    }

    @Test func handshakeTimeout() {
        var machine = SM(handshake: .init(preference: .resp3WithFallback, hasPassword: false, hasClientName: false, database: 0))
        _ = machine.channelActive()
        guard case .failed(let error) = machine.handshakeTimedOut() else { Issue.record("expected timeout"); return }
        #expect(error as? RedisClientError == .connectTimeout)
    }

    @Test func pipelinedRepliesAreMatchedFIFO() {
        var machine = readyMachine()
        for i in 0..<5 {
            guard case .write = machine.enqueue(i, deadline: nil) else { Issue.record("write expected"); return }
        }
        #expect(machine.pendingCount == 5)
        var order: [Int] = []
        for i in 0..<5 {
            switch machine.receivedToken(token(":\(i * 10)\r\n")) {
            case .succeed(let promise, let reply):
                order.append(promise)
                #expect(reply.value == .number(Int64(promise * 10)))
            default: Issue.record("expected success")
            }
        }
        #expect(order == [0, 1, 2, 3, 4])
        guard case .failAllAndClose(_, let error) = machine.receivedToken(token("+extra\r\n")) else { Issue.record("unsolicited accepted"); return }
        #expect(error as? RedisClientError == .unsolicitedReply)
    }

    @Test func errorRepliesFailOnlyTheirCommand() {
        var machine = readyMachine()
        _ = machine.enqueue(1, deadline: nil)
        _ = machine.enqueue(2, deadline: nil)
        guard case .fail(1, let error) = machine.receivedToken(token("-BUSYGROUP Consumer Group name already exists\r\n")) else {
            Issue.record("expected failure"); return
        }
        #expect((error as? RedisServerError)?.isBusyGroup == true)
        guard case .succeed(2, _) = machine.receivedToken(token("+OK\r\n")) else { Issue.record("expected success"); return }
    }

    @Test func closeFailsAllPending() {
        var machine = readyMachine()
        for i in 0..<3 { _ = machine.enqueue(i, deadline: nil) }
        guard case .failAll(let promises, let error, let handshakeError) = machine.channelInactive() else { Issue.record("expected failAll"); return }
        #expect(promises == [0, 1, 2])
        #expect(error as? RedisClientError == .connectionClosed)
        #expect(handshakeError == nil)
        guard case .fail(let e) = machine.enqueue(9, deadline: nil) else { Issue.record("closed accepted"); return }
        // Refused, not written: not sent (whoever sent it may send it elsewhere).
        #expect(e as? RedisClientError == .notConnected)
    }

    @Test func timeoutFailsEverythingAndCloses() {
        var machine = readyMachine()
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
        guard case .write(let first) = machine.enqueue(1, deadline: t0 + .seconds(5)) else { Issue.record("write"); return }
        #expect(first == t0 + .seconds(5))
        // A later deadline does not need a new timer; an earlier one does.
        guard case .write(nil) = machine.enqueue(2, deadline: t0 + .seconds(9)) else { Issue.record("no timer expected"); return }
        guard case .write(let earlier) = machine.enqueue(3, deadline: t0 + .seconds(1)) else { Issue.record("write"); return }
        #expect(earlier == t0 + .seconds(1))
        _ = machine.enqueue(4, deadline: nil)  // blocking forever
        guard case .reschedule(let next) = machine.timerFired(now: t0) else { Issue.record("expected reschedule"); return }
        #expect(next == t0 + .seconds(1))
        guard case .succeed(1, _) = machine.receivedToken(token("+OK\r\n")) else { Issue.record("reply"); return }
        guard case .failAllAndClose(let promises, let error) = machine.timerFired(now: t0 + .seconds(2)) else { Issue.record("timeout"); return }
        #expect(promises == [2, 3, 4])
        #expect(error as? RedisClientError == .commandTimeout)
        guard case .fail = machine.enqueue(5, deadline: nil) else { Issue.record("closing accepted"); return }
    }

    @Test func subscriptionConfirmationsAndMessages() {
        for version in [3, 2] {
            var machine = readyMachine(version: version)
            let open = version == 3 ? ">" : "*"
            _ = machine.enqueue(1, kind: .subscription(confirmation: "subscribe", names: ["a", "b"]), deadline: nil)
            _ = machine.enqueue(2, deadline: nil)
            guard case .none = machine.receivedToken(token("\(open)3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n")) else { Issue.record("first confirm"); return }
            // A message can arrive between confirmations.
            guard case .deliver(let message) = machine.receivedToken(token("\(open)3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n")) else {
                Issue.record("message"); return
            }
            #expect(message == RedisPubSubMessage(kind: .channel, channel: "a", payload: ByteBuffer(string: "hi")))
            guard case .succeed(1, _) = machine.receivedToken(token("\(open)3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n")) else { Issue.record("second confirm"); return }
            guard case .succeed(2, _) = machine.receivedToken(token("+PONG\r\n")) else { Issue.record("ping"); return }
            guard case .deliver(let pmessage) = machine.receivedToken(token("\(open)4\r\n$8\r\npmessage\r\n$2\r\na*\r\n$2\r\nab\r\n$1\r\nx\r\n")) else {
                Issue.record("pmessage"); return
            }
            #expect(pmessage.pattern == "a*" && pmessage.channel == "ab" && pmessage.kind == .pattern)
            // An unsolicited unsubscribe (server-side sunsubscribe on a cluster slot move) is reported.
            guard case .unsubscribedByServer(.shardChannel, "z") = machine.receivedToken(token("\(open)3\r\n$12\r\nsunsubscribe\r\n$1\r\nz\r\n:0\r\n")) else {
                Issue.record("unsolicited"); return
            }
        }
    }

    /// A server-side `sunsubscribe` of another channel (its slot moved) while a `SUNSUBSCRIBE`
    /// waits is reported, not taken as that command's confirmation (they were matched by kind).
    @Test func aServerSideUnsubscribeOfAnotherNameIsNotAConfirmation() {
        for version in [3, 2] {
            var machine = readyMachine(version: version)
            let open = version == 3 ? ">" : "*"
            _ = machine.enqueue(1, kind: .subscription(confirmation: "sunsubscribe", names: ["mine"]), deadline: nil)
            guard case .unsubscribedByServer(.shardChannel, "moved") = machine.receivedToken(token("\(open)3\r\n$12\r\nsunsubscribe\r\n$5\r\nmoved\r\n:1\r\n")) else {
                Issue.record("the other channel's loss was taken as the confirmation (RESP\(version))"); return
            }
            guard case .succeed(1, _) = machine.receivedToken(token("\(open)3\r\n$12\r\nsunsubscribe\r\n$4\r\nmine\r\n:0\r\n")) else {
                Issue.record("confirmed by its own name"); return
            }
        }
    }

    /// Confirmations out of the order sent still complete their command, a name given twice
    /// needs two, and names are compared by their bytes (`é` and `e` + U+0301 are two channels
    /// to Redis, one string to Swift's `==`).
    @Test func confirmationsAreMatchedByNameInAnyOrderAndByBytes() {
        var machine = readyMachine()
        let composed = "caf\u{E9}", decomposed = "cafe\u{301}"
        _ = machine.enqueue(1, kind: .subscription(confirmation: "subscribe", names: ["a", "b", "a", composed]), deadline: nil)
        func confirm(_ name: String) -> RedisConnectionStateMachine<Int>.ReceiveAction {
            var bytes = ByteBuffer(string: ">3\r\n$9\r\nsubscribe\r\n$\(name.utf8.count)\r\n")
            bytes.writeString(name + "\r\n:1\r\n")
            return machine.receivedToken(token(String(buffer: bytes)))
        }
        guard case .none = confirm("b") else { Issue.record("b"); return }
        guard case .none = confirm("a") else { Issue.record("first a"); return }
        guard case .none = confirm("a") else { Issue.record("second a"); return }
        guard case .none = confirm(decomposed) else { Issue.record("another channel's confirmation completed it"); return }
        guard case .succeed(1, _) = confirm(composed) else { Issue.record("its own completes it"); return }
    }

    /// valkey-io/valkey#1066: a `SUNSUBSCRIBE` of a channel whose slot just moved away. The
    /// server's own `sunsubscribe` push comes first and is taken as its confirmation; its reply,
    /// `MOVED`, then found nothing pending and closed the subscriber connection (losing what its
    /// other channels were sent meanwhile). Now it is ignored.
    @Test func aStrayErrorAfterAServerSideUnsubscribeLeavesTheSubscriberOpen() {
        for version in [3, 2] {
            var machine = readyMachine(version: version)
            let open = version == 3 ? ">" : "*"
            _ = machine.enqueue(1, kind: .subscription(confirmation: "sunsubscribe", names: ["z"]), deadline: nil)
            guard case .succeed(1, _) = machine.receivedToken(token("\(open)3\r\n$12\r\nsunsubscribe\r\n$1\r\nz\r\n:0\r\n")) else {
                Issue.record("the server's push taken as the confirmation"); return
            }
            guard case .none = machine.receivedToken(token("-MOVED 8000 127.0.0.1:7001\r\n")) else {
                Issue.record("the stray MOVED closed the connection (RESP\(version))"); return
            }
            _ = machine.enqueue(2, deadline: nil)
            guard case .succeed(2, _) = machine.receivedToken(token("+PONG\r\n")) else { Issue.record("still usable"); return }
        }
        // Outside subscribe mode an unsolicited reply still closes the connection.
        var machine = readyMachine()
        guard case .failAllAndClose = machine.receivedToken(token("-ERR nothing asked\r\n")) else { Issue.record("closed"); return }
    }

    /// A health `PING` written behind that `SUNSUBSCRIBE`: the stray `MOVED` answers the `PING`,
    /// and the `PONG` then comes with nothing pending. Dropped, not an unsolicited reply that
    /// closes the subscriber (RESP3 `+PONG`, RESP2 `[pong, ""]` in subscribe mode).
    @Test func aHealthPingsLatePongLeavesTheSubscriberOpen() {
        for version in [3, 2] {
            var machine = readyMachine(version: version)
            let open = version == 3 ? ">" : "*"
            _ = machine.enqueue(1, kind: .subscription(confirmation: "sunsubscribe", names: ["z"]), deadline: nil)
            _ = machine.enqueue(2, deadline: nil)  // the PING
            guard case .succeed(1, _) = machine.receivedToken(token("\(open)3\r\n$12\r\nsunsubscribe\r\n$1\r\nz\r\n:0\r\n")) else {
                Issue.record("the server's push taken as the confirmation"); return
            }
            guard case .fail(2, _) = machine.receivedToken(token("-MOVED 8000 127.0.0.1:7001\r\n")) else {
                Issue.record("the stray MOVED answers the PING (RESP\(version))"); return
            }
            let pong = version == 3 ? "+PONG\r\n" : "*2\r\n$4\r\npong\r\n$0\r\n\r\n"
            // An SSUBSCRIBE written meanwhile: the PONG is not its answer.
            _ = machine.enqueue(3, kind: .subscription(confirmation: "ssubscribe", names: ["y"]), deadline: nil)
            guard case .none = machine.receivedToken(token(pong)) else {
                Issue.record("the late PONG answered the SSUBSCRIBE or closed the connection (RESP\(version))"); return
            }
            guard case .fail(3, _) = machine.receivedToken(token("-MOVED 9000 127.0.0.1:7002\r\n")) else {
                Issue.record("the SSUBSCRIBE gets its own answer (RESP\(version))"); return
            }
        }
    }
}

@Suite("Subscription registry")
struct SubscriptionRegistryTests {
    final class Recorder: Sendable {
        let commands = NIOLockedValueBox<[SubscriptionCommand]>([])
        var sender: SubscriptionRegistry.Sender {
            { command in
                self.commands.withLockedValue { $0.append(command) }
                return MultiThreadedEventLoopGroup.singleton.any().makeSucceededVoidFuture()
            }
        }
    }

    @Test func referenceCounting() throws {
        let registry = SubscriptionRegistry()
        let recorder = Recorder()
        #expect(registry.attach(recorder.sender).isEmpty)
        let received = NIOLockedValueBox<[String]>([])
        let sink = SubscriptionRegistry.Sink.callback { m in received.withLockedValue { $0.append("1:" + String(buffer: m.payload)) } }
        let sink2 = SubscriptionRegistry.Sink.callback { m in received.withLockedValue { $0.append("2:" + String(buffer: m.payload)) } }
        let (a, first) = try registry.add(names: ["x", "y"], kind: .channel, sink: sink)
        let (b, second) = try registry.add(names: ["x"], kind: .channel, sink: sink2)
        // Nothing sent for the second; it may share the first's confirmation (completed).
        #expect(first != nil && (second == nil || (try? second!.wait()) != nil))
        #expect(recorder.commands.withLockedValue { $0 } == [SubscriptionCommand(kind: .channel, isSubscribe: true, names: ["x", "y"])])
        #expect(registry.subscriberCount(kind: .channel, name: "x") == 2)
        registry.deliver(RedisPubSubMessage(kind: .channel, channel: "x", payload: ByteBuffer(string: "m")))
        #expect(received.withLockedValue { $0.sorted() } == ["1:m", "2:m"])
        // Same name, different kind: separate subscription.
        _ = try registry.add(names: ["x"], kind: .pattern, sink: sink)
        #expect(recorder.commands.withLockedValue { $0.count } == 2)

        #expect(registry.remove(id: b, names: ["x"], kind: .channel) == nil)  // a still listens to x
        #expect(recorder.commands.withLockedValue { $0.count } == 2)
        #expect(registry.remove(id: a, names: ["x", "y"], kind: .channel) != nil)
        #expect(recorder.commands.withLockedValue { $0.last } == SubscriptionCommand(kind: .channel, isSubscribe: false, names: ["x", "y"]))
        #expect(registry.remove(id: a, names: ["x"], kind: .channel) == nil)  // idempotent
        #expect(registry.activeKeys == [SubscriptionRegistry.Key(kind: .pattern, name: "x")])
    }

    /// A subscriber joining a name whose SUBSCRIBE is still in flight waits for its
    /// confirmation (it was told at once, before the server subscribed the name), and shares
    /// its failure.
    @Test(arguments: [true, false])
    func aSubscriberJoiningAnUnconfirmedNameWaitsForItsConfirmation(confirmed: Bool) throws {
        let registry = SubscriptionRegistry()
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        let promise = loop.makePromise(of: Void.self)
        _ = registry.attach { _ in promise.futureResult }
        let (_, first) = try registry.add(names: ["x"], kind: .channel, sink: .callback { _ in })
        let (_, second) = try registry.add(names: ["x"], kind: .channel, sink: .callback { _ in })
        #expect(first != nil && second === first)
        if confirmed {
            promise.succeed()
        } else {
            promise.fail(RedisServerError(message: "NOPERM no permissions to access the 'x' channel"))
        }
        #expect((try? second?.wait()) != nil || !confirmed)
        #expect(confirmed || (try? second?.wait()) == nil, "the refusal reaches the subscriber that joined")
        // Confirmed (or refused): a later subscriber of the name has nothing to wait for.
        let (_, third) = try registry.add(names: ["x"], kind: .channel, sink: .callback { _ in })
        #expect(third == nil)
    }

    /// A subscribe after the client shut down is refused: its stream would never end.
    @Test func aSubscriberAfterShutdownIsRefused() throws {
        let registry = SubscriptionRegistry()
        _ = try registry.add(names: ["x"], kind: .channel, sink: .callback { _ in })
        registry.finishAll()
        #expect(throws: RedisClientError.shutdown) { try registry.add(names: ["x"], kind: .channel, sink: .callback { _ in }) }
    }

    /// A re-subscribe refused as a whole for one name (`NOPERM`) is sent again a name at a
    /// time: the others are subscribed, the refused name is reported and kept (its subscribers
    /// stay, a new one is refused), and subscribed once Redis allows it.
    @Test func aReSubscribeRefusedForOneNameSubscribesTheOthersOneByOne() async throws {
        let registry = SubscriptionRegistry()
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        _ = try registry.add(names: ["ok", "no"], kind: .channel, sink: .callback { _ in })
        _ = try registry.add(names: ["no"], kind: .channel, sink: .callback { _ in })
        let sent = NIOLockedValueBox<[[String]]>([])
        let allowed = NIOLockedValueBox(false)
        let refused = NIOLockedValueBox<[String]>([])
        let denial = RedisServerError(message: "NOPERM User app has no permissions to access the 'no' channel")
        let confirmations = registry.attach({ command in
            sent.withLockedValue { $0.append(command.names) }
            let deny = command.isSubscribe && command.names.contains("no") && !allowed.withLockedValue { $0 }
            return deny ? loop.makeFailedFuture(denial) : loop.makeSucceededVoidFuture()
        }) { _, names, _ in refused.withLockedValue { $0 += names } }
        for confirmation in confirmations { try await confirmation.get() }
        #expect(Set(sent.withLockedValue { $0 }) == [["no", "ok"], ["no"], ["ok"]])
        #expect(refused.withLockedValue { $0 } == ["no"])
        #expect(registry.hasRefused && registry.subscriberCount(kind: .channel, name: "no") == 2)
        #expect(throws: denial) { try registry.add(names: ["no"], kind: .channel, sink: .callback { _ in }) }
        // Still refused: kept.
        #expect(await registry.retryRefused().isEmpty)
        allowed.withLockedValue { $0 = true }
        #expect(await registry.retryRefused() == [SubscriptionRegistry.Key(kind: .channel, name: "no")])
        #expect(!registry.hasRefused)
        _ = try registry.add(names: ["no"], kind: .channel, sink: .callback { _ in })
        // Refused on one connection, accepted by the next one's re-subscribe: no longer refused.
        allowed.withLockedValue { $0 = false }
        for confirmation in registry.attach({ command in
            let deny = command.isSubscribe && command.names.contains("no") && !allowed.withLockedValue { $0 }
            return deny ? loop.makeFailedFuture(denial) : loop.makeSucceededVoidFuture()
        }) { try await confirmation.get() }
        #expect(registry.hasRefused)
        allowed.withLockedValue { $0 = true }
        for confirmation in registry.attach({ _ in loop.makeSucceededVoidFuture() }) { try await confirmation.get() }
        #expect(!registry.hasRefused)
    }

    @Test func resubscribesOnAttach() throws {
        let registry = SubscriptionRegistry()
        _ = try registry.add(names: ["b", "a"], kind: .channel, sink: .callback { _ in })
        _ = try registry.add(names: ["p*"], kind: .pattern, sink: .callback { _ in })
        _ = try registry.add(names: ["s"], kind: .shardChannel, sink: .callback { _ in })
        let recorder = Recorder()
        #expect(registry.attach(recorder.sender).count == 3)
        #expect(
            recorder.commands.withLockedValue { $0 } == [
                SubscriptionCommand(kind: .channel, isSubscribe: true, names: ["a", "b"]),
                SubscriptionCommand(kind: .pattern, isSubscribe: true, names: ["p*"]),
                SubscriptionCommand(kind: .shardChannel, isSubscribe: true, names: ["s"]),
            ])
        registry.detach()
        _ = try registry.add(names: ["c"], kind: .channel, sink: .callback { _ in })
        #expect(recorder.commands.withLockedValue { $0.count } == 3)  // nothing sent while detached
    }
}

@Suite("Configuration and backoff")
struct ConfigurationTests {
    @Test func parsesURLs() throws {
        let full = try RedisConfiguration(url: "redis://user:p%40ss@example.com:6380/3")
        #expect(full.host == "example.com" && full.port == 6380 && full.username == "user" && full.password == "p@ss" && full.database == 3)
        let passOnly = try RedisConfiguration(url: "redis://:secret@localhost")
        #expect(passOnly.username == nil && passOnly.password == "secret" && passOnly.port == 6379 && passOnly.database == 0)
        let v6 = try RedisConfiguration(url: "redis://[::1]:7000")
        #expect(v6.host == "::1" && v6.port == 7000)
        let tls = try RedisConfiguration(url: "rediss://app:s3cret@redis.example.com:6380/2")
        #expect(tls.tls == RedisTLSConfiguration() && tls.tls?.verifyServerName == true)
        #expect(tls.username == "app" && tls.password == "s3cret" && tls.host == "redis.example.com" && tls.port == 6380 && tls.database == 2)
        #expect(full.tls == nil)
        #expect(throws: RedisClientError.invalidConfiguration) { try RedisConfiguration(url: "http://localhost") }
        #expect(throws: RedisClientError.invalidConfiguration) { try RedisConfiguration(url: "redis://localhost:99999") }
        #expect(throws: RedisClientError.invalidConfiguration) { try RedisConfiguration(url: "redis://localhost/x") }
    }

    @Test func backoffIsExponentialCappedAndJittered() {
        let backoff = RedisBackoff(minimum: .milliseconds(100), maximum: .seconds(2))
        #expect(backoff.delay(attempt: 0, random: 1) == .milliseconds(100))
        #expect(backoff.delay(attempt: 0, random: 0) == .milliseconds(50))
        #expect(backoff.delay(attempt: 3, random: 1) == .milliseconds(800))
        #expect(backoff.delay(attempt: 10, random: 1) == .seconds(2))
        #expect(backoff.delay(attempt: 1000, random: 0.5) == .milliseconds(1500))
        let samples = Set((0..<20).map { _ in backoff.delay(attempt: 2) })
        #expect(samples.count > 1)
        #expect(samples.allSatisfy { $0 >= .milliseconds(200) && $0 <= .milliseconds(400) })
    }

    /// A command whose write failed is withdrawn: it no longer waits for a reply, and the
    /// commands before it still get theirs, in order.
    @Test func anUnwrittenCommandIsWithdrawn() {
        var machine = readyMachine()
        for i in 1...4 { _ = machine.enqueue(i, deadline: nil) }
        #expect(machine.withdraw { $0 == 4 })
        #expect(machine.withdraw { $0 == 3 })
        #expect(!machine.withdraw { $0 == 3 })
        #expect(machine.pendingCount == 2)
        guard case .succeed(1, _) = machine.receivedToken(token("+OK\r\n")) else { Issue.record("expected 1"); return }
        guard case .succeed(2, _) = machine.receivedToken(token("+OK\r\n")) else { Issue.record("expected 2"); return }
        // Answered: nothing to withdraw; and closing fails none of the withdrawn ones.
        #expect(!machine.withdraw { $0 == 1 })
        _ = machine.enqueue(5, deadline: nil)
        guard case .failAll(let promises, _, _) = machine.channelInactive() else { Issue.record("expected failAll"); return }
        #expect(promises == [5])
    }

    /// A withdrawn command's deadline no longer counts: it is not waiting for anything.
    @Test func aWithdrawnCommandDoesNotTimeOut() {
        var machine = readyMachine()
        let now = NIODeadline.now()
        _ = machine.enqueue(1, deadline: now + .seconds(10))
        _ = machine.enqueue(2, deadline: now + .seconds(1))
        #expect(machine.withdraw { $0 == 2 })
        guard case .reschedule(let next) = machine.timerFired(now: now + .seconds(2)) else { Issue.record("expected a reschedule"); return }
        #expect(next == now + .seconds(10))
    }
}
