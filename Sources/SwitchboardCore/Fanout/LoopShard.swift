import NIOConcurrencyHelpers
import NIOCore
import STOMPCodec
import SwitchboardWire

/// A session registered with its loop's shard: it is visited by the shared heart-beat timer
/// when a check is due, and can be closed at shutdown.
package protocol HeartbeatClient: AnyObject {
    /// Runs the checks due at `tick` (the shard's current tick) and returns the tick of the
    /// next one, or nil when nothing needs checking until the session asks again
    /// (``LoopShard/scheduleHeartbeatCheck(_:at:)``).
    func heartbeatTick(_ tick: UInt64) -> UInt64?
    /// Ends the session with an `ERROR` saying `reason`: after the step in flight with
    /// `waitForStep`, else at once.
    func close(reason: String, waitForStep: Bool, kind: SessionErrorKind)
    /// Bytes written to the connection and not yet taken by it (see ``OutboundMemory``).
    var pendingOutboundBytes: Int { get }
    /// Bytes the session holds of what the client sent (frames of open transactions): counted
    /// in the instance's total, never a reason to close it as a slow consumer (they do not go
    /// down while the client reads).
    var heldInboundBytes: Int { get }
    /// Bytes the kernel holds for the connection and has not sent (its peer's window stays
    /// closed while it does not read); nil when unknown. A system call: read only for
    /// connections holding much while the instance is near its cap.
    var unsentKernelBytes: Int? { get }
    /// What the last outbound sweep that looked closer at this connection saw (kept by the shard).
    var outboundSample: OutboundSample { get set }
}

extension HeartbeatClient {
    package var heldInboundBytes: Int { 0 }
}

/// Hot-path counters of one event loop: plain integers, written only on that loop and read
/// through ``LoopShard/readCounters()`` (a hop to the loop), so counting costs no atomics.
package struct ShardCounters: Sendable {
    package var framesIn = [Int](repeating: 0, count: STOMPCommand.allCases.count)
    package var framesOut = [Int](repeating: 0, count: STOMPCommand.allCases.count)
    package var messagesDelivered = 0
    package var bytesOut = 0
    /// Times a loop entered or left busy mode (see ``LoopBusyMode``).
    package var busySwitches = 0
    /// Loops in busy mode now (0 or 1 per loop; summed by ``add(_:)``).
    package var loopsBusy = 0
    /// Times a loop left messages from other loops for after its next I/O pass.
    package var ioYields = 0

    package init() {}

    /// Adds the MESSAGE frames a delivery pass wrote.
    package mutating func record(_ batch: DeliveryBatch) {
        messagesDelivered &+= batch.delivered
        framesOut[STOMPCommand.message.ordinal] &+= batch.delivered
        bytesOut &+= batch.bytes
    }

    /// Adds `other` into `self`.
    package mutating func add(_ other: ShardCounters) {
        for i in framesIn.indices {
            framesIn[i] += other.framesIn[i]
            framesOut[i] += other.framesOut[i]
        }
        messagesDelivered += other.messagesDelivered
        bytesOut += other.bytesOut
        busySwitches += other.busySwitches
        loopsBusy += other.loopsBusy
        ioYields += other.ioYields
    }
}

/// A session that can receive messages addressed to it by id.
package protocol SessionDeliveryTarget: AnyObject {
    var sessionID: String { get }
    /// Writes `message` to this session's subscriptions that match its destination, flushed.
    func deliverToOwnSubscriptions(_ message: PublishedMessage)
    /// Turns Nagle's algorithm on (`TCP_NODELAY` off) or off for this session's connection.
    func setNagle(_ enabled: Bool)
}

extension SessionDeliveryTarget {
    package func setNagle(_ enabled: Bool) {}
}

