import NIOConcurrencyHelpers
import NIOCore
import SwitchboardWire
import Synchronization

/// Told when the instance gains its first or loses its last subscriber for a destination or
/// wildcard pattern. The Redis engine subscribes and unsubscribes in Redis on these calls.
///
/// Calls are made in order, under the hub's interest lock: implementations must not block and
/// must not call back into the hub synchronously.
package protocol InterestObserver: AnyObject, Sendable {
    /// `generation` numbers this activation of an exact destination (0 for a wildcard): the
    /// messages the observer delivers for it carry it (``FanoutHub/deliver(_:scope:generation:)``),
    /// so a copy still queued for a loop when the last subscriber left never reaches the
    /// subscribers of a later activation, which has its own Redis subscription and position.
    func interestActivated(_ pattern: DestinationPattern, generation: UInt64)
    func interestDeactivated(_ pattern: DestinationPattern)
}

/// Which subscriptions a delivery is for.
///
/// The Redis engine receives a message once per Redis subscription: on the destination's
/// channel (for exact subscriptions) and once per matching pattern (for wildcard ones), so
/// it delivers each copy to its own part and no subscription gets a message twice.
package enum DeliveryScope: Sendable {
    /// Exact and wildcard subscriptions.
    case all
    /// Only subscriptions to exactly this destination.
    case exact
    /// Only wildcard subscriptions with one of these patterns.
    case patterns([DestinationPattern])
    /// Only the subscriptions of this session that match (``FanoutHub/deliver(_:toSession:)``).
    case session(String)
}

