import NIOCore
import NIOWebSocket
import STOMPCodec

/// Why a session ends with an `ERROR`: the `message` header, the close code, the metric.
package struct SessionFailure: Error, Equatable {
    package var message: String
    /// The receipt of the frame at fault, echoed as `receipt-id`.
    package var receiptID: String?
    package var extraHeaders: STOMPHeaders = STOMPHeaders()
    /// The `ERROR`'s body; the message when nil.
    package var details: String?
    package var kind: SessionErrorKind
    package var closeCode: WebSocketErrorCode
    /// Whether the connection waits briefly for the client's close frame after this `ERROR`
    /// (see ``SessionErrorKind/lingers``); not after a rate limit (reading on at full speed is
    /// what it stopped) nor a `CONNECT` that never came.
    package var lingers: Bool

    package init(
        _ message: String, receiptID: String? = nil, extraHeaders: STOMPHeaders = STOMPHeaders(), details: String? = nil,
        kind: SessionErrorKind = .protocolViolation, closeCode: WebSocketErrorCode = .normalClosure, lingers: Bool? = nil
    ) {
        // Client bytes quoted in it (an unknown transaction's name, a bad header's value) show
        // their control characters as `\xNN`, as the decoder's messages do: a NUL went out raw
        // in the ERROR's body.
        self.message = STOMPDecodingError.quote(message, max: .max)
        self.receiptID = receiptID
        self.extraHeaders = extraHeaders
        self.details = details
        self.kind = kind
        self.closeCode = closeCode
        self.lingers = lingers ?? kind.lingers
    }

    /// The `ERROR` frame.
    package var frame: STOMPFrame {
        var headers: STOMPHeaders = ["message": message]
        if let receiptID { headers.add("receipt-id", receiptID) }
        for (n, v) in extraHeaders { headers.add(n, v) }
        let body = ByteBuffer(string: details ?? message)
        headers.add("content-type", "text/plain")
        headers.add("content-length", String(body.readableBytes))
        return STOMPFrame(.error, headers: headers, body: body)
    }
}
