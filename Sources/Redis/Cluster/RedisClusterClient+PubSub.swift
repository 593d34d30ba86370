import Logging
import NIOConcurrencyHelpers
import NIOCore

extension RedisClusterClient {
    // MARK: Subscriptions

    /// Subscribes to `names` and returns a buffered message stream (drop-oldest, see
    /// ``RedisSubscription``). Shard channels (`kind: .shardChannel`) are subscribed with
    /// `SSUBSCRIBE` on the primary owning each channel's slot, and follow the slot when it moves;
    /// channels and patterns on one connection to any node. Completes once subscribed, or when
    /// the owner cannot be reached (the subscription is then established in the background).
    public func subscribe(to names: [String], kind: RedisSubscriptionKind = .channel, bufferSize: Int? = nil) async throws -> RedisSubscription {
        precondition(!names.isEmpty, "subscribe needs at least one name")
        let registry = kind == .shardChannel ? self.shardRegistry : self.classicRegistry
        let dropped = NIOLockedValueBox(0)
        let (stream, continuation) = AsyncStream.makeStream(
            of: RedisPubSubMessage.self,
            bufferingPolicy: .bufferingNewest(max(1, bufferSize ?? self.configuration.subscriptionBufferSize))
        )
        let (id, confirmation) = try registry.add(names: names, kind: kind, sink: .stream(continuation, dropped))
        let subscription = RedisSubscription(
            names: names, kind: kind, stream: stream, continuation: continuation, dropped: dropped, id: id, registry: registry)
        try await self.awaitConfirmation(confirmation, registry: registry, id: id, names: names, kind: kind)
        return subscription
    }

    /// Subscribes with a handler invoked on the receiving connection's event loop (no buffering).
    public func subscribe(
        to names: [String], kind: RedisSubscriptionKind = .channel, handler: @escaping @Sendable (RedisPubSubMessage) -> Void
    ) async throws -> RedisCallbackSubscription {
        precondition(!names.isEmpty, "subscribe needs at least one name")
        let registry = kind == .shardChannel ? self.shardRegistry : self.classicRegistry
        let (id, confirmation) = try registry.add(names: names, kind: kind, sink: .callback(handler))
        try await self.awaitConfirmation(confirmation, registry: registry, id: id, names: names, kind: kind)
        return RedisCallbackSubscription(names: names, kind: kind, id: id, registry: registry)
    }

    /// A server error forgets the subscription; connection trouble keeps it (it is established later).
    private func awaitConfirmation(
        _ confirmation: EventLoopFuture<Void>?, registry: SubscriptionRegistry, id: UInt64, names: [String], kind: RedisSubscriptionKind
    ) async throws {
        do {
            try await confirmation?.get()
        } catch let error as RedisServerError {
            registry.remove(id: id, names: names, kind: kind)
            throw error
        } catch {
            self.logger.debug("subscription not confirmed; will resubscribe on reconnect", metadata: ["error": "\(error)"])
        }
        guard kind == .shardChannel else { return }
        // A pass ends whether or not its `SSUBSCRIBE`s were confirmed (owner unreachable, a map
        // out of date, an ACL), and the caller goes on as if subscribed. A shard channel still
        // unconfirmed is taken as lost: once a later pass subscribes it, the resubscribe
        // observers hear of it and repair what was published meanwhile (from history). Before,
        // only a name confirmed once was reported, and such a gap stayed until the next message.
        self.state.withLockedValue { state in
            for name in names where !state.subscribed.values.contains(where: { $0.contains(name) }) {
                state.everSubscribed.insert(name)
            }
        }
    }

    /// The shard channels confirmed on each node (for tests and diagnostics).
    public var shardSubscriptions: [RedisServerAddress: Set<String>] {
        self.state.withLockedValue { $0.subscribed.filter { !$0.value.isEmpty } }
    }

    /// Asks for a reconcile pass and returns once one that started after the request finished.
    /// Passes run one after another while requests come in; a caller waits for the first pass
    /// that covers its request, not for the passes to stop (with new shard channels wanted
    /// during every pass, they never did, and neither did the first caller's wait).
    func reconcileSubscriptions() async {
        let request = self.state.withLockedValue { state -> Int? in
            guard !state.isShutdown else { return nil }
            state.reconcileRequests += 1
            if state.reconcileTask == nil { state.reconcileTask = Task { await self.reconcileLoop() } }
            return state.reconcileRequests
        }
        guard let request else { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let covered = self.state.withLockedValue { state -> Bool in
                // Covered, or the passes ended (shut down) before this one registered.
                guard state.reconciledThrough < request, state.reconcileTask != nil else { return true }
                state.reconcileWaiters.append((request, continuation))
                return false
            }
            if covered { continuation.resume() }
        }
    }

