import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Pauses accepting for ``pause`` when `accept` fails for want of a resource (out of file
/// descriptors, `EMFILE`/`ENFILE`, or of memory): the listening socket stays readable while
/// connections wait in its backlog, so accepting again at once fails again at once, on every
/// event loop, with both cores busy (a probe measured it). NIO's `AcceptBackoffHandler` does not
/// stop that here: the failed accept leaves NIO's read pending, and the socket registered for
/// reads. Turning `autoRead` off unregisters it; it is turned on again after the pause.
final class AcceptPauseHandler: ChannelInboundHandler {
    typealias InboundIn = Channel

    static let pause: TimeAmount = .milliseconds(200)
    /// At most one warning per this long.
    static let logInterval: TimeAmount = .seconds(10)
    let logger: Logger
    private var paused = false
    private var lastWarning: NIODeadline?

    init(logger: Logger) {
        self.logger = logger
    }

    static func isExhaustion(_ errno: CInt) -> Bool {
        [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(errno)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let io = error as? IOError, Self.isExhaustion(io.errnoCode), !paused, let options = context.channel.syncOptions {
            paused = true
            let now = NIODeadline.now()
            if lastWarning.map({ now - $0 >= Self.logInterval }) ?? true {
                lastWarning = now
                logger.warning(
                    "accepting connections paused: out of file descriptors or memory (raise the open-files limit, or lower limits.max-connections)",
                    metadata: ["error": "\(io)", "pause-ms": "\(Self.pause.nanoseconds / 1_000_000)"])
            }
            try? options.setOption(ChannelOptions.autoRead, value: false)
            context.eventLoop.assumeIsolated().scheduleTask(in: Self.pause) {
                self.paused = false
                try? context.channel.syncOptions?.setOption(ChannelOptions.autoRead, value: true)
            }
        }
        context.fireErrorCaught(error)
    }
}
