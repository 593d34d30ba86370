import NIOCore

/// When ``HTTPPublishHandler`` reads from the socket: reads pause while answers are owed (up to
/// ``HTTPPublishHandler/maxPendingAnswers``), parts are held, or the socket takes no more.
extension HTTPPublishHandler {
    /// Reads pause while earlier answers wait (up to ``maxPendingAnswers``), parts are held, and
    /// while the socket takes no more (the channel is not writable: a client that sends
    /// requests and does not read its answers would otherwise pile them up in memory).
    var readsPaused: Bool { pausedForAnswers || (!lingering && context?.channel.isWritable == false) }

    /// Reads pause for the answers owed (not for the socket: a slow request's time runs on
    /// while the client does not read its answers).
    var pausedForAnswers: Bool { !lingering && (!held.isEmpty || answers.count >= Self.maxPendingAnswers || refused || lastRequestRead) }

    /// (A client that reads nothing leaves the connection unwritable: it is closed after the
    /// idle timeout, ``HTTPConnectionIdleState/writabilityChanged(isWritable:now:)``.)
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        idle.writabilityChanged(isWritable: context.channel.isWritable, now: context.eventLoop.now)
        if context.channel.isWritable { resumeReadsIfPossible(context: context) }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if readsPaused {
            readPending = true
        } else {
            context.read()
        }
    }

    func resumeReadsIfPossible(context: ChannelHandlerContext) {
        if readPending && !readsPaused {
            readPending = false
            context.read()
        }
    }
}
