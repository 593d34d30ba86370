import Logging
import NIOCore

extension RedisClient {
    /// Waits `delay` before a reconnect attempt, or less when a sentinel announces a new primary
    /// or the command connection is back (the server is).
    ///
    /// A command connection's sleep (`hurried`) also ends after ``waitingRetry`` while commands
    /// wait for it (``RedisConfiguration/reconnectWait``): they should not wait out a backoff of
    /// seconds, grown during an outage, once the server is back.
    ///
    /// `since`: the ``switchGeneration`` when the attempt that failed began: a wake-up during
    /// it (a new primary announced, the command connection back, while this attempt waited out
    /// its connect timeout) skips the sleep. It was read when the sleep began, and missed.
    func backoffSleep(_ delay: TimeAmount, hurried: Bool = false, since: Int? = nil) async {
        let generation = since ?? self.switchGeneration
        if self.switchGeneration != generation { return }
        let clock = ContinuousClock()
        let start = clock.now
        let deadline = start + .nanoseconds(delay.nanoseconds)
        while clock.now < deadline, !Task.isCancelled {
            try? await Task.sleep(for: min(.milliseconds(50), deadline - clock.now))
            let (switched, waiting) = self.state.withLockedValue { ($0.switchGeneration != generation, !($0.waiting?.isEmpty ?? true)) }
            if switched || (hurried && waiting && clock.now - start >= Self.waitingRetry) { return }
        }
    }

    /// The count of wake-ups for reconnect loops (see ``backoffSleep(_:hurried:since:)``).
    var switchGeneration: Int { self.state.withLockedValue { $0.switchGeneration } }

    /// How often a command connection is tried while commands wait for it.
    static var waitingRetry: Duration { .milliseconds(200) }

    /// Keeps a subscription to `+switch-master` open on one of the sentinels (the next one after a
    /// failure), so that a failover is followed at once and not only when a connection breaks.
    func sentinelWatchLoop(_ resolver: SentinelResolver) async {
        let backoff = RedisBackoff(minimum: self.configuration.reconnectBackoffMinimum, maximum: self.configuration.reconnectBackoffMaximum)
        var attempt = 0
        var index = 0
        while !Task.isCancelled, !self.state.withLockedValue({ $0.isShutdown }) {
            let node = resolver.sentinel.nodes[index % resolver.sentinel.nodes.count]
            index += 1
            do {
                let connection = try await RedisConnection.connect(
                    configuration: resolver.sentinelConfiguration(for: node), eventLoopGroup: self.eventLoopGroup, logger: self.logger
                ) { [self] message in
                    guard message.channel == "+switch-master",
                        let address = resolver.newPrimary(fromSwitchMaster: String(buffer: message.payload))
                    else { return }
                    self.primarySwitched(to: address)
                }
                let accepted = self.state.withLockedValue { state -> Bool in
                    guard !state.isShutdown else { return false }
                    state.sentinelConnection = connection
                    return true
                }
                guard accepted else {
                    await connection.close()
                    break
                }
                do {
                    try await connection.subscriptionCommand(SUBSCRIBE("+switch-master")).get()
                    attempt = 0
                    self.logger.debug("watching sentinel for +switch-master", metadata: ["sentinel": "\(node)"])
                    // A `+switch-master` published while no watch was subscribed (the one watched
                    // before went away with the old primary's node) was missed: where the primary
                    // is now is asked once subscribed again, and checked with `ROLE` (a stale
                    // sentinel's answer alone would close healthy connections).
                    if let probe = try? await resolver.connectToPrimary(eventLoopGroup: self.eventLoopGroup, logger: self.logger) {
                        let address = RedisServerAddress(host: probe.configuration.host, port: probe.configuration.port)
                        await probe.close()
                        if self.state.withLockedValue({ $0.primary.map { $0 != address } ?? false }) { self.primarySwitched(to: address) }
                    }
                    let interval = self.configuration.subscriberPingInterval
                    let checker = interval > .zero ? connection.keepChecked(every: interval) : nil
                    try? await connection.closeFuture.get()
                    checker?.cancel()
                } catch {
                    await connection.close()
                    throw error
                }
                self.state.withLockedValue { state in
                    if state.sentinelConnection === connection { state.sentinelConnection = nil }
                }
            } catch {
                self.logger.debug("sentinel watch failed", metadata: ["sentinel": "\(node)", "error": "\(error)"])
            }
            if Task.isCancelled || self.state.withLockedValue({ $0.isShutdown }) { break }
            // Try the next sentinel at once, then back off once all were tried.
            if index % resolver.sentinel.nodes.count == 0 {
                let delay = backoff.delay(attempt: attempt)
                attempt += 1
                try? await Task.sleep(for: .nanoseconds(delay.nanoseconds))
            }
        }
    }

    /// A sentinel announced `address` as the new primary: close every connection to another server
    /// (their loops reconnect to the new primary, and re-subscribe; dedicated connections fail
    /// their pending command, and their owners open new ones), and cut reconnect waits short.
    func primarySwitched(to address: RedisServerAddress) {
        let stale = self.state.withLockedValue { state -> [RedisConnection] in
            state.switchGeneration += 1
            let all =
                [state.commandConnection, state.subscriberConnection].compactMap { $0 } + Array(state.loopConnections.values)
                + Array(state.dedicatedConnections.values)
            return all.filter { $0.configuration.host != address.host || $0.configuration.port != address.port }
        }
        self.logger.warning("redis primary switched (sentinel)", metadata: ["address": "\(address)", "reconnecting": "\(stale.count)"])
        for connection in stale { connection.channel.close(promise: nil) }
    }
}
