import HTTPTypes
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import NIOWebSocket
import STOMPCodec
import SwitchboardCore
import Synchronization

/// Hummingbird child channel that serves HTTP and upgrades `GET <stomp path>` to a STOMP
/// WebSocket session.
///
/// After the upgrade the connection is plain SwiftNIO: NIOWebSocket's frame codec, then
/// ``WebSocketSTOMPTransport`` and ``STOMPSessionHandler``. No task or actor is kept per
/// connection: fan-out writes straight into the channel on its own event loop.
struct STOMPUpgradeChannel: ServerChildChannel, HTTPChannelHandler {
    enum UpgradeResult: Sendable {
        case websocket
        case notUpgraded(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
        case failedUpgrade(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
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

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            let services = self.services
            let path = self.stompPath
            let admission = self.admission
            let upgradeAttempted = NIOLoopBoundBox(false, eventLoop: channel.eventLoop)
            let upgrader = NIOTypedWebSocketServerUpgrader<UpgradeResult>(
                maxFrameSize: maxWebSocketFrameBytes,
                // The session answers WebSocket errors itself (an ERROR frame before the close).
                enableAutomaticErrorHandling: false,
                shouldUpgrade: { channel, head in
                    upgradeAttempted.value = true
                    let uriPath = head.uri.firstIndex(of: "?").map { String(head.uri[..<$0]) } ?? head.uri
                    guard uriPath == path, admission.admitsConnections else {
                        return channel.eventLoop.makeSucceededFuture(nil)
                    }
                    var headers = HTTPHeaders()
                    let offered = head.headers[canonicalForm: "Sec-WebSocket-Protocol"].map(String.init)
                    if !offered.isEmpty {
                        guard let version = STOMPVersion.negotiateSubprotocol(offered: offered, supported: services.configuration.supportedVersions) else {
                            return channel.eventLoop.makeSucceededFuture(nil)
                        }
                        headers.add(name: "Sec-WebSocket-Protocol", value: version.webSocketSubprotocol)
                    }
                    return channel.eventLoop.makeSucceededFuture(headers)
                },
                upgradePipelineHandler: { channel, _ in
                    channel.eventLoop.makeCompletedFuture {
                        let sync = channel.pipeline.syncOperations
                        try sync.addHandler(WebSocketSTOMPTransport(limits: services.configuration.decoderLimits))
                        try sync.addHandler(STOMPSessionHandler(services: services))
                        return UpgradeResult.websocket
                    }
                }
            )
            let serverUpgrade = NIOTypedHTTPServerUpgradeConfiguration(
                upgraders: [upgrader],
                notUpgradingCompletionHandler: { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: false))
                        try channel.pipeline.syncOperations.addHandler(HTTPConnectionStateHandler(idleTimeout: nil, logger: logger))
                        let async = try NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>(
                            wrappingChannelSynchronously: channel,
                            configuration: .init(isOutboundHalfClosureEnabled: true)
                        )
                        return upgradeAttempted.value ? .failedUpgrade(async) : .notUpgraded(async)
                    }
                }
            )
            var configuration = NIOUpgradableHTTPServerPipelineConfiguration<UpgradeResult>(upgradeConfiguration: serverUpgrade)
            configuration.enablePipelining = false
            configuration.enableErrorHandling = false
            configuration.enableResponseHeaderValidation = false
            configuration.decoderConfiguration.maxHeaderFieldSize = 16 * 1024
            configuration.decoderConfiguration.maxHeaderListSize = 64 * 1024
            configuration.decoderConfiguration.maxHeaderFieldCount = 100
            let result = try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(configuration: configuration)
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
            case .failedUpgrade(let http):
                try? await http.executeThenClose { _, outbound in
                    try await outbound.write(.head(.init(status: .badRequest, headerFields: [.connection: "close", .contentLength: "0"])))
                    try await outbound.write(.end(nil))
                }
            }
        } catch {
            logger.debug("connection setup failed", metadata: ["error": "\(error)"])
        }
    }
}

/// Whether new WebSocket sessions are accepted (false while draining).
final class ConnectionAdmission: Sendable {
    private let open = Atomic<Bool>(true)
    var admitsConnections: Bool { open.load(ordering: .relaxed) }
    func stopAdmitting() { open.store(false, ordering: .relaxed) }
}
