import NIOCore
import NIOHTTP1

/// The body limit on requests forwarded to the router. Its routes that read a body read at most
/// `http.max-body-bytes` (beyond it their own 413, which closes the connection); the others
/// (a 401, a 404, `/metrics`) answer without reading it, and Hummingbird then reads the rest to
/// its end, whatever its length, before the connection's next request.
extension HTTPPublishHandler {
    /// The forwarded request's body crossed `http.max-body-bytes` (the part that crossed it is
    /// forwarded, so a route reading the body answers its 413): the router's side gets the
    /// body's end, nothing more is read, and the connection closes after the answers owed (the
    /// last of them says `Connection: close` when its head is not out yet), lingering as after
    /// the fast path's 413.
    func cutForwardedBody(context: ChannelHandlerContext) {
        refused = true
        forwardCut = true
        current = .none
        idle.stoppedReading()
        forward(.end(nil), context: context)
        guard forwardedUnanswered == 0, !routerResponseOpen, answers.isEmpty, !closing else { return }
        // Answered already (before the body): nothing is owed, close now.
        closing = true
        closeConnection(after: context.eventLoop.makeSucceededVoidFuture(), linger: true, context: context)
    }
}