/// The state of one event loop: its sessions' subscriptions, flush batching and the shared
/// heart-beat timer. Everything but ``eventLoop`` is confined to that loop.
package final class LoopShard: @unchecked Sendable {
    package let eventLoop: any EventLoop
    let index: Int
    unowned let hub: FanoutHub

    private var exact: [String: [LocalSubscription]] = [:]
    /// The activation each exact bucket belongs to (``FanoutHub/addInterest(_:shard:)``).
    private var exactGeneration: [String: UInt64] = [:]
    private var wildcard: [DestinationPattern: [LocalSubscription]] = [:]
    /// ``wildcard``'s patterns, to find those matching a destination without trying each.
    private let wildcardIndex = DestinationPatternIndex()
    /// Sinks written to since the last flush pass.
    private var dirty: [any SubscriptionSink] = []
    private var dirtySet = Set<ObjectIdentifier>()
    /// The sinks of the pass being flushed (`dirty`'s spare storage).
    private var flushing: [any SubscriptionSink] = []
    /// Frames of the message being delivered (shared by subscribers that get the same bytes)
    /// and the pass's tallies.
    private var batch = DeliveryBatch()
    private var flushScheduled = false
    /// Counts flush passes: a pass task finding another pass ran since it was scheduled (a
    /// drain flushing a chunk at once) does nothing (it cleared `flushScheduled` while the
    /// task due now was pending, and the extra passes went on replacing themselves).
    private var flushPasses: UInt64 = 0
    /// The ring the inbox is swapped with (kept, emptied, between drains: a new one per drain
    /// was an allocation, and the inbox then regrew from one slot under the publishers' lock).
    private var spareInbox: CircularBuffer<(PublishedMessage, DeliveryScope, UInt64?)>? = CircularBuffer(initialCapacity: 16)
    /// When the last flush pass ran (for ``FanoutHub/writeCoalescing``).
    private var lastFlushPass = NIODeadline.distantPast
    /// Puts the loop in busy mode while it is saturated (nil: never).
    private var busyMode: LoopBusyMode?

    /// Every session of this loop, with when it joined (for ``closeAll(reason:waitForStep:kind:joinedBefore:)``).
    private var heartbeatClients: [ObjectIdentifier: (client: any HeartbeatClient, joined: NIODeadline)] = [:]
    /// Those with a check to come, by due tick.
    private var wheel = HeartbeatWheel(slotCount: 512)
    private var dueClients: [any HeartbeatClient] = []
    private var sessionsByID: [String: any SessionDeliveryTarget] = [:]
    private var timer: RepeatedTask?
    /// Outbound sweeps so far (``sweepOutbound()``).
    private var outboundSweeps: UInt64 = 0
    /// Monotonic heart-beat tick counter; one tick is ``FanoutHub/heartbeatResolution``.
    package private(set) var tick: UInt64 = 0
    /// Messages handed to this loop from any thread and not yet delivered, in hand-over order
    /// (the one shared field: guarded by its lock).
    private let inbox = NIOLockedValueBox(Inbox())
    /// ``FanoutHub/maxBacklogBytes``, read once (not through `hub` on every hand-over).
    private let maxBacklogBytes: Int

    private struct Inbox {
        /// A ring: a drain takes a chunk from its front in O(chunk) (an array's `removeFirst`
        /// moved the whole backlog, under the lock every publisher takes).
        var queue = CircularBuffer<(PublishedMessage, DeliveryScope, UInt64?)>()
        /// What `queue` counts against ``FanoutHub/maxBacklogBytes``.
        var bytes = 0
        /// Past ``FanoutHub/maxBacklogBytes`` since the last drain began.
        var over = false
    }

    /// What a queued message counts against ``FanoutHub/maxBacklogBytes``: its body and 256
    /// bytes for the rest.
    static func backlogCost(of message: PublishedMessage) -> Int { message.body.readableBytes + 256 }
    /// The task phase of the last inbox drain (see ``drainInbox()``) and when it first drained.
    private var drainPhase: UInt64 = .max
    private var drainPhaseStarted = NIODeadline.distantPast
    /// How far ahead a yielding drain is scheduled: past the end of the current task phase
    /// (NIO ends it once no task is due), near enough not to idle the loop.
    static let ioYieldDelay = TimeAmount.microseconds(20)

    init(eventLoop: any EventLoop, index: Int, hub: FanoutHub) {
        self.eventLoop = eventLoop
        self.index = index
        self.hub = hub
        self.maxBacklogBytes = hub.maxBacklogBytes
        if hub.busyPercent > 0 {
            // A thread's usage can only be read on that thread.
            eventLoop.execute {
                let usage = hub.threadUsage()
                self.busyMode = LoopBusyMode(
                    thresholdPercent: hub.busyPercent, now: eventLoop.now,
                    cpuNanos: usage.cpuNanos, waits: usage.waits)
            }
        }
    }

    /// Whether this loop is saturated: its connections run with Nagle (with
    /// ``FanoutHub/nagleWhenBusy``) and its passes are spaced by ``FanoutHub/busyWriteCoalescing``.
    package var isBusy: Bool { busyMode?.busy ?? false }

    /// This loop's counters; mutate only on ``eventLoop``.
    package var counters = ShardCounters()

    /// A copy of the counters, read on the loop.
    package func readCounters() -> EventLoopFuture<ShardCounters> {
        eventLoop.submit {
            var c = self.counters
            c.loopsBusy = self.isBusy ? 1 : 0
            return c
        }
    }

    /// Number of local subscriptions (all destinations).
    package private(set) var subscriptionCount = 0

    // MARK: Subscriptions

    /// Registers a subscription. Must be called on ``eventLoop``.
    package func add(_ subscription: LocalSubscription) {
        eventLoop.preconditionInEventLoop()
        let p = subscription.pattern
        let count =
            p.isWildcard
            ? Self.appendInPlace(subscription, to: &wildcard[p, default: []])
            : Self.appendInPlace(subscription, to: &exact[p.text, default: []])
        subscriptionCount += 1
        if count == 1 {
            if p.isWildcard { wildcardIndex.insert(p) }
            let generation = hub.addInterest(p, shard: index)
            if !p.isWildcard { exactGeneration[p.text] = generation }
        }
    }

    /// Removes a subscription added with ``add(_:)``. Must be called on ``eventLoop``.
    package func remove(_ subscription: LocalSubscription) {
        eventLoop.preconditionInEventLoop()
        let p = subscription.pattern
        let emptied: Bool?
        if p.isWildcard {
            emptied = Self.removeInPlace(subscription, from: &wildcard[p])
            if emptied == true {
                wildcard[p] = nil
                wildcardIndex.remove(p)
            }
        } else {
            emptied = Self.removeInPlace(subscription, from: &exact[p.text])
            if emptied == true {
                exact[p.text] = nil
                exactGeneration[p.text] = nil
            }
        }
        guard let emptied else { return }
        subscription.active = false
        subscriptionCount -= 1
        if emptied { hub.removeInterest(p, shard: index) }
    }

    /// Appends `subscription` to `bucket` (mutated in place: taking a bucket out of the
    /// dictionary and storing it back would copy it, O(n) per SUBSCRIBE); returns the new count.
    private static func appendInPlace(_ subscription: LocalSubscription, to bucket: inout [LocalSubscription]) -> Int {
        subscription.slot = bucket.count
        bucket.append(subscription)
        return bucket.count
    }

    /// Swap-removes `subscription` from `bucket` in O(1) without copying it; returns whether
    /// the bucket is now empty, or nil if the subscription was not in it.
    private static func removeInPlace(_ subscription: LocalSubscription, from bucket: inout [LocalSubscription]?) -> Bool? {
        let slot = subscription.slot
        guard bucket != nil, slot >= 0, slot < bucket!.count, bucket![slot] === subscription else { return nil }
        let last = bucket!.removeLast()
        if slot < bucket!.count {
            bucket![slot] = last
            last.slot = slot
        }
        subscription.slot = -1
        return bucket!.isEmpty
    }

    /// Hands `message` to this loop, from any thread. Messages reach the subscribers in the
    /// order they were handed over, whichever threads handed them: on this loop with nothing
    /// queued it is delivered at once; otherwise it joins the queue, and one task delivers
    /// everything queued (one hop per burst, not per message).
    func enqueue(_ message: PublishedMessage, scope: DeliveryScope, generation: UInt64? = nil) {
        let onLoop = eventLoop.inEventLoop
        let limit = maxBacklogBytes
        var changed = false
        let first: Bool? = inbox.withLockedValue { box in
            if onLoop && box.queue.isEmpty { return nil }
            box.queue.append((message, scope, generation))
            box.bytes += Self.backlogCost(of: message)
            if limit > 0, !box.over, box.bytes > limit {
                box.over = true
                changed = hub.backlogExceeded(shard: index)
            }
            return box.queue.count == 1
        }
        if changed { hub.backlogChanged() }
        switch first {
        case nil: deliverLocally(message, scope: scope, generation: generation)
        case true?: eventLoop.execute { self.drainInbox() }
        case false?: break
        }
    }

    /// Delivers what other threads handed over, unless this loop has already spent
    /// ``FanoutHub/taskPhaseBudget`` on that in its current task phase.
    ///
    /// NIO runs every queued task, including tasks queued while it runs them, before it polls
    /// for I/O again. Two loops that both publish (API connections or STOMP publishers on each)
    /// keep handing each other messages, so each drain queues the next one in the same phase,
    /// and a saturated loop could go on delivering for seconds without reading its own sockets:
    /// requests piled up unread while the loop fanned out the other loop's messages. Past the
    /// budget the rest stays in the inbox (other loops then queue no task: they only append)
    /// and is delivered by a task due just after the phase ends, when NIO has polled.
    private func drainInbox() {
        if let taskPhase = hub.taskPhase {
            let phase = taskPhase()
            let now = NIODeadline.now()
            if phase != drainPhase {
                drainPhase = phase
                drainPhaseStarted = now
            } else if now - drainPhaseStarted >= hub.taskPhaseBudget {
                counters.ioYields &+= 1
                eventLoop.scheduleTask(in: Self.ioYieldDelay) { self.drainInbox() }
                return
            }
        }
        var queued = spareInbox.take() ?? CircularBuffer(initialCapacity: 16)
        let limit = maxBacklogBytes
        let (wasOver, more) = inbox.withLockedValue { box -> (Bool, Bool) in
            let wasOver = box.over
            // At most ``drainChunkBytes`` per task: a backlog delivered in one task went into
            // every subscriber's buffer whole before any flush (64 MiB each at the backlog
            // limit: gigabytes, and fast readers closed as slow consumers).
            var taken = 0
            var cost = 0
            for (message, _, _) in box.queue {
                if taken > 0 && cost >= Self.drainChunkBytes { break }
                cost += Self.backlogCost(of: message)
                taken += 1
            }
            if taken == box.queue.count {
                swap(&queued, &box.queue)
                box.bytes = 0
            } else {
                queued.reserveCapacity(taken)
                for _ in 0..<taken { queued.append(box.queue.removeFirst()) }
                box.bytes -= cost
            }
            if limit <= 0 || box.bytes <= limit { box.over = false }
            return (wasOver, !box.queue.isEmpty)
        }
        for (message, scope, generation) in queued { deliverLocally(message, scope: scope, generation: generation) }
        // Kept for the next drain; one a backlog made large is replaced by a small one.
        if queued.capacity <= 1_024 {
            queued.removeAll(keepingCapacity: true)
            spareInbox = queued
        } else {
            spareInbox = CircularBuffer(initialCapacity: 16)
        }
        if more {
            // This chunk goes out before the next is delivered, even while busy mode spaces
            // flushes out (its pass, due later, would otherwise carry every chunk until then).
            if flushScheduled { flushDirty() }
            // Past the phase's budget, the next drain yields to I/O.
            eventLoop.execute { self.drainInbox() }
        }
        // Delivered: publishes waiting for this backlog go on, unless what came meanwhile (or
        // what is still queued) is over the limit again.
        if wasOver, inbox.withLockedValue({ box in !box.over && hub.backlogDrained(shard: index) }) {
            hub.backlogChanged()
        }
    }

    /// How much of the inbox (``backlogCost(of:)``) one task delivers at most.
    package static let drainChunkBytes = 256 * 1024

    /// Writes `message` to every matching local subscription, then schedules one flush per
    /// touched session for the end of this batch.
    /// A copy of another activation than the exact bucket's (`generation`) skips it.
    func deliverLocally(_ message: PublishedMessage, scope: DeliveryScope = .all, generation: UInt64? = nil) {
        if case .session(let id) = scope {
            sessionsByID[id]?.deliverToOwnSubscriptions(message)
            return
        }
        batch.reset(tick: tick)
        switch scope {
        case .all, .exact:
            if let bucket = exact[message.destination], generation == nil || exactGeneration[message.destination] == generation {
                for sub in bucket { write(message, sub) }
            }
            if case .all = scope, !wildcard.isEmpty {
                wildcardIndex.forEachMatch(message.destination) { pattern in
                    for sub in wildcard[pattern] ?? [] { write(message, sub) }
                }
            }
        case .patterns(let patterns):
            for pattern in patterns where pattern.matches(message.destination) {
                if let bucket = wildcard[pattern] {
                    for sub in bucket { write(message, sub) }
                }
            }
        case .session:
            break  // above
        }
        counters.record(batch)
        batch.frames.clear()
        scheduleFlush()
    }

    /// Makes a session reachable by id, on this loop and through the hub.
    package func registerSession(_ session: any SessionDeliveryTarget) {
        eventLoop.preconditionInEventLoop()
        sessionsByID[session.sessionID] = session
        hub.registerSession(session.sessionID, shard: self)
        if isBusy && hub.nagleWhenBusy { session.setNagle(true) }
    }

    package func unregisterSession(_ session: any SessionDeliveryTarget) {
        eventLoop.preconditionInEventLoop()
        guard sessionsByID.removeValue(forKey: session.sessionID) != nil else { return }
        hub.unregisterSession(session.sessionID)
    }

    @inline(__always)
    private func write(_ message: PublishedMessage, _ sub: LocalSubscription) {
        sub.sink.deliver(message, to: sub, batch: &batch)
        markDirty(sub.sink)
    }

    /// Records that `sink` has unflushed writes; it is flushed at the end of the batch.
    package func markDirty(_ sink: any SubscriptionSink) {
        if dirtySet.insert(ObjectIdentifier(sink)).inserted { dirty.append(sink) }
    }

    /// Flushes dirty sinks once the tasks already queued on the loop (more deliveries,
    /// typically) have run, so a burst costs one flush per connection.
    ///
    /// Passes are spaced by at least ``FanoutHub/writeCoalescing`` (``FanoutHub/busyWriteCoalescing``
    /// while the loop is in busy mode): if the last pass ran more recently than that, this one
    /// waits for the rest of the interval and carries every message delivered meanwhile — one
    /// `write` per connection for several messages, on both ends. At low rates passes are
    /// further apart than the interval and nothing waits.
    package func scheduleFlush() {
        guard !flushScheduled, !dirty.isEmpty else { return }
        flushScheduled = true
        let window = isBusy ? hub.busyWriteCoalescing : hub.writeCoalescing
        let earliest = lastFlushPass + window
        let pass = flushPasses
        if window == .zero || eventLoop.now >= earliest {
            eventLoop.execute { if self.flushPasses == pass { self.flushDirty() } }
        } else {
            eventLoop.scheduleTask(deadline: earliest) { if self.flushPasses == pass { self.flushDirty() } }
        }
    }

    private func flushDirty() {
        flushPasses &+= 1
        flushScheduled = false
        let start = eventLoop.now
        lastFlushPass = start
        if busyMode != nil, busyMode!.windowEnded(at: start) {
            let usage = hub.threadUsage()
            let action = busyMode!.passStarting(at: start, cpuNanos: usage.cpuNanos, waits: usage.waits)
            if action != .none {
                if hub.nagleWhenBusy {
                    let on = action == .enterBusyMode
                    for session in sessionsByID.values { session.setNagle(on) }
                }
                counters.busySwitches &+= 1
            }
        }
        // Swapped, not copied: a copy would make `removeAll(keepingCapacity:)` allocate.
        swap(&dirty, &flushing)
        dirtySet.removeAll(keepingCapacity: true)
        for sink in flushing { sink.flushDeliveries() }
        flushing.removeAll(keepingCapacity: true)
    }

    // MARK: Heart-beats

    /// Adds a session to the shared heart-beat timer of this loop; its first check is at the
    /// next tick.
    package func addHeartbeatClient(_ client: any HeartbeatClient) {
        eventLoop.preconditionInEventLoop()
        heartbeatClients[ObjectIdentifier(client)] = (client, .now())
        wheel.schedule(client, at: tick &+ 1)
        if timer == nil {
            let period = hub.heartbeatResolution
            timer = eventLoop.scheduleRepeatedTask(initialDelay: period, delay: period) { [weak self] _ in
                self?.onTick()
            }
        }
    }

    /// Moves a session's next check to `tick` (the next tick at the earliest), e.g. once
    /// CONNECT has set its heart-beats.
    package func scheduleHeartbeatCheck(_ client: any HeartbeatClient, at tick: UInt64) {
        eventLoop.preconditionInEventLoop()
        guard heartbeatClients[ObjectIdentifier(client)] != nil else { return }
        wheel.schedule(client, at: max(tick, self.tick &+ 1))
    }

    package func removeHeartbeatClient(_ client: any HeartbeatClient) {
        eventLoop.preconditionInEventLoop()
        heartbeatClients[ObjectIdentifier(client)] = nil
        wheel.remove(client)
    }

    /// Sessions waiting for a heart-beat or timeout check (metrics and tests).
    package var heartbeatChecksScheduled: Int { wheel.count }

    private func onTick() {
        tick &+= 1
        let now = tick
        if now % ticksPerSweep == 0 { sweepOutbound() }
        wheel.takeDue(at: now, into: &dueClients)
        for client in dueClients {
            // A check may close sessions: this one (then it returns nil) or others due in the
            // same tick (then they are no longer registered). Its own heart-beat write may close
            // it too (a peer gone: EPIPE, and the channel goes inactive inside the write): it
            // returned its next check, but is no longer registered, and is not scheduled again.
            guard heartbeatClients[ObjectIdentifier(client)] != nil, let next = client.heartbeatTick(now),
                heartbeatClients[ObjectIdentifier(client)] != nil
            else { continue }
            wheel.schedule(client, at: max(next, now &+ 1))
        }
        dueClients.removeAll(keepingCapacity: true)
    }

    // MARK: Outbound memory

    /// About once a second.
    private var ticksPerSweep: UInt64 { UInt64(max(1, 1_000_000_000 / max(hub.heartbeatResolution.nanoseconds, 1))) }

    /// Sums what this loop's connections have not taken yet and reports it (``OutboundMemory``).
    /// Near the cap (over half of it) it looks closer at the connections holding
    /// ``OutboundMemory/fallingBehindFloor`` or more (the kernel's unsent bytes too); over it, it
    /// closes those falling behind (``OutboundMemory/isFallingBehind(outstanding:previous:sweep:)``),
    /// those holding the most first, until this loop's share of the excess is shed. Returns how
    /// many it closed.
    @discardableResult
    package func sweepOutbound() -> Int {
        eventLoop.preconditionInEventLoop()
        outboundSweeps &+= 1
        let memory = hub.outbound
        var large: [any HeartbeatClient] = []
        var pending: [Int] = []
        var sum = 0
        for (client, _) in heartbeatClients.values {
            sum += client.heldInboundBytes
            let bytes = client.pendingOutboundBytes
            guard bytes > 0 else { continue }
            sum += bytes
            if memory.limit > 0, bytes >= OutboundMemory.fallingBehindFloor {
                large.append(client)
                pending.append(bytes)
            }
        }
        let total = memory.report(sum, loop: index)
        guard memory.limit > 0, total > memory.limit / 2 else { return 0 }
        var behind: [Int] = []
        for i in large.indices {
            let outstanding = pending[i] + (large[i].unsentKernelBytes ?? 0)
            if OutboundMemory.isFallingBehind(outstanding: outstanding, previous: large[i].outboundSample, sweep: outboundSweeps) {
                behind.append(i)
            }
            large[i].outboundSample = OutboundSample(sweep: outboundSweeps, bytes: outstanding)
        }
        let chosen = OutboundMemory.slowest(behind.map { pending[$0] }, toShed: memory.share(ofExcess: total, loopBytes: sum)).map { behind[$0] }
        guard !chosen.isEmpty else { return 0 }
        var shed = 0
        for i in chosen {
            shed += pending[i]
            large[i].close(
                reason: "slow consumer: the instance's outbound buffers are over limits.max-pending-bytes-total (\(memory.limit) bytes);"
                    + " this connection had \(pending[i]) bytes not taken",
                waitForStep: false, kind: .slowConsumer)
        }
        // Freed within moments (the connections close): the other loops do not shed it again.
        memory.report(sum - shed, loop: index)
        memory.countShed(chosen.count)
        return chosen.count
    }

    /// Closes every session of this loop with an `ERROR` saying `reason`: each after its step in
    /// flight with `waitForStep`, else at once. With `joinedBefore`, only the sessions that
    /// joined by then: the caller found a reason to close them (its presence registry lost)
    /// at that instant, and a session that joined after it, on a loop whose close ran late
    /// (its thread was descheduled between the loops), registered anew and stays.
    package func closeAll(reason: String, waitForStep: Bool = true, kind: SessionErrorKind = .shutdown, joinedBefore: NIODeadline? = nil) {
        eventLoop.execute {
            for (client, joined) in Array(self.heartbeatClients.values) where joinedBefore.map({ joined <= $0 }) ?? true {
                client.close(reason: reason, waitForStep: waitForStep, kind: kind)
            }
        }
    }

    /// Stops the heart-beat timer (at shutdown).
    package func stop() {
        eventLoop.execute {
            self.timer?.cancel()
            self.timer = nil
        }
    }
}