    /// Runs passes until none was asked for during the last one, resuming the callers each pass
    /// covered.
    private func reconcileLoop() async {
        while true {
            let request = self.state.withLockedValue { $0.reconcileRequests }
            await self.reconcilePass()
            let (done, covered) = self.state.withLockedValue { state -> (Bool, [CheckedContinuation<Void, Never>]) in
                state.reconciledThrough = request
                let done = state.reconcileRequests == request || state.isShutdown
                if done { state.reconcileTask = nil }
                let covered = state.reconcileWaiters.filter { done || $0.request <= request }.map(\.continuation)
                state.reconcileWaiters.removeAll { done || $0.request <= request }
                return (done, covered)
            }
            for continuation in covered { continuation.resume() }
            if done { return }
        }
    }

    /// One pass of ``ShardedSubscriptionPlan``: unsubscribe what moved or lost interest, subscribe
    /// the rest on its owner, close subscriber connections left without channels. Whatever fails
    /// (unreachable owner, `MOVED` because the map is stale) marks the subscriptions pending; the
    /// maintenance loop re-reads the map and runs another pass.
    private func reconcilePass() async {
        self.state.withLockedValue { $0.subscriptionsPending = false }
        var topology = self.state.withLockedValue { $0.topology }
        if topology == nil { topology = try? await self.refreshTopology() }
        guard let topology else {
            self.markSubscriptionsPending()
            return
        }
        let desired = Set(self.shardRegistry.activeKeys.filter { $0.kind == .shardChannel }.map(\.name))
        // A channel nobody wants any more starts afresh when it is wanted again.
        self.state.withLockedValue { $0.everSubscribed.formIntersection(desired) }
        let plan = ShardedSubscriptionPlan(desired: desired, subscribed: self.state.withLockedValue { $0.subscribed }) {
            topology.primary(for: HashSlot(key: $0))
        }
        if !plan.unowned.isEmpty { self.markSubscriptionsPending() }
        for step in plan.unsubscribe {
            let connection = self.state.withLockedValue { state -> RedisConnection? in
                state.subscribed[step.node]?.subtract(step.names)
                return state.subscriberConnections[step.node]
            }
            if let connection, connection.isActive {
                // A slot that moved away was already unsubscribed by the server; its error is expected.
                try? await connection.subscriptionCommand(SubscriptionCommand(kind: .shardChannel, isSubscribe: false, names: step.names)).get()
            }
        }
        // Names of one slot go in one SSUBSCRIBE; one an ACL refuses (NOPERM refuses the whole
        // command) would hold back the others, so a refused step is sent again a name at a time
        // (the refused names stay pending, and are tried at every pass).
        // See ``ShardSubscribeSteps``: a node that did not answer is skipped for the rest of
        // the pass, a step an ACL refused is sent again a name at a time.
        var steps = ShardSubscribeSteps(plan.subscribe)
        while let step = steps.next() { steps.finished(step, await self.subscribeStep(step)) }
        if steps.skipped > 0 { self.markSubscriptionsPending() }
        let idle = self.state.withLockedValue { state -> [RedisConnection] in
            let nodes = state.subscriberConnections.keys.filter { state.subscribed[$0]?.isEmpty ?? true }
            return nodes.compactMap { node in
                state.subscribed[node] = nil
                return state.subscriberConnections.removeValue(forKey: node)
            }
        }
        for connection in idle { await connection.close() }
    }

    /// Subscribes one step of a pass.
    private func subscribeStep(_ step: ShardedSubscriptionPlan.Step) async -> ShardSubscribeSteps.Outcome {
        do {
            let connection = try await self.subscriberConnection(to: step.node)
            try await connection.subscriptionCommand(SubscriptionCommand(kind: .shardChannel, isSubscribe: true, names: step.names)).get()
            let (current, again, observers) = self.state.withLockedValue { state -> (Bool, [String], [@Sendable ([String]) -> Void]) in
                guard state.subscriberConnections[step.node] === connection else { return (false, [], []) }
                state.subscribed[step.node, default: []].formUnion(step.names)
                let again = step.names.filter { state.everSubscribed.contains($0) }
                state.everSubscribed.formUnion(step.names)
                return (true, again, state.resubscribeObservers)
            }
            // The connection closed (or was replaced) after it confirmed: its close did not
            // know these names yet, so nothing else would subscribe them again.
            if !current { self.markSubscriptionsPending() }
            if !again.isEmpty { for observer in observers { observer(again) } }
        } catch {
            if (error as? RedisServerError)?.isPermissionDenied == true {
                // Pending, but the map is not the cause.
                self.state.withLockedValue { $0.subscriptionsPending = true }
                if step.names.count == 1 {
                    self.logger.warning(
                        "redis cluster refused a shard channel (ACL): retried at every pass",
                        metadata: ["channel": "\(step.names[0])", "error": "\(error)"])
                }
                return .refused
            }
            self.markSubscriptionsPending()
            self.logger.debug("ssubscribe failed; retrying after a map refresh", metadata: ["node": "\(step.node)", "error": "\(error)"])
            return error is RedisServerError ? .done : .unanswered
        }
        return .done
    }