/// Routes published messages to the event loops that have subscribers for them.
///
/// Each event loop has a ``LoopShard`` holding its sessions' subscriptions. The hub keeps only
/// an interest index (destination → shards, as a bitmask), so a message hops once to each
/// interested loop and is written there to every local subscriber, with one flush per
/// connection per batch.
package final class FanoutHub: Sendable {
    private struct Index {
        var exact: [String: UInt64] = [:]
        /// The activation of each exact destination with interest (see ``InterestObserver``).
        var exactGeneration: [String: UInt64] = [:]
        var nextGeneration: UInt64 = 1
        var wildcard: [DestinationPattern: UInt64] = [:]
        /// ``wildcard``'s patterns, to find those matching a destination without trying each.
        let wildcardIndex = DestinationPatternIndex()
        var shards: [ObjectIdentifier: LoopShard] = [:]
        var shardList: [LoopShard] = []
        weak var observer: (any InterestObserver)?
        var sessions: [String: LoopShard] = [:]
    }

    /// Most event loops (shards) one hub can serve: the interest masks are 64-bit.
    package static let maxShards = 64

    private let state = NIOLockedValueBox(Index())
    package let heartbeatResolution: TimeAmount
    /// Flush passes of one loop closer together than this are merged into one, so under a
    /// high message rate a connection gets several messages per `write` (see ``LoopShard``).
    package let writeCoalescing: TimeAmount
    /// The spacing of flush passes while a loop is saturated (see ``LoopBusyMode``): wider
    /// than ``writeCoalescing``, since queueing delay then dwarfs it and fewer, larger writes
    /// are what lets the loop catch up.
    package let busyWriteCoalescing: TimeAmount
    /// CPU share of a loop's thread (per cent) from which it counts as saturated until the
    /// load is gone (see ``LoopBusyMode``); 0: never.
    package let busyPercent: Int
    /// Whether a saturated loop also switches its connections to Nagle's algorithm.
    package let nagleWhenBusy: Bool
    /// Reads the calling loop thread's CPU time and waits (``LoopBusyMode/threadUsage()``).
    package let threadUsage: @Sendable () -> (cpuNanos: Int64, waits: Int64?)
    /// The number of task phases the calling loop thread has finished (NIO's tick counter, see
    /// ``LoopShard``); nil: messages from other loops are delivered without yielding to I/O.
    package let taskPhase: (@Sendable () -> UInt64)?
    /// How long a loop delivers messages handed over by other loops within one task phase
    /// before it leaves the rest for after its next I/O pass.
    package let taskPhaseBudget: TimeAmount
    /// Bytes of messages one loop may have queued (handed over by other threads, not delivered
    /// yet) before publishes wait for its backlog to drain (see ``admission(on:)``); 0: no limit.
    package let maxBacklogBytes: Int
    /// The instance's outbound memory and its cap (see ``OutboundMemory``).
    package let outbound: OutboundMemory
    /// How long a publish waits for a backlog over ``maxBacklogBytes`` to drain before it is
    /// refused with ``FanoutOverloaded``.
    package let admissionTimeout: TimeAmount
    /// Which loops are over ``maxBacklogBytes``, and the publishes waiting for none to be.
    let backlog = NIOLockedValueBox(BacklogState())
    /// Whether a publish must look at ``backlog`` (a backlog is over the limit, or publishes
    /// wait or were released and not run yet): written under its lock, read without it on
    /// every publish, which then usually takes no lock at all.
    let admissionGate = Atomic<Bool>(false)
    let backlogObservers = NIOLockedValueBox<[@Sendable () -> Void]>([])

    /// - Parameters:
    ///   - writeCoalescing: zero flushes every batch at once.
    ///   - busyWriteCoalescing: the spacing while saturated; nil: `writeCoalescing`.
    ///   - busyPercent: 0…100; 0: a loop never counts as saturated.
    ///   - nagleWhenBusy: false leaves the connections' `TCP_NODELAY` alone.
    ///   - threadUsage: reads the calling loop thread's usage (tests pass a synthetic one).
    ///   - taskPhase: the calling loop thread's count of finished task phases (NIO's tick
    ///     counter); nil: never yield to I/O.
    ///   - taskPhaseBudget: see ``taskPhaseBudget``.
    ///   - maxBacklogBytes: see ``maxBacklogBytes``.
    ///   - admissionTimeout: see ``admissionTimeout``.
    ///   - maxPendingBytesTotal: the cap of ``outbound`` (0: none).
    package init(
        eventLoops: [any EventLoop] = [], heartbeatResolution: TimeAmount = .milliseconds(250),
        writeCoalescing: TimeAmount = .zero, busyWriteCoalescing: TimeAmount? = nil,
        busyPercent: Int = 0, nagleWhenBusy: Bool = true,
        threadUsage: @escaping @Sendable () -> (cpuNanos: Int64, waits: Int64?) = LoopBusyMode.threadUsage,
        taskPhase: (@Sendable () -> UInt64)? = nil, taskPhaseBudget: TimeAmount = .milliseconds(2),
        maxBacklogBytes: Int = 64 * 1024 * 1024, admissionTimeout: TimeAmount = .seconds(10), maxPendingBytesTotal: Int = 0
    ) {
        self.maxBacklogBytes = maxBacklogBytes
        self.outbound = OutboundMemory(limit: maxPendingBytesTotal, loops: eventLoops.count)
        self.admissionTimeout = admissionTimeout
        self.threadUsage = threadUsage
        self.taskPhase = taskPhase
        self.taskPhaseBudget = taskPhaseBudget
        precondition((0...100).contains(busyPercent))
        self.heartbeatResolution = heartbeatResolution
        self.writeCoalescing = writeCoalescing
        self.busyWriteCoalescing = max(writeCoalescing, busyWriteCoalescing ?? writeCoalescing)
        self.busyPercent = busyPercent
        self.nagleWhenBusy = nagleWhenBusy
        for loop in eventLoops { _ = shard(for: loop) }
    }

    /// Sets the engine told about interest changes.
    package func setInterestObserver(_ observer: any InterestObserver) {
        state.withLockedValue { $0.observer = observer }
    }

    /// The shard of `eventLoop`, created on first use.
    package func shard(for eventLoop: any EventLoop) -> LoopShard {
        let key = ObjectIdentifier(eventLoop)
        return state.withLockedValue { s in
            if let shard = s.shards[key] { return shard }
            precondition(s.shardList.count < Self.maxShards, "too many event loops for one hub")
            let shard = LoopShard(eventLoop: eventLoop, index: s.shardList.count, hub: self)
            s.shards[key] = shard
            s.shardList.append(shard)
            return shard
        }
    }

    /// Every shard so far.
    package var shards: [LoopShard] { state.withLockedValue { $0.shardList } }

    /// Delivers `message` to the local subscribers in `scope` whose subscription matches it.
    /// Each loop gets messages in the order of the calls: calls made one after the other (from
    /// one thread, or under a lock, as a destination's history numbers and hands them over)
    /// keep that order on every loop (see ``LoopShard/enqueue(_:scope:)``). Calls made at the
    /// same time on different threads are ordered per loop only: two loops may see them in
    /// different orders.
    /// `generation`, if any, is the activation of the destination the copy comes from: loops
    /// whose subscribers joined a later one drop it, even if it was queued before.
    package func deliver(_ message: PublishedMessage, scope: DeliveryScope = .all, generation: UInt64? = nil) {
        let targets: [LoopShard] = state.withLockedValue { s in
            var mask: UInt64 = 0
            switch scope {
            case .all:
                mask = s.exact[message.destination] ?? 0
                s.wildcardIndex.forEachMatch(message.destination) { mask |= s.wildcard[$0] ?? 0 }
            case .exact:
                mask = s.exact[message.destination] ?? 0
            case .patterns(let patterns):
                for pattern in patterns {
                    if let m = s.wildcard[pattern], mask | m != mask, pattern.matches(message.destination) { mask |= m }
                }
            case .session:
                // ``deliver(_:toSession:)``: the session's loop, not its subscriptions', decides.
                assertionFailure("a message for one session goes through deliver(_:toSession:)")
            }
            guard mask != 0 else { return [] }
            var out: [LoopShard] = []
            var rest = mask
            while rest != 0 {
                let i = rest.trailingZeroBitCount
                out.append(s.shardList[i])
                rest &= rest - 1
            }
            return out
        }
        for shard in targets { shard.enqueue(message, scope: scope, generation: generation) }
    }

    /// Records that session `id` lives on `shard` (for replies addressed to a session).
    package func registerSession(_ id: String, shard: LoopShard) {
        state.withLockedValue { $0.sessions[id] = shard }
    }

    package func unregisterSession(_ id: String) {
        state.withLockedValue { $0.sessions[id] = nil }
    }

    /// Delivers `message` to the subscriptions of session `id` that match its destination.
    /// Returns false when no session with that id is on this instance.
    ///
    /// The message joins the session's loop's inbox like any other: it keeps its place among
    /// the messages handed over before it, and counts in the loop's backlog. (A task of its own
    /// overtook a backlog being drained in chunks, and such messages were bounded by nothing.)
    @discardableResult
    package func deliver(_ message: PublishedMessage, toSession id: String) -> Bool {
        guard let shard = state.withLockedValue({ $0.sessions[id] }) else { return false }
        shard.enqueue(message, scope: .session(id))
        return true
    }

    /// Whether any shard has a subscriber whose pattern matches `destination`.
    package func hasSubscribers(for destination: String) -> Bool {
        state.withLockedValue { s in
            if s.exact[destination] != nil { return true }
            var found = false
            s.wildcardIndex.forEachMatch(destination) { _ in found = true }
            return found
        }
    }

    /// Number of distinct destinations and patterns with local subscribers.
    package var activeDestinationCount: Int {
        state.withLockedValue { $0.exact.count + $0.wildcard.count }
    }

    /// A shard's first subscriber of `pattern`; the destination's activation (0: a wildcard).
    func addInterest(_ pattern: DestinationPattern, shard: Int) -> UInt64 {
        state.withLockedValue { s in
            let bit: UInt64 = 1 << UInt64(shard)
            let old = (pattern.isWildcard ? s.wildcard[pattern] : s.exact[pattern.text]) ?? 0
            var generation: UInt64 = 0
            if pattern.isWildcard {
                s.wildcard[pattern] = old | bit
                if old == 0 { s.wildcardIndex.insert(pattern) }
            } else {
                s.exact[pattern.text] = old | bit
                if old == 0 {
                    s.exactGeneration[pattern.text] = s.nextGeneration
                    s.nextGeneration += 1
                }
                generation = s.exactGeneration[pattern.text] ?? 0
            }
            if old == 0 { s.observer?.interestActivated(pattern, generation: generation) }
            return generation
        }
    }

    func removeInterest(_ pattern: DestinationPattern, shard: Int) {
        state.withLockedValue { s in
            let bit: UInt64 = 1 << UInt64(shard)
            let old = (pattern.isWildcard ? s.wildcard[pattern] : s.exact[pattern.text]) ?? 0
            let new = old & ~bit
            if pattern.isWildcard {
                s.wildcard[pattern] = new == 0 ? nil : new
                if new == 0 { s.wildcardIndex.remove(pattern) }
            } else {
                s.exact[pattern.text] = new == 0 ? nil : new
                if new == 0 { s.exactGeneration[pattern.text] = nil }
            }
            if old != 0 && new == 0 { s.observer?.interestDeactivated(pattern) }
        }
    }
}
