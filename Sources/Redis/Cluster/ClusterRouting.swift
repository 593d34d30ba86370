import NIOCore

/// A `MOVED` or `ASK` error reply: `MOVED 3999 127.0.0.1:6381`.
package struct ClusterRedirect: Sendable, Hashable {
    package enum Kind: Sendable, Hashable {
        /// The slot has a new owner: update the map and send there.
        case moved
        /// The slot is being migrated and this key is on the target: send `ASKING` and the command
        /// there, once; the map stays.
        case ask
    }

    package var kind: Kind
    package var slot: HashSlot
    package var address: RedisServerAddress

    /// Parses `error`; `nil` for any other error. An empty host (`MOVED 1 :6380`) means the host of
    /// `sender`, the node that replied.
    package init?(_ error: RedisServerError, sender: RedisServerAddress) {
        let parts = error.message.split(separator: " ")
        guard parts.count == 3, let slotNumber = Int(parts[1]), (0..<HashSlot.count).contains(slotNumber),
            let colon = parts[2].lastIndex(of: ":"), let port = Int(parts[2][parts[2].index(after: colon)...])
        else { return nil }
        switch parts[0] {
        case "MOVED": self.kind = .moved
        case "ASK": self.kind = .ask
        default: return nil
        }
        var host = String(parts[2][..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        self.slot = HashSlot(rawValue: slotNumber)
        self.address = RedisServerAddress(host: host.isEmpty || host == "?" ? sender.host : host, port: port)
    }
}

/// The decisions for one cluster command, made without I/O (like ``RedisConnectionStateMachine``):
/// after each failure, follow a redirect, retry after refreshing the slot map, or fail.
///
/// - `MOVED`: record the new owner, refresh the map in the background, send there.
/// - `ASK`: send `ASKING` plus the command to the named node, once; the map is unchanged.
/// - `TRYAGAIN` (a multi-key command during a migration), `CLUSTERDOWN`, and a node that cannot be
///   reached (nothing was sent): refresh the map and retry after a growing delay.
/// - A connection lost after the command was written: fail (it may have run; retrying could apply
///   a write twice), but refresh the map so the next command finds the new owner.
/// - Every redirect or retry counts; past `maximumAttempts` the command fails with
///   ``RedisClientError/tooManyRedirects`` (carrying the last error).
package struct ClusterRequestStateMachine: Sendable {
    package enum Failure: Sendable {
        case server(RedisServerError)
        /// Connecting to the node failed: the command was not sent.
        case unreachable(any Error)
        /// The connection closed or timed out with the command in flight.
        case connectionLost(any Error)
        case other(any Error)
    }

    package enum Decision: Sendable {
        case follow(RedisServerAddress, asking: Bool, recordMoved: HashSlot?)
        case retryAfterRefresh(delay: TimeAmount)
        case fail(any Error, refreshTopology: Bool)
    }

    package let maximumAttempts: Int
    package let retryDelay: TimeAmount
    /// The command's deadline (its command timeout from the first attempt): a retry that would
    /// wait past it fails instead, so a command is never sent after its caller was told it failed.
    package let deadline: NIODeadline
    package private(set) var attempts = 0

    package init(maximumAttempts: Int, retryDelay: TimeAmount, deadline: NIODeadline = .distantFuture) {
        self.maximumAttempts = maximumAttempts
        self.retryDelay = retryDelay
        self.deadline = deadline
    }

    package mutating func failed(_ failure: Failure, from node: RedisServerAddress, now: NIODeadline = .now()) -> Decision {
        switch failure {
        case .server(let error):
            if let redirect = ClusterRedirect(error, sender: node) {
                guard self.countAttempt() else { return .fail(self.exhausted(error), refreshTopology: redirect.kind == .moved) }
                return .follow(redirect.address, asking: redirect.kind == .ask, recordMoved: redirect.kind == .moved ? redirect.slot : nil)
            }
            guard error.code == "TRYAGAIN" || error.code == "CLUSTERDOWN" else { return .fail(error, refreshTopology: false) }
            return self.retry(after: error, now: now)
        case .unreachable(let error):
            return self.retry(after: error, now: now)
        case .connectionLost(let error):
            return .fail(error, refreshTopology: true)
        case .other(let error):
            return .fail(error, refreshTopology: false)
        }
    }

    /// A retry after a refresh of the map, unless attempts or time are used up. The command was
    /// not sent (or refused), so failing it is safe: it was not carried out.
    private mutating func retry(after error: any Error, now: NIODeadline) -> Decision {
        guard self.countAttempt() else { return .fail(self.exhausted(error), refreshTopology: true) }
        let delay = self.delay()
        guard now + delay < self.deadline else {
            return .fail(
                RedisClientError(.clusterUnavailable, detail: "no owner of the slot answered before the command timeout; not sent; last: \(error)"),
                refreshTopology: true)
        }
        return .retryAfterRefresh(delay: delay)
    }

    private mutating func countAttempt() -> Bool {
        self.attempts += 1
        return self.attempts <= self.maximumAttempts
    }

    /// Grows linearly: delay, 2·delay, 3·delay, …
    private func delay() -> TimeAmount { .nanoseconds(self.retryDelay.nanoseconds * Int64(self.attempts)) }

    private func exhausted(_ error: any Error) -> RedisClientError {
        RedisClientError(.tooManyRedirects, detail: "gave up after \(self.attempts - 1) redirects/retries; last: \(error)")
    }
}

/// What to change on the sharded-subscriber connections so that each shard channel with local
/// interest is subscribed on the primary that owns its slot, and nowhere else. Pure: computed from
/// the desired channels, the slot map and what each node has confirmed.
///
/// Commands are grouped per node and per slot, as `SSUBSCRIBE`/`SUNSUBSCRIBE` with several
/// channels must stay in one slot.
package struct ShardedSubscriptionPlan: Sendable, Hashable {
    package struct Step: Sendable, Hashable {
        package var node: RedisServerAddress
        package var names: [String]
    }

    /// Channels to unsubscribe (no interest any more, or their slot moved away from `node` to
    /// another owner).
    package var unsubscribe: [Step] = []
    /// Channels to subscribe on their owner.
    package var subscribe: [Step] = []
    /// Channels whose slot has no owner in the map (retried once the map changes).
    package var unowned: [String] = []

    package init(desired: Set<String>, subscribed: [RedisServerAddress: Set<String>], owner: (String) -> RedisServerAddress?) {
        var toSubscribe: [RedisServerAddress: [HashSlot: [String]]] = [:]
        var owners: [String: RedisServerAddress] = [:]
        for name in desired.sorted() {
            guard let node = owner(name) else {
                self.unowned.append(name)
                continue
            }
            owners[name] = node
            if subscribed[node]?.contains(name) != true { toSubscribe[node, default: [:]][HashSlot(key: name), default: []].append(name) }
        }
        var toUnsubscribe: [RedisServerAddress: [HashSlot: [String]]] = [:]
        for (node, names) in subscribed {
            // A wanted channel whose slot the map names no owner for (an incomplete map read)
            // stays where it is: the node may still be delivering it.
            for name in names.sorted() where owners[name].map({ $0 != node }) ?? !desired.contains(name) {
                toUnsubscribe[node, default: [:]][HashSlot(key: name), default: []].append(name)
            }
        }
        self.unsubscribe = Self.steps(toUnsubscribe)
        self.subscribe = Self.steps(toSubscribe)
    }

    private static func steps(_ grouped: [RedisServerAddress: [HashSlot: [String]]]) -> [Step] {
        grouped.sorted { "\($0.key)" < "\($1.key)" }.flatMap { node, bySlot in
            bySlot.sorted { $0.key < $1.key }.map { Step(node: node, names: $0.value) }
        }
    }

    package var isEmpty: Bool { self.unsubscribe.isEmpty && self.subscribe.isEmpty }
}

/// The order of a pass's `SSUBSCRIBE` steps, as a state machine without I/O: the caller runs
/// each step ``next()`` gives and reports how it went.
/// - A node that did not answer (no connection, no reply in time) is skipped for the rest of
///   the pass. Each of its steps waited out its own timeout, one slot after another (minutes for
///   a node that hung with many slots), while the pass held every shard subscribe back and the
///   map was not read again.
/// - A step an ACL refused (`NOPERM` refuses the whole command) is tried again a name at a
///   time, so one refused name does not hold back the others of its slot.
package struct ShardSubscribeSteps: Sendable {
    package enum Outcome: Sendable, Equatable {
        /// Subscribed, or the server answered with another error (`MOVED`: the map is stale).
        case done
        /// An ACL refused it.
        case refused
        /// The node did not answer.
        case unanswered
    }

    private var steps: [ShardedSubscriptionPlan.Step]
    private var index = 0
    /// The one-name steps of a refused step, run before the steps after it.
    private var singles: [ShardedSubscriptionPlan.Step] = []
    private var unanswered: Set<RedisServerAddress> = []
    /// Steps not run because their node did not answer earlier in the pass.
    package private(set) var skipped = 0

    package init(_ steps: [ShardedSubscriptionPlan.Step]) { self.steps = steps }

    /// The next step to run; nil when the pass is over.
    package mutating func next() -> ShardedSubscriptionPlan.Step? {
        while true {
            let step: ShardedSubscriptionPlan.Step
            if !singles.isEmpty {
                step = singles.removeFirst()
            } else if index < steps.count {
                step = steps[index]
                index += 1
            } else {
                return nil
            }
            guard unanswered.contains(step.node) else { return step }
            skipped += 1
        }
    }

    /// How `step` went.
    package mutating func finished(_ step: ShardedSubscriptionPlan.Step, _ outcome: Outcome) {
        switch outcome {
        case .done: break
        case .unanswered: unanswered.insert(step.node)
        case .refused:
            if step.names.count > 1 { singles = step.names.map { ShardedSubscriptionPlan.Step(node: step.node, names: [$0]) } + singles }
        }
    }
}

extension RedisServerError {
    /// `true` when the cluster refused the command without running it: `MOVED`, `ASK`,
    /// `TRYAGAIN` or `CLUSTERDOWN`. Sending it again (where ``ClusterRequestStateMachine`` says)
    /// cannot apply it twice.
    package var isClusterRefusal: Bool {
        switch self.code {
        case "MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN": true
        default: false
        }
    }
}
