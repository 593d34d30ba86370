import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOWebSocket
import STOMPCodec
import SwitchboardCore
import SwitchboardRoutes
import SwitchboardWire
import Testing

/// What a client reads back from the server.
enum ServerOutput: CustomStringConvertible {
    case frame(STOMPFrame, WebSocketOpcode)
    case close(code: UInt16?, reason: String)
    case other(WebSocketFrame)

    var description: String {
        switch self {
        case .frame(let f, _): return "\(f.command.rawValue) \(f.headers.map { "\($0.name)=\($0.value)" }) \(f.bodyString)"
        case .close(let code, let reason): return "close(\(code.map(String.init) ?? "-"), \(reason))"
        case .other(let f): return "ws(\(f.opcode))"
        }
    }

    var frame: STOMPFrame? {
        if case .frame(let f, _) = self { return f }
        return nil
    }

    var closeCode: UInt16? {
        if case .close(let code, _) = self { return code }
        return nil
    }
}

/// A gateway on one embedded event loop, with as many client connections as needed.
/// Create it inside the test: the embedded loop is bound to its creating thread.
final class TestGateway {
    let loop = EmbeddedEventLoop()
    let hub = FanoutHub()
    let services: GatewayServices
    private var clients: [TestClient] = []

    init(
        configuration: SessionConfiguration = SessionConfiguration(), routes: RouteTable = RouteTable(), lifecycle: (any LifecycleRecorder)? = nil,
        engine: ((FanoutHub) -> any BrokerEngine)? = nil, routesLogger: Logger? = nil
    ) {
        services = GatewayServices(
            configuration: configuration, hub: hub, engine: engine?(hub) ?? InMemoryEngine(hub: hub),
            routes: routes, instanceID: "t", logger: Logger(label: "test"), routesLogger: routesLogger, lifecycle: lifecycle)
    }

    /// - Parameter rateLimited: with `limits.bytes-per-second` applied, as the gateway does.
    func client(rateLimited: Bool = false) throws -> TestClient {
        let c = try TestClient(gateway: self, rateLimited: rateLimited)
        clients.append(c)
        return c
    }

    /// Closes every channel and stops the loop's timers.
    func shutdown() {
        for c in clients { _ = try? c.channel.finish() }
        for shard in hub.shards { shard.stop() }
        try? loop.syncShutdownGracefully()
    }
}

/// One WebSocket connection running `[WebSocketSTOMPTransport, STOMPSessionHandler]`.
final class TestClient {
    let channel: EmbeddedChannel
    let session: STOMPSessionHandler
    let loop: EmbeddedEventLoop
    /// Decodes server frames; switch escaping off for STOMP 1.0 sessions.
    var decoder = STOMPFrameDecoder()

    init(gateway: TestGateway, rateLimited: Bool = false) throws {
        loop = gateway.loop
        channel = EmbeddedChannel(loop: gateway.loop)
        session = STOMPSessionHandler(services: gateway.services)
        let configuration = gateway.services.configuration
        try channel.pipeline.syncOperations.addHandlers([
            WebSocketSTOMPTransport(limits: configuration.decoderLimits, bytesPerSecond: rateLimited ? configuration.maxBytesPerSecond : 0), session,
        ])
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    }

    /// A client WebSocket frame, masked as RFC 6455 requires (unless `masked` is false).
    static func wsFrame(_ bytes: ByteBuffer, opcode: WebSocketOpcode = .text, fin: Bool = true, masked: Bool = true) -> WebSocketFrame {
        var data = bytes
        guard masked else { return WebSocketFrame(fin: fin, opcode: opcode, data: data) }
        let key = WebSocketMaskingKey.random()
        data.webSocketMask(key)
        return WebSocketFrame(fin: fin, opcode: opcode, maskKey: key, data: data)
    }

    /// Writes raw bytes as one masked WebSocket message, then runs the loop.
    func sendRaw(_ text: String, opcode: WebSocketOpcode = .text, fin: Bool = true, masked: Bool = true) throws {
        try sendWS(Self.wsFrame(ByteBuffer(string: text), opcode: opcode, fin: fin, masked: masked))
    }

    func sendWS(_ frame: WebSocketFrame) throws {
        try channel.writeInbound(frame)
        loop.run()
    }

    /// Encodes and sends one STOMP frame (escaped as for 1.1+ unless `escape` is false).
    func send(_ command: STOMPCommand, _ headers: STOMPHeaders = [:], body: String = "", escape: Bool = true) throws {
        let bytes = STOMPFrameEncoder.encode(STOMPFrame(command, headers: headers, body: body), escapeHeaders: escape)
        try sendWS(Self.wsFrame(bytes))
    }

