import NIOCore

/// The connection's idle and request timeouts (``HTTPConnectionIdleState`` decides): one timer
/// per connection, moved only when it fires.
extension HTTPPublishHandler {
    func armIdleTimer(context: ChannelHandlerContext) {
        guard idleTimer == nil, let deadline = idle.activated(now: context.eventLoop.now) else { return }
        scheduleIdleCheck(at: deadline, context: context)
    }

    /// One timer per connection, moved only when it fires: a request does not reschedule it.
    func scheduleIdleCheck(at deadline: NIODeadline, context: ChannelHandlerContext) {
        idleTimerDue = deadline
        idleTimer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(deadline: deadline) { [self] in
            idleTimer = nil
            guard let context = self.context, !closing else { return }
            // A request waiting for its 100 (behind earlier answers): the client waits for us.
            switch idle.timerFired(now: context.eventLoop.now, readsPaused: pausedForAnswers || continueOwed) {
            case .close:
                closing = true
                context.close(promise: nil)
            case .check(let next):
                scheduleIdleCheck(at: next, context: context)
            }
        }
    }
}
