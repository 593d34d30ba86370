import NIOCore
import NIOHTTP1
import NIOPosix
import SwitchboardWire

/// A minimal HTTP/1.1 client for webhook calls: one POST per connection, a hard deadline
/// covering connect, request and response, and a cap on the response size.
package struct HTTPPostClient: Sendable {
    package struct Response: Sendable {
        package var status: Int
        package var body: ByteBuffer
    }

    package struct Failure: Error, CustomStringConvertible {
        package var description: String
    }

    /// Largest response body read; a larger reply fails the call.
    package var maxResponseBytes = 1024 * 1024

    package init() {}

    package func post(
        host: String, port: Int, path: String, hostHeader: String, body: ByteBuffer, headers: [(String, String)],
        timeout: TimeAmount, on eventLoop: any EventLoop
    ) -> EventLoopFuture<Response> {
        let promise = eventLoop.makePromise(of: Response.self)
        let maxBytes = maxResponseBytes
        let deadline = eventLoop.scheduleTask(in: timeout) {
            promise.fail(Failure(description: "timed out after \(timeout.nanoseconds / 1_000_000) ms"))
        }
        promise.futureResult.whenComplete { _ in deadline.cancel() }
        ClientBootstrap(group: eventLoop)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ResponseCollector(promise: promise, maxBytes: maxBytes))
                }
            }
            .connect(host: host, port: port)
            .whenComplete { result in
                switch result {
                case .failure(let error):
                    promise.fail(Failure(description: "cannot connect to \(host):\(port): \(error)"))
                case .success(let channel):
                    promise.futureResult.whenComplete { _ in channel.close(promise: nil) }
                    var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: path)
                    head.headers.add(name: "Host", value: hostHeader)
                    head.headers.add(name: "Content-Length", value: String(body.readableBytes))
                    head.headers.add(name: "Connection", value: "close")
                    for (n, v) in headers { head.headers.add(name: n, value: v) }
                    channel.write(HTTPClientRequestPart.head(head), promise: nil)
                    channel.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil)
                    channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
                }
            }
        return promise.futureResult
    }
}

private final class ResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    let promise: EventLoopPromise<HTTPPostClient.Response>
    let maxBytes: Int
    var status = 0
    var body = ByteBuffer()

    init(promise: EventLoopPromise<HTTPPostClient.Response>, maxBytes: Int) {
        self.promise = promise
        self.maxBytes = maxBytes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = Int(head.status.code)
        case .body(var part):
            guard body.readableBytes + part.readableBytes <= maxBytes else {
                promise.fail(HTTPPostClient.Failure(description: "reply larger than \(maxBytes) bytes"))
                context.close(promise: nil)
                return
            }
            body.writeBuffer(&part)
        case .end:
            promise.succeed(.init(status: status, body: body))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(HTTPPostClient.Failure(description: "connection closed before a complete reply"))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.fail(HTTPPostClient.Failure(description: "\(error)"))
        context.close(promise: nil)
    }
}