    /// The WebSocket frames the server wrote since the last read. The session writes raw bytes;
    /// each buffer must hold whole, final, unmasked frames with minimal length encoding.
    func readWebSocketFrames(sourceLocation: SourceLocation = #_sourceLocation) throws -> [WebSocketFrame] {
        loop.run()
        var frames: [WebSocketFrame] = []
        while var bytes = try channel.readOutbound(as: ByteBuffer.self) {
            while bytes.readableBytes > 0 {
                struct Malformed: Error {}
                guard let first = bytes.readInteger(as: UInt8.self), let second = bytes.readInteger(as: UInt8.self) else {
                    Issue.record("truncated WebSocket header", sourceLocation: sourceLocation); throw Malformed()
                }
                #expect(first & 0x80 != 0, "FIN set", sourceLocation: sourceLocation)
                #expect(first & 0x70 == 0, "no reserved bits", sourceLocation: sourceLocation)
                #expect(second & 0x80 == 0, "server frames are not masked", sourceLocation: sourceLocation)
                var length = Int(second & 0x7F)
                if length == 126 {
                    guard let l = bytes.readInteger(as: UInt16.self) else { Issue.record("truncated length"); throw Malformed() }
                    length = Int(l)
                    #expect(length > 125, "minimal length encoding", sourceLocation: sourceLocation)
                } else if length == 127 {
                    guard let l = bytes.readInteger(as: UInt64.self) else { Issue.record("truncated length"); throw Malformed() }
                    length = Int(l)
                    #expect(length > 65535, "minimal length encoding", sourceLocation: sourceLocation)
                }
                guard let payload = bytes.readSlice(length: length) else {
                    Issue.record("payload shorter than its header says", sourceLocation: sourceLocation); throw Malformed()
                }
                let opcode = try #require(WebSocketOpcode(encodedWebSocketOpcode: first & 0x0F), sourceLocation: sourceLocation)
                frames.append(WebSocketFrame(fin: true, opcode: opcode, data: payload))
            }
        }
        return frames
    }

    /// Everything the server wrote (and flushed) since the last read.
    func read() throws -> [ServerOutput] {
        var out: [ServerOutput] = []
        for ws in try readWebSocketFrames() {
            switch ws.opcode {
            case .text, .binary:
                #expect(ws.maskKey == nil, "server frames are not masked")
                var data = ws.data
                while let f = try decoder.decodeFrame(&data) { out.append(.frame(f, ws.opcode)) }
                #expect(data.readableBytes == 0, "a WebSocket message carries whole STOMP frames")
            case .connectionClose:
                var data = ws.data
                let code = data.readInteger(as: UInt16.self)
                out.append(.close(code: code, reason: data.readString(length: data.readableBytes) ?? ""))
            default:
                out.append(.other(ws))
            }
        }
        return out
    }

    /// Reads and returns the STOMP frames only, requiring there to be no close frame.
    func frames(sourceLocation: SourceLocation = #_sourceLocation) throws -> [STOMPFrame] {
        let out = try read()
        for o in out where o.frame == nil {
            Issue.record("unexpected \(o)", sourceLocation: sourceLocation)
        }
        return out.compactMap(\.frame)
    }

    /// CONNECTs and checks for CONNECTED; returns it.
    @discardableResult
    func connect(acceptVersion: String? = "1.2", heartBeat: String? = nil, sourceLocation: SourceLocation = #_sourceLocation) throws -> STOMPFrame {
        var headers: STOMPHeaders = ["host": "localhost"]
        if let acceptVersion { headers.add("accept-version", acceptVersion) }
        if let heartBeat { headers.add("heart-beat", heartBeat) }
        try send(.connect, headers)
        if acceptVersion == nil || acceptVersion == "1.0" { decoder.escapeHeaders = false }
        let out = try frames(sourceLocation: sourceLocation)
        try #require(out.count == 1 && out[0].command == .connected, "\(out)", sourceLocation: sourceLocation)
        return out[0]
    }

    func subscribe(_ destination: String, id: String? = "0", ack: String? = nil, receipt: String? = nil, escape: Bool = true) throws {
        var h: STOMPHeaders = ["destination": destination]
        if let id { h.add("id", id) }
        if let ack { h.add("ack", ack) }
        if let receipt { h.add("receipt", receipt) }
        try send(.subscribe, h, escape: escape)
    }

    var isActive: Bool { channel.isActive }
}

/// Asserts `outputs` is exactly one ERROR followed by a close frame; returns the ERROR.
@discardableResult
func expectErrorThenClose(_ outputs: [ServerOutput], code: UInt16 = 1000, sourceLocation: SourceLocation = #_sourceLocation) throws -> STOMPFrame {
    try #require(outputs.count == 2, "\(outputs)", sourceLocation: sourceLocation)
    let error = try #require(outputs[0].frame, "\(outputs)", sourceLocation: sourceLocation)
    #expect(error.command == .error, sourceLocation: sourceLocation)
    #expect(error.headers["content-length"] == String(error.body.readableBytes), sourceLocation: sourceLocation)
    #expect(outputs[1].closeCode == code, "\(outputs)", sourceLocation: sourceLocation)
    return error
}

/// Records each log line: its message and the metadata logged with it.
struct CapturedLogs: LogHandler {
    let lines: NIOLockedValueBox<[(String, Logger.Metadata?)]>
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        lines.withLockedValue { $0.append(("\(event.message)", event.metadata)) }
    }
}
