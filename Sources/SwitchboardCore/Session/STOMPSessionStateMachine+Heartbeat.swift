import NIOCore
import STOMPCodec
import SwitchboardWire

/// Heart-beats and deadlines, counted in timer ticks of the event loop (see ``HeartbeatWheel``).
struct HeartbeatState {
    /// Length of one tick in ms.
    var tickMs: Int64 = 1
    var openedTick: UInt64 = 0
    /// The CONNECT deadline, in ms after opening.
    var connectTimeoutMs: Int64 = 10_000
    /// Send an EOL when nothing was written for this many ticks; 0: never.
    var sendEveryTicks: UInt64 = 0
    /// Close when nothing was read for more than this many ticks; 0: never.
    var expectWithinTicks: UInt64 = 0
    var lastReadTick: UInt64 = 0
    var lastWriteTick: UInt64 = 0
    /// When the session's credential expires.
    var expiresAt: NIODeadline?
    /// Since when a replay waits for the connection to drain (nil: none waits).
    var writeStalledTick: UInt64?

    init() {}

    init(openedTick: UInt64, tickMs: Int64, connectTimeoutMs: Int64) {
        self.tickMs = max(tickMs, 1)
        self.openedTick = openedTick
        self.lastReadTick = openedTick
        self.lastWriteTick = openedTick
        self.connectTimeoutMs = connectTimeoutMs
    }

    /// Converts milliseconds to ticks (at least 1; no overflow for any `ms`).
    func ticks(_ ms: Int64, roundUp: Bool) -> UInt64 {
        let (sum, overflow) = ms.addingReportingOverflow(tickMs - 1)
        let t = roundUp && !overflow ? sum / tickMs : ms / tickMs
        return UInt64(max(t, 1))
    }

    /// The intervals in force (see ``STOMPHeartBeat/negotiate(client:server:)``). The timeout
    /// (`expectMs` × `tolerance`) saturates: it never traps, whatever the client asked for.
    mutating func connected(sendMs: Int, expectMs: Int, tolerance: Double, expiresAt: NIODeadline?) {
        sendEveryTicks = sendMs > 0 ? ticks(Int64(sendMs), roundUp: false) : 0
        let timeoutMs = Double(expectMs) * tolerance
        // 2^62 ms: far beyond any connection, and far from Int64's edge.
        let saturated = timeoutMs.isFinite ? Int64(min(max(timeoutMs, 1), 0x1p62)) : 1 << 62
        expectWithinTicks = expectMs > 0 ? ticks(saturated, roundUp: true) + 1 : 0
        self.expiresAt = expiresAt
    }
}

extension STOMPSessionStateMachine {
    /// What a timer tick asks of the handler.
    package enum TickAction: Equatable {
        /// Nothing now; check again at `next` (nil: no check is due).
        case wait(next: UInt64?)
        /// Write a heart-beat now; check again at `next`.
        case sendHeartbeat(next: UInt64?)
        /// The session failed (a deadline passed): run ``nextAction()`` for the close.
        case closed
    }

    /// Something arrived from the client at `tick` (a frame or a heart-beat).
    package mutating func read(at tick: UInt64) { heartbeat.lastReadTick = tick }

    /// Something was written to the client at `tick`.
    package mutating func wrote(at tick: UInt64) { heartbeat.lastWriteTick = tick }

    /// A replay waits for the connection to drain, since `tick` unless it waited already.
    /// Returns whether it did not wait before (the handler then has the session checked at the
    /// next tick, so the deadline is counted in).
    package mutating func replayStalled(at tick: UInt64) -> Bool {
        guard heartbeat.writeStalledTick == nil else { return false }
        heartbeat.writeStalledTick = tick
        return true
    }

    /// The connection took some of what the replay wrote (or the replay is over). Returns
    /// whether a replay was waiting.
    @discardableResult
    package mutating func replayProgressed() -> Bool {
        defer { heartbeat.writeStalledTick = nil }
        return heartbeat.writeStalledTick != nil
    }

    /// A timer tick: the CONNECT deadline, a token's expiry, the heart-beat timeout, a replay
    /// the connection takes nothing of (``replayStalled(at:)``), or a heart-beat to send. A session waiting on a step is not late: it is looked at again at
    /// the next tick.
    package mutating func tick(_ tick: UInt64, now: NIODeadline) -> TickAction {
        switch phase {
        case .closed:
            return .wait(next: nil)
        case .awaitingConnect:
            let limit = heartbeat.ticks(heartbeat.connectTimeoutMs, roundUp: true)
            if tick - heartbeat.openedTick > limit {
                // A CONNECT being authenticated is not late: look again at the next tick.
                if isBusy { return .wait(next: tick + 1) }
                fail(SessionFailure("no CONNECT frame within \(heartbeat.connectTimeoutMs) ms", kind: .limit, lingers: false))
                return .closed
            }
            return .wait(next: heartbeat.openedTick + limit + 1)
        case .connected:
            var next = UInt64.max
            if let expiry = heartbeat.expiresAt {
                let left = expiry - now
                if left <= .zero {
                    fail(SessionFailure("authentication expired: the token's exp has passed", kind: .auth))
                    return .closed
                }
                next = tick + heartbeat.ticks(max(left.nanoseconds / 1_000_000, 1), roundUp: true)
            }
            if heartbeat.expectWithinTicks > 0 {
                if tick - heartbeat.lastReadTick > heartbeat.expectWithinTicks {
                    if isBusy || pacingReplay {
                        next = tick + 1
                    } else {
                        fail(SessionFailure("heart-beat timeout: nothing received from the client in time", kind: .heartBeatTimeout))
                        return .closed
                    }
                } else {
                    next = min(next, heartbeat.lastReadTick + heartbeat.expectWithinTicks + 1)
                }
            }
            if let stalled = heartbeat.writeStalledTick {
                let timeoutMs = config.replayStallTimeout.nanoseconds / 1_000_000
                let limit = heartbeat.ticks(timeoutMs, roundUp: true)
                if tick - stalled > limit {
                    fail(
                        SessionFailure(
                            "slow consumer: the connection took nothing of a replay in \(timeoutMs) ms", kind: .slowConsumer))
                    return .closed
                }
                next = min(next, stalled + limit + 1)
            }
            var send = false
            if heartbeat.sendEveryTicks > 0 {
                if tick - heartbeat.lastWriteTick >= heartbeat.sendEveryTicks {
                    send = true
                    heartbeat.lastWriteTick = tick
                }
                next = min(next, heartbeat.lastWriteTick + heartbeat.sendEveryTicks)
            }
            let due = next == .max ? nil : next
            return send ? .sendHeartbeat(next: due) : .wait(next: due)
        }
    }
}
