import Foundation
import HTTPTypes
import NIOCore
import NIOHTTP1
import SwitchboardAPIModel

extension HTTPPublishHandler {
    /// One request this handler answers; filled in when its publish completes.
    final class Answer {
        let endpoint: Endpoint
        let started: UInt64
        /// The connection closes after this answer (the client asked, or its body was refused).
        var close: Bool
        /// An HTTP/1.0 client asked to keep the connection: say that it is kept.
        let keepAlive10: Bool
        var response: (status: HTTPResponse.Status, body: ByteBuffer)?
        /// The request's `Idempotency-Key` headers (one, for a single publish).
        let idempotencyKeys: [String]

        init(endpoint: Endpoint, head: HTTPRequestHead) {
            self.endpoint = endpoint
            self.idempotencyKeys = head.headers["idempotency-key"]
            self.close = !head.isKeepAlive
            self.keepAlive10 = head.isKeepAlive && head.version.major == 1 && head.version.minor == 0
            self.started = DispatchTime.now().uptimeNanoseconds
        }

        /// The answer to bytes the parser refused: a 400 naming what was wrong, then close.
        init(malformed error: HTTPParserError) {
            self.endpoint = .malformed
            self.idempotencyKeys = []
            self.close = true
            self.keepAlive10 = false
            self.started = DispatchTime.now().uptimeNanoseconds
            self.response = (.badRequest, APIJSON.body(HTTPPublishHandler.errorBody(for: error)))
        }
    }
}

extension HTTPPublishHandler {
    /// The head of a JSON answer of `bodyBytes` bytes.
    func responseHead(_ status: HTTPResponseStatus, bodyBytes: Int, close: Bool, keepAlive10: Bool) -> HTTPResponseHead {
        var headers = HTTPHeaders()
        headers.reserveCapacity(5)
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(bodyBytes))
        headers.add(name: "Date", value: dates.now)
        headers.add(name: "Server", value: "switchboard")
        if close {
            headers.add(name: "Connection", value: "close")
        } else if keepAlive10 {
            headers.add(name: "Connection", value: "keep-alive")
        }
        return HTTPResponseHead(version: .http1_1, status: status, headers: headers)
    }
}
