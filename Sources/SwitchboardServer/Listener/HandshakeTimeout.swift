import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import SwitchboardCore
import Synchronization

/// Closes a connection that has not completed its first HTTP request (an upgrade or an API
/// call) within the deadline: slowloris-style slow headers, half-open handshakes and silent
/// TCP connections do not hold a socket forever. Cancelled once the request head is in:
/// ``FirstRequestRouter`` says so for a WebSocket upgrade; on an HTTP connection this handler
/// sits after NIO's HTTP decoder and sees the head itself.
///
/// The handler schedules no timer of its own: it joins its event loop's
/// ``LoopPendingHandshakes``, whose one timer visits the connections in deadline order.
final class HandshakeTimeoutHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    let timeout: TimeAmount
    let registry: PendingHandshakes
    /// When the connection is closed unless its first request head has arrived.
    private(set) var deadline = NIODeadline.distantFuture
    /// The head arrived, or the connection closed or timed out: nothing left to watch.
    private(set) var done = false
    /// The deadline passed: the connection is closing, and takes nothing more (over TLS the
    /// close waits up to a second for the client's `close_notify`, and bytes read meanwhile
    /// still come up the pipeline).
    private(set) var expired = false
    /// Kept until the handler leaves the pipeline (to leave it when the head arrives).
    private var context: ChannelHandlerContext?
    private var shard: LoopPendingHandshakes?
    /// The client's address, counted against ``PendingHandshakes/maxPerAddress`` until done.
    private var address: String?

    init(timeout: TimeAmount, registry: PendingHandshakes) {
        self.timeout = timeout
        self.registry = registry
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if let ip = context.channel.remoteAddress?.ipAddress {
            guard registry.admit(ip) else {
                // Too many from there not through their first request yet (TLS included):
                // closed before any of its work is done.
                done = true
                context.close(promise: nil)
                return
            }
            address = ip
        }
        self.context = context
        deadline = context.eventLoop.now + timeout
        let shard = registry.shard(for: context.eventLoop)
        self.shard = shard
        shard.add(self)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        // Also reached when the connection closes before its first request.
        finish()
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // (HTTP parts only: on a WebSocket connection it leaves the pipeline before the
        // session's handlers come in, and the router takes nothing once it expired.)
        guard !expired else { return }
        if case .head = unwrapInboundIn(data) {
            context.fireChannelRead(data)
            requestArrived()
            return
        }
        context.fireChannelRead(data)
    }

    /// Malformed HTTP before the first request completed: the clock stops, and the error goes
    /// on to ``HTTPPublishHandler`` (after this handler), which answers it with a JSON 400 and
    /// closes. (Closing here, as before, left the client without an answer.)
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !done, error is HTTPParserError { finish() }
        context.fireErrorCaught(error)
    }

    /// The request head arrived: stop the clock.
    func requestArrived() {
        guard let context else { return }
        finish()
        // Leave the pipeline (also when done already): a long-lived WebSocket session should
        // not carry it, and the session's handlers go in behind it.
        self.context = nil
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    /// The deadline passed (or the gateway is shutting down) before the first request.
    func expire() {
        guard let context, !done else { return }
        expired = true
        finish()
        context.close(promise: nil)
    }

    private func finish() {
        guard !done else { return }
        done = true
        if let address {
            registry.release(address)
            self.address = nil
        }
        shard?.finished()
        shard = nil
    }
}

/// The connections of one event loop still in their first request, in deadline order (every
/// handler of a listener has the same timeout, so arrival order is deadline order). One timer,
/// set for the earliest open deadline, replaces a timer per connection: a connect storm
/// schedules and cancels nothing. A finished handler stays in the queue until the sweep
/// reaches it, or until finished handlers are the majority and the queue is compacted.
/// Used only on its event loop.
final class LoopPendingHandshakes: @unchecked Sendable {
    let eventLoop: any EventLoop
    private var queue = CircularBuffer<HandshakeTimeoutHandler>()
    private var timer: Scheduled<Void>?
    private var timerDeadline = NIODeadline.distantFuture
    /// Open handshakes, readable from any thread.
    let openCount = Atomic<Int>(0)

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func add(_ handler: HandshakeTimeoutHandler) {
        eventLoop.preconditionInEventLoop()
        queue.append(handler)
        openCount.add(1, ordering: .relaxed)
        if timer == nil || handler.deadline < timerDeadline { arm(at: handler.deadline) }
    }

    /// A handler in the queue is done.
    func finished() {
        let open = openCount.subtract(1, ordering: .relaxed).newValue
        let finishedInQueue = queue.count - open
        if finishedInQueue > 64 && finishedInQueue > open {
            queue.removeAll { $0.done }
        }
    }

