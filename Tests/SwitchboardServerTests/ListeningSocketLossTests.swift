import Logging
import NIOConcurrencyHelpers
import NIOCore
import RedisServerTesting
import Testing

@testable import SwitchboardServer

/// NIO closes a listening socket on an `accept` error it cannot recover from (`EPROTO`, `EPERM`
/// from a firewall rule). The listener went on waiting, accepting nothing, and the process
/// looked healthy; it now fails once every listening socket of its port is gone.
@Suite struct ListeningSocketLossTests {
    @Test func theListenerFailsWhenItsListeningSocketsCloseByThemselves() async throws {
        let loaded = try await ConfigurationCheckTests().load(["server.threads=1", "http.port=0", "http.host=127.0.0.1"])
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let gateway = try await SwitchboardGateway(configuration: loaded.configuration, logger: logger)
        let listening = NIOLockedValueBox<(any Channel)?>(nil)
        let (listener, _) = gateway.makeListeners { api, channel in
            if !api { listening.withLockedValue { $0 = channel } }
        }
        let ended = NIOLockedValueBox<(any Error)??>(nil)
        Task {
            do {
                try await listener.run()
                ended.withLockedValue { $0 = .some(nil) }
            } catch {
                ended.withLockedValue { $0 = .some(error) }
            }
        }
        #expect(try await eventually { listening.withLockedValue { $0 } != nil })
        try await listening.withLockedValue { $0 }!.close()
        #expect(try await eventually(timeout: .seconds(20)) { ended.withLockedValue { $0 } != nil }, "the listener went on without a listening socket")
        let error = ended.withLockedValue { $0 }.flatMap { $0 }
        #expect(error is GatewayListener.ListeningSocketsLost, "\(String(describing: error))")
        try await gateway.group.shutdownGracefully()
    }
}
