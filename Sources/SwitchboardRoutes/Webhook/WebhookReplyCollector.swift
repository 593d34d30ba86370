import AsyncHTTPClient
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// Collects a webhook's reply (status and body, at most ``maxBytes``) and remembers whether the
/// request went out: a call that fails after that may have been acted on by the backend, one
/// that fails before it cannot have been (``WebhookClient/Failure``).
final class WebhookReplyCollector: HTTPClientResponseDelegate {
    typealias Response = WebhookClient.Response

    /// The reply's body passes ``maxBytes``; `status` is the reply's (0: not known yet).
    struct TooBig: Error {
        var status: Int
    }

    private struct State {
        var sent = false
        var status = 0
        var body = ByteBuffer()
    }

    let maxBytes: Int
    private let state = NIOLockedValueBox(State())

    init(maxBytes: Int) {
        self.maxBytes = maxBytes
    }

    /// Whether the request head was written to the backend.
    var sent: Bool { state.withLockedValue { $0.sent } }
    /// The reply's status once its head arrived (0 before).
    var status: Int { state.withLockedValue { $0.status } }

    func didSendRequestHead(task: HTTPClient.Task<Response>, _ head: HTTPRequestHead) {
        state.withLockedValue { $0.sent = true }
    }

    func didReceiveHead(task: HTTPClient.Task<Response>, _ head: HTTPResponseHead) -> EventLoopFuture<Void> {
        state.withLockedValue {
            $0.sent = true
            $0.status = Int(head.status.code)
        }
        if let length = head.headers.first(name: "content-length").flatMap(Int.init), length > maxBytes {
            return task.eventLoop.makeFailedFuture(TooBig(status: Int(head.status.code)))
        }
        return task.eventLoop.makeSucceededVoidFuture()
    }

    func didReceiveBodyPart(task: HTTPClient.Task<Response>, _ part: ByteBuffer) -> EventLoopFuture<Void> {
        let tooBig = state.withLockedValue { state -> TooBig? in
            guard state.body.readableBytes + part.readableBytes <= maxBytes else { return TooBig(status: state.status) }
            var part = part
            state.body.writeBuffer(&part)
            return nil
        }
        return tooBig.map { task.eventLoop.makeFailedFuture($0) } ?? task.eventLoop.makeSucceededVoidFuture()
    }

    func didFinishRequest(task: HTTPClient.Task<Response>) throws -> Response {
        state.withLockedValue { Response(status: $0.status, body: $0.body) }
    }
}