    private func markSubscriptionsPending() {
        self.state.withLockedValue { state in
            state.subscriptionsPending = true
            state.refreshRequested = true
        }
    }

    /// The sharded-subscriber connection to `node`; when it closes, or the server unsubscribes a
    /// channel (slot migration), its channels are marked for re-subscription.
    private func subscriberConnection(to node: RedisServerAddress) async throws -> RedisConnection {
        if let existing = self.state.withLockedValue({ $0.subscriberConnections[node] }), existing.isActive { return existing }
        let registry = self.shardRegistry
        let connection = try await self.connect(
            to: node, pushHandler: { registry.deliver($0) },
            serverUnsubscribeHandler: { [weak self] kind, name in
                guard let self, kind == .shardChannel else { return }
                self.logger.info("redis cluster: server unsubscribed a shard channel", metadata: ["node": "\(node)", "channel": "\(name)"])
                self.state.withLockedValue { _ = $0.subscribed[node]?.remove(name) }
                self.markSubscriptionsPending()
            })
        let (accepted, replacedSubscribed, replaced) = self.state.withLockedValue { state -> (Bool, Bool, RedisConnection?) in
            guard !state.isShutdown else { return (false, false, nil) }
            let old = state.subscriberConnections[node].flatMap { $0 !== connection ? $0 : nil }
            state.subscriberConnections[node] = connection
            // A connection replaced while closing takes its channels with it (its close no
            // longer finds itself here): they are subscribed again on this one.
            let replacedSubscribed = !(state.subscribed[node]?.isEmpty ?? true)
            state.subscribed[node] = []
            return (true, replacedSubscribed, old)
        }
        // Closed outside the lock (on its own loop a close runs its handlers at once).
        replaced?.channel.close(promise: nil)
        guard accepted else {
            await connection.close()
            throw RedisClientError.shutdown
        }
        if replacedSubscribed { self.markSubscriptionsPending() }
        subscriberReading.apply(to: connection)
        // A `PING` written between a slot move's server-side `sunsubscribe` and the stray `-MOVED`
        // that follows it (valkey#1066) takes that error; the state machine then drops its
        // `PONG`, which never answers a subscription command.
        let gate = subscriberReading
        let interval = self.configuration.subscriberPingInterval
        let checker = interval > .zero ? connection.keepChecked(every: interval, skip: { gate.isPausing }) : nil
        connection.closeFuture.whenComplete { [weak self] _ in
            checker?.cancel()
            guard let self else { return }
            let lost = self.state.withLockedValue { state -> Bool in
                guard state.subscriberConnections[node] === connection else { return false }
                state.subscriberConnections[node] = nil
                return !(state.subscribed.removeValue(forKey: node) ?? []).isEmpty
            }
            if lost {
                self.state.withLockedValue { $0.connectionLosses += 1 }
                self.logger.warning("redis cluster: sharded subscriber connection lost", metadata: ["node": "\(node)"])
                self.markSubscriptionsPending()
            }
        }
        return connection
    }

    // MARK: Background work

    /// Reads the map every ``RedisClusterConfiguration/topologyRefreshInterval`` and when asked
    /// (redirect, lost connection), and runs subscription passes while some are pending; after
    /// failures it waits longer (doubling, up to the refresh interval).
    func maintenanceLoop() async {
        let clock = ContinuousClock()
        let interval = Duration.nanoseconds(self.cluster.topologyRefreshInterval.nanoseconds)
        var nextRefresh = clock.now
        var failures = 0
        while !Task.isCancelled, !self.state.withLockedValue({ $0.isShutdown }) {
            let (refreshRequested, pending) = self.state.withLockedValue { state in
                defer { state.refreshRequested = false }
                return (state.refreshRequested, state.subscriptionsPending)
            }
            var failed = false
            if refreshRequested || clock.now >= nextRefresh {
                do {
                    try await self.refreshTopology()
                    nextRefresh = clock.now + interval
                } catch {
                    failed = true
                    self.logger.debug("redis cluster: cannot read the slot map", metadata: ["error": "\(error)"])
                }
            }
            if pending {
                await self.reconcileSubscriptions()
                failed = failed || self.state.withLockedValue { $0.subscriptionsPending }
            }
            failures = failed ? failures + 1 : 0
            let wait = min(interval, .milliseconds(50) * (1 << min(failures, 5)))
            try? await Task.sleep(for: wait)
        }
    }

