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
        case .protocolViolation, .limit, .route: .error
        }
    }
}
