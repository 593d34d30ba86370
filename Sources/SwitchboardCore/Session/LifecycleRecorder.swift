import NIOCore
import SwitchboardWire

/// Receives the lifecycle facts of sessions (connected, disconnected and why, subscribed,
/// unsubscribed) for presence and lifecycle events; nil in ``GatewayServices`` when events
/// are off.
///
/// A session calls it on its own event loop with a small value and carries on: the recorder
/// must not block nor hop (the Redis recorder, `RedisLifecycle`, appends to the loop's batch,
/// `LifecycleBatchState`; the embedded broker's, `WebhookLifecycle`, updates
/// ``LocalPresenceState`` and queues the events in ``EventDeliveryState`` under a short lock).
/// It is never called per delivered message.
package protocol LifecycleRecorder: Sendable {
    func record(_ fact: LifecycleFact, on loop: any EventLoop)

    /// Records `fact` like ``record(_:on:)``, then calls `stored` on `loop` once the fact is
    /// stored (nil) or could not be (the error). The CONNECT step waits for it, so `CONNECTED`
    /// means the session is in presence; so does a SUBSCRIBE with a receipt.
    ///
    /// In Redis mode the fact is stored when Redis acknowledged the batch that holds it; the
    /// batch is not sent any sooner for it. `stored` may be called before this returns (the
    /// fact was dropped, or presence is kept in process).
    func record(_ fact: LifecycleFact, on loop: any EventLoop, stored: @escaping (LifecycleWriteError?) -> Void)
}

extension LifecycleRecorder {
    /// A recorder whose presence is updated by ``record(_:on:)`` itself (the embedded broker's
    /// in-process presence): the fact is stored when it returns.
    package func record(_ fact: LifecycleFact, on loop: any EventLoop, stored: @escaping (LifecycleWriteError?) -> Void) {
        record(fact, on: loop)
        stored(nil)
    }
}

/// A lifecycle fact that a session waits for could not be stored (see
/// ``LifecycleRecorder/record(_:on:stored:)``).
package struct LifecycleWriteError: Error, CustomStringConvertible {
    enum Code {
        case queueFull(limit: Int)
        case writeFailed(String)
        case noBatcher
    }
    let code: Code

    /// The event loop's queue of facts was full (`events.max-queued`): the fact was dropped.
    package static func queueFull(limit: Int) -> Self { Self(code: .queueFull(limit: limit)) }
    /// The write of the batch holding the fact (or of one queued before it) failed; the batch
    /// is retried, so the fact may still be stored later.
    package static func writeFailed(_ error: any Error) -> Self { Self(code: .writeFailed("\(error)")) }
    /// The recorder has no batcher for the event loop the session runs on.
    package static var noBatcher: Self { Self(code: .noBatcher) }

    package var description: String {
        let why =
            switch code {
            case .queueFull(let limit): "the queue of lifecycle facts is full (events.max-queued \(limit))"
            case .writeFailed(let error): "writing to Redis failed (\(error))"
            case .noBatcher: "no lifecycle batcher for this event loop"
            }
        return "presence could not be recorded: \(why)"
    }
}

extension SessionErrorKind {
    /// The reason a session that was connected and ended with this error is reported with.
    package var disconnectReason: DisconnectReason {
        switch self {
        case .slowConsumer: .slowConsumer
        case .heartBeatTimeout: .heartbeatTimeout
        // The only `.auth` error of a connected session: its token expired.
        case .auth: .authExpired
        case .shutdown: .drain
        // Reaped sessions were reported `node-lost` already (their facts are ignored); any
        // registered since are closed for the same reason.
        case .leaseLost: .nodeLost
        case .protocolViolation, .limit, .route: .error
        }
    }
}
