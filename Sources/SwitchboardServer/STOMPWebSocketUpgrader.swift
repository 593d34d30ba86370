import Crypto
import Foundation
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// The WebSocket handshake (RFC 6455 §4.2) for STOMP connections.
///
/// Unlike NIO's `NIOTypedWebSocketServerUpgrader` it installs only the frame *decoder*: the
/// session writes complete frames itself (``WebSocketServerFrame``), so no encoder handler
/// sits on the outbound path and every delivery is one buffer.
struct STOMPWebSocketUpgrader<UpgradeResult: Sendable>: NIOTypedHTTPServerProtocolUpgrader {
    let supportedProtocol = "websocket"
    /// Empty on purpose, as in NIO: these headers are not listed in `Connection`; they are
    /// checked in ``buildUpgradeResponse(channel:upgradeRequest:initialResponseHeaders:)``.
    let requiredUpgradeHeaders: [String] = []

    /// Largest WebSocket frame payload a client may send.
    let maxFrameSize: Int
    /// Decides on the upgrade: extra response headers to accept, nil to refuse.
    let shouldUpgrade: @Sendable (any Channel, HTTPRequestHead) -> EventLoopFuture<HTTPHeaders?>
    /// Adds the handlers that run the connection after the frame decoder.
    let upgradePipelineHandler: @Sendable (any Channel, HTTPRequestHead) -> EventLoopFuture<UpgradeResult>

    /// The magic GUID of RFC 6455 §1.3.
    static var acceptGUID: String { "258EAFA5-E914-47DA-95CA-C5AB0DC85B11" }

    /// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
    static func acceptValue(forKey key: String) -> String {
        Data(Insecure.SHA1.hash(data: Data((key + acceptGUID).utf8))).base64EncodedString()
    }

    func buildUpgradeResponse(channel: any Channel, upgradeRequest: HTTPRequestHead,
                              initialResponseHeaders: HTTPHeaders) -> EventLoopFuture<HTTPHeaders> {
        let keys = upgradeRequest.headers[canonicalForm: "Sec-WebSocket-Key"]
        let versions = upgradeRequest.headers[canonicalForm: "Sec-WebSocket-Version"]
        guard keys.count == 1, versions.count == 1 else {
            return channel.eventLoop.makeFailedFuture(NIOWebSocketUpgradeError.invalidUpgradeHeader)
        }
        guard versions[0] == "13" else {
            return channel.eventLoop.makeFailedFuture(NIOWebSocketUpgradeError.invalidUpgradeHeader)
        }
        let key = String(keys[0])
        return shouldUpgrade(channel, upgradeRequest).flatMapThrowing { extra in
            guard var headers = extra else { throw NIOWebSocketUpgradeError.unsupportedWebSocketTarget }
            headers.replaceOrAdd(name: "Upgrade", value: "websocket")
            headers.add(name: "Sec-WebSocket-Accept", value: Self.acceptValue(forKey: key))
            headers.replaceOrAdd(name: "Connection", value: "upgrade")
            return headers
        }
    }

    func upgrade(channel: any Channel, upgradeRequest: HTTPRequestHead) -> EventLoopFuture<UpgradeResult> {
        do {
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: maxFrameSize)))
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
        return upgradePipelineHandler(channel, upgradeRequest)
    }
}
