import NIOCore
import NIOPosix
import Testing

@testable import SwitchboardCore

/// `TCP_INFO`'s unsent bytes, read by offset past glibc's `tcp_info`: on a real connection whose
/// peer does not read, the kernel holds what it could not send.
@Suite struct TCPInfoTests {
    @Test func theKernelsUnsentBytesGrowWhileThePeerDoesNotRead() async throws {
        #if os(Linux)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = try await ServerBootstrap(group: group)
            .childChannelOption(ChannelOptions.autoRead, value: false)  // accepts, never reads
            .childChannelOption(ChannelOptions.socketOption(.so_rcvbuf), value: 4096)
            .bind(host: "127.0.0.1", port: 0).get()
        let client = try await ClientBootstrap(group: group).connect(to: server.localAddress!).get()
        let idle = try await client.eventLoop.submit { TCPInfo.unsentBytes(client as! any SocketOptionProvider) }.get()
        #expect(idle == 0, "nothing written yet")
        let chunk = ByteBuffer(repeating: 0x61, count: 64 * 1024)
        for _ in 0..<64 { client.write(chunk, promise: nil) }
        client.flush()
        var unsent = 0
        for _ in 0..<200 where unsent == 0 {
            unsent = try await client.eventLoop.submit { TCPInfo.unsentBytes(client as! any SocketOptionProvider) ?? -1 }.get()
            if unsent == 0 { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(unsent > 0, "the peer's window closed: the kernel holds bytes it has not sent")
        try await client.close()
        try await server.close()
        try await group.shutdownGracefully()
        #endif
    }
}