    /// Closes every connection still in its first request (shutdown).
    func expireAll() {
        eventLoop.preconditionInEventLoop()
        for handler in Array(queue) { handler.expire() }
        queue.removeAll()
        timer?.cancel()
        timer = nil
    }

    private func arm(at deadline: NIODeadline) {
        timer?.cancel()
        timerDeadline = deadline
        timer = eventLoop.scheduleTask(deadline: deadline) { [self] in sweep() }
    }

    private func sweep() {
        timer = nil
        let now = eventLoop.now
        while let first = queue.first {
            if first.done {
                queue.removeFirst()
            } else if first.deadline <= now {
                queue.removeFirst()
                first.expire()
            } else {
                arm(at: first.deadline)
                return
            }
        }
    }
}

/// Connections still in their first request, one ``LoopPendingHandshakes`` per event loop;
/// closed at shutdown so they cannot hold it up.
final class PendingHandshakes: Sendable {
    /// The listeners' loops, known up front: looked up without a lock.
    private let shards: [ObjectIdentifier: LoopPendingHandshakes]
    /// Any other loop (an `EmbeddedEventLoop` in tests).
    private let others = NIOLockedValueBox<[ObjectIdentifier: LoopPendingHandshakes]>([:])

    /// Connections from one address still in their first request, at most (0: no limit).
    let maxPerAddress: Int
    private let perAddress = NIOLockedValueBox<[String: Int]>([:])
    /// Connections closed at accept: their address had ``maxPerAddress`` in their first request.
    let refused = Atomic<Int>(0)

    let logger: Logger?
    private let refusals = LogThrottle()

    /// What an address counts under (an IPv6 address: its /64, by default).
    let key: ClientAddressKey

    init(eventLoops: [any EventLoop] = [], maxPerAddress: Int = 0, key: ClientAddressKey = ClientAddressKey(), logger: Logger? = nil) {
        var shards: [ObjectIdentifier: LoopPendingHandshakes] = [:]
        for loop in eventLoops { shards[ObjectIdentifier(loop)] = LoopPendingHandshakes(eventLoop: loop) }
        self.shards = shards
        self.maxPerAddress = maxPerAddress
        self.key = key
        self.logger = logger
    }

    /// Counts a connection from `address` in its first request; false (counted as refused)
    /// when that address has ``maxPerAddress`` already.
    func admit(_ address: String) -> Bool {
        guard maxPerAddress > 0 else { return true }
        let counted = key(address)
        let admitted = perAddress.withLockedValue { counts in
            guard counts[counted, default: 0] < maxPerAddress else { return false }
            counts[counted, default: 0] += 1
            return true
        }
        if !admitted {
            refused.add(1, ordering: .relaxed)
            logger?.log(
                level: .warning, throttledBy: refusals,
                "connection closed at accept: its address has limits.max-pending-connections-per-ip connections in their first request",
                metadata: ["address": "\(address)", "counted-as": "\(counted)", "limit": "\(maxPerAddress)"])
        }
        return admitted
    }

    /// A connection ``admit(_:)`` counted is through its first request, or closed.
    func release(_ address: String) {
        guard maxPerAddress > 0 else { return }
        let address = key(address)
        perAddress.withLockedValue { counts in
            let n = counts[address, default: 0] - 1
            counts[address] = n > 0 ? n : nil
        }
    }

    /// Addresses with connections in their first request (tests).
    var addressesPending: Int { perAddress.withLockedValue { $0.count } }

    func shard(for eventLoop: any EventLoop) -> LoopPendingHandshakes {
        let id = ObjectIdentifier(eventLoop)
        if let shard = shards[id] { return shard }
        return others.withLockedValue { others in
            if let shard = others[id] { return shard }
            let shard = LoopPendingHandshakes(eventLoop: eventLoop)
            others[id] = shard
            return shard
        }
    }

    private var allShards: [LoopPendingHandshakes] {
        Array(shards.values) + others.withLockedValue { Array($0.values) }
    }

    /// Connections still in their first request.
    var count: Int { allShards.reduce(0) { $0 + $1.openCount.load(ordering: .relaxed) } }

    /// Closes the connections still in their first request, except on `spared` loops (the API
    /// port's, whose listener closes its own when it stops: backends go on publishing while
    /// sessions drain).
    func closeAll(sparing spared: [any EventLoop] = []) {
        let sparedIDs = Set(spared.map { ObjectIdentifier($0) })
        for shard in allShards where !sparedIDs.contains(ObjectIdentifier(shard.eventLoop)) {
            if shard.eventLoop.inEventLoop {
                shard.expireAll()
            } else {
                shard.eventLoop.execute { shard.expireAll() }
            }
        }
    }
}
