import Foundation
import HTTPTypes
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import NIOWebSocket
import NIOSSL
import STOMPCodec
import SwitchboardCore
import Synchronization

/// Hummingbird child channel that serves HTTP and upgrades `GET <stomp path>` to a STOMP
/// WebSocket session.
///
/// After the upgrade the connection is plain SwiftNIO: NIOWebSocket's frame decoder, then
/// ``WebSocketSTOMPTransport`` and ``STOMPSessionHandler``, which writes complete WebSocket
/// frames straight to the socket (see ``STOMPWebSocketUpgrader``). No task or actor is kept per
/// connection: fan-out writes straight into the channel on its own event loop.
struct STOMPUpgradeChannel: ServerChildChannel, HTTPChannelHandler {
    enum UpgradeResult: Sendable {
        case websocket
        case notUpgraded(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
        case failedUpgrade(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>, Refusal)
    }

    /// Why a WebSocket upgrade was refused, answered as a JSON error.
    enum Refusal: Sendable {
        case badRequest(String)
        case forbidden(String)
        case tooManyConnections(String)

        var status: HTTPResponse.Status {
            switch self {
            case .badRequest: return .badRequest
            case .forbidden: return .forbidden
            case .tooManyConnections: return .tooManyRequests
            }
        }

        var message: String {
            switch self {
            case .badRequest(let m), .forbidden(let m), .tooManyConnections(let m): return m
            }
        }
    }

    struct Value: ServerChildChannelValue {
        let upgradeResult: EventLoopFuture<UpgradeResult>
        let channel: any Channel
    }