    /// Keeps one connection for channel and pattern subscriptions open to some node (the nodes of
    /// the map, then the seeds, in turn), re-subscribing after every reconnect.
    func classicSubscriberLoop() async {
        let backoff = RedisBackoff(minimum: self.configuration.reconnectBackoffMinimum, maximum: self.configuration.reconnectBackoffMaximum)
        var attempt = 0
        var index = 0
        var previous: [RedisServerAddress] = []
        var lastNode: RedisServerAddress?
        // The first map before the first node (the loop starts with the client): a seed written
        // otherwise than the map names it (a host name, `localhost`) was left again at the
        // first map. Once: while the cluster is unreachable, the rounds below try the seeds.
        if self.state.withLockedValue({ $0.topology == nil }) { _ = try? await self.refreshTopology() }
        while !Task.isCancelled, !self.state.withLockedValue({ $0.isShutdown }) {
            // The map's nodes; the seeds outside it only once a whole round of those failed (a
            // seed removed from the cluster no longer gets its messages).
            let known = self.state.withLockedValue { $0.topology?.nodes } ?? []
            let candidates = known.isEmpty || attempt > 0 ? known + self.cluster.nodes.filter { !known.contains($0) } : known
            // A new list goes on after the node tried last (from its start when that is not in
            // it: the index a failed round left pointed past the map's nodes).
            if candidates != previous {
                index = lastNode.flatMap { candidates.firstIndex(of: $0) }.map { $0 + 1 } ?? 0
                previous = candidates
            }
            let node = candidates[index % candidates.count]
            lastNode = node
            index += 1
            let registry = self.classicRegistry
            do {
                let connection = try await self.connect(to: node, pushHandler: { registry.deliver($0) })
                let attached = self.state.withLockedValue { state -> Bool? in
                    if state.isShutdown { return nil }
                    // A map installed since the node was picked, without it: that map's check
                    // found nothing to close. (A seed outside the map is a fallback: kept.)
                    if known.contains(node), let members = state.topology?.members, !members.isEmpty, !members.contains(node) { return false }
                    state.classicConnection = connection
                    state.classicNode = node
                    return true
                }
                guard let attached else {
                    await connection.close()
                    break
                }
                guard attached else {
                    await connection.close()
                    throw RedisClientError(.notConnected, detail: "\(node) left the cluster")
                }
                subscriberReading.apply(to: connection)
                let logger = self.logger
                let confirmations = registry.attach({ [connection] in connection.subscriptionCommand($0) }) { kind, names, error in
                    logger.error(
                        "redis cluster refused to subscribe again to names it no longer allows: retried while connected",
                        metadata: ["kind": "\(kind)", "names": "\(names)", "error": "\(error)"])
                }
                // A re-subscribe refused for another reason than an ACL (`-BUSY` while a script
                // runs, `-LOADING`) left this connection up with nothing subscribed, for good:
                // it is closed, and the loop connects again (as the single-server client does).
                do {
                    for confirmation in confirmations { try await confirmation.get() }
                } catch {
                    self.logger.warning(
                        "redis cluster: subscribing again failed; reconnecting", metadata: ["node": "\(node)", "error": "\(error)"])
                    self.state.withLockedValue { state in
                        if state.classicConnection === connection {
                            state.classicConnection = nil
                            state.classicNode = nil
                        }
                    }
                    await connection.close()
                    throw error
                }
                attempt = 0
                // Names refused on the re-subscribe are tried again while the connection is up.
                let retrier = registry.retryRefused(every: self.configuration.reconnectBackoffMaximum)
                let gate = subscriberReading
                let interval = self.configuration.subscriberPingInterval
                let checker = interval > .zero ? connection.keepChecked(every: interval, skip: { gate.isPausing }) : nil
                try? await connection.closeFuture.get()
                retrier.cancel()
                checker?.cancel()
                registry.detach()
                self.state.withLockedValue { state in
                    if state.classicConnection === connection {
                        state.classicConnection = nil
                        state.classicNode = nil
                    }
                }
            } catch {
                registry.detach()
                self.logger.debug("redis cluster: subscriber connection failed", metadata: ["node": "\(node)", "error": "\(error)"])
            }
            if Task.isCancelled || self.state.withLockedValue({ $0.isShutdown }) { break }
            if index % candidates.count == 0 {
                try? await Task.sleep(for: .nanoseconds(backoff.delay(attempt: attempt).nanoseconds))
                attempt += 1
            }
        }
    }
}