    let responder: HTTPChannelHandler.Responder
    let services: GatewayServices
    let stompPath: String
    let maxWebSocketFrameBytes: Int
    let admission: ConnectionAdmission
    let limiter: ConnectionLimiter
    let allowedOrigins: [String]
    let handshakeCookie: String
    let handshakeTimeout: TimeAmount
    let httpIdleTimeout: TimeAmount
    let pending: PendingHandshakes
    /// Set when the port speaks TLS.
    let tls: NIOSSLContext?

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            let services = self.services
            let path = self.stompPath
            let admission = self.admission
            let refusal = NIOLoopBoundBox<Refusal?>(nil, eventLoop: channel.eventLoop)
            let limiter = self.limiter
            let allowedOrigins = self.allowedOrigins
            let cookieName = self.handshakeCookie
            let address = channel.remoteAddress?.ipAddress ?? "unknown"
            let timeoutHandler = HandshakeTimeoutHandler(timeout: handshakeTimeout, registry: pending)
            if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
            let secure = tls != nil
            let idle = httpIdleTimeout
            // The session answers WebSocket errors itself (an ERROR frame before the close).
            let upgrader = STOMPWebSocketUpgrader<UpgradeResult>(
                maxFrameSize: maxWebSocketFrameBytes,
                shouldUpgrade: { channel, head in
                    let uriPath = head.uri.firstIndex(of: "?").map { String(head.uri[..<$0]) } ?? head.uri
                    func refuse(_ r: Refusal) -> EventLoopFuture<HTTPHeaders?> {
                        refusal.value = r
                        return channel.eventLoop.makeSucceededFuture(nil)
                    }
                    guard uriPath == path else { return refuse(.badRequest("no WebSocket endpoint at \(uriPath); use \(path)")) }
                    guard admission.admitsConnections else { return refuse(.tooManyConnections("server shutting down, reconnect")) }
                    if !allowedOrigins.isEmpty, let origin = head.headers.first(name: "Origin"),
                       !allowedOrigins.contains(origin), !allowedOrigins.contains("*") {
                        return refuse(.forbidden("origin \(origin) is not allowed"))
                    }
                    var headers = HTTPHeaders()
                    let offered = head.headers[canonicalForm: "Sec-WebSocket-Protocol"].map(String.init)
                    if !offered.isEmpty {
                        guard let version = STOMPVersion.negotiateSubprotocol(offered: offered, supported: services.configuration.supportedVersions) else {
                            return refuse(.badRequest("no supported STOMP subprotocol offered (v12.stomp, v11.stomp, v10.stomp)"))
                        }
                        headers.add(name: "Sec-WebSocket-Protocol", value: version.webSocketSubprotocol)
                    }
                    // Last check: a reservation is released when the channel closes, whatever happens next.
                    if let reason = limiter.reserve(for: address) { return refuse(.tooManyConnections(reason)) }
                    channel.closeFuture.whenComplete { _ in limiter.remove(address) }
                    return channel.eventLoop.makeSucceededFuture(headers)
                },
                upgradePipelineHandler: { channel, head in
                    channel.eventLoop.makeCompletedFuture {
                        timeoutHandler.requestArrived(channel: channel)
                        let handshake = HandshakeInfo(token: Self.handshakeToken(head, cookie: cookieName), remoteAddress: address,
                                                      origin: head.headers.first(name: "Origin"))
                        let sync = channel.pipeline.syncOperations
                        try sync.addHandler(WebSocketSTOMPTransport(limits: services.configuration.decoderLimits,
                                                                    bytesPerSecond: services.configuration.maxBytesPerSecond))
                        try sync.addHandler(STOMPSessionHandler(services: services, handshake: handshake))
                        return UpgradeResult.websocket
                    }
                }
            )
            let serverUpgrade = NIOTypedHTTPServerUpgradeConfiguration(
                upgraders: [upgrader],
                notUpgradingCompletionHandler: { channel in
                    channel.eventLoop.makeCompletedFuture {
                        timeoutHandler.requestArrived(channel: channel)
                        try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: secure))
                        try channel.pipeline.syncOperations.addHandler(
                            HTTPConnectionStateHandler(idleTimeout: .nanoseconds(idle.nanoseconds), logger: logger))
                        let async = try NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>(
                            wrappingChannelSynchronously: channel,
                            configuration: .init(isOutboundHalfClosureEnabled: true)
                        )
                        if let r = refusal.value { return .failedUpgrade(async, r) }
                        return .notUpgraded(async)
                    }
                }
            )
            var configuration = NIOUpgradableHTTPServerPipelineConfiguration<UpgradeResult>(upgradeConfiguration: serverUpgrade)
            configuration.enablePipelining = false
            // Malformed HTTP (garbage, oversized headers) is answered 400 and closed by NIO.
            configuration.enableErrorHandling = true
            configuration.enableResponseHeaderValidation = false
            configuration.decoderConfiguration.maxHeaderFieldSize = 16 * 1024
            configuration.decoderConfiguration.maxHeaderListSize = 64 * 1024
            configuration.decoderConfiguration.maxHeaderFieldCount = 100
            let result = try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(configuration: configuration)
            // At the tail, so it also sees HTTP decoder errors.
            try channel.pipeline.syncOperations.addHandler(timeoutHandler)
            return Value(upgradeResult: result, channel: channel)
        }
    }

    func handle(value: Value, logger: Logger) async {
        do {
            switch try await value.upgradeResult.get() {
            case .websocket:
                // The session runs in the channel pipeline; nothing to await here.
                return
            case .notUpgraded(let http):
                await handleHTTP(asyncChannel: http, logger: logger)
            case .failedUpgrade(let http, let refusal):
                logger.debug("WebSocket upgrade refused", metadata: ["reason": "\(refusal.message)"])
                var buffer = ByteBuffer()
                let text = "{\"error\":\(Self.jsonString(refusal.message)),\"field\":\"Upgrade\"}"
                buffer.writeString(text)
                try? await http.executeThenClose { _, outbound in
                    try await outbound.write(.head(.init(status: refusal.status, headerFields: [
                        .connection: "close", .contentType: "application/json", .contentLength: String(buffer.readableBytes),
                    ])))
                    try await outbound.write(.body(buffer))
                    try await outbound.write(.end(nil))
                }
            }
        } catch {
            logger.debug("connection setup failed", metadata: ["error": "\(error)"])
            try? await value.channel.close()
        }
    }
}

extension STOMPUpgradeChannel {
    /// A token from the `access_token` query parameter or the named cookie.
    static func handshakeToken(_ head: HTTPRequestHead, cookie: String) -> String? {
        if let q = head.uri.firstIndex(of: "?") {
            for pair in head.uri[head.uri.index(after: q)...].split(separator: "&") {
                if pair.hasPrefix("access_token=") {
                    let raw = String(pair.dropFirst("access_token=".count))
                    return raw.removingPercentEncoding ?? raw
                }
            }
        }
        for header in head.headers[canonicalForm: "Cookie"] {
            for part in header.split(separator: ";") {
                let trimmed = part.drop { $0 == " " }
                if trimmed.hasPrefix(cookie + "=") { return String(trimmed.dropFirst(cookie.count + 1)) }
            }
        }
        return nil
    }

    static func jsonString(_ s: String) -> String {
        var out = "\""
        for c in s.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default:
                if c.value < 0x20 { out += String(format: "\\u%04x", c.value) } else { out.unicodeScalars.append(c) }
            }
        }
        return out + "\""
    }
}

/// Whether new WebSocket sessions are accepted (false while draining).
final class ConnectionAdmission: Sendable {
    private let open = Atomic<Bool>(true)
    var admitsConnections: Bool { open.load(ordering: .relaxed) }
    func stopAdmitting() { open.store(false, ordering: .relaxed) }
}
