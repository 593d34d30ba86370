import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Reads Linux's `TCP_INFO` for what NIO does not say: how many bytes the kernel holds for a
/// connection that it has not sent yet (`tcpi_notsent_bytes`, Linux 4.6). glibc's `tcp_info` ends
/// before that field, so the kernel's layout (`linux/tcp.h`, a stable ABI) is read by offset.
enum TCPInfo {
    /// Room for the kernel's struct up to `tcpi_notsent_bytes` and a little more; the kernel
    /// writes at most this much (and zeros nothing past what it knows: older kernels leave it 0).
    typealias Bytes = (
        UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
        UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64
    )
    /// `offsetof(struct tcp_info, tcpi_notsent_bytes)`.
    static let notsentBytesOffset = 144

    /// The kernel's unsent bytes of the connection, or nil (not Linux, not TCP, the call failed).
    static func unsentBytes(_ provider: any SocketOptionProvider) -> Int? {
        #if os(Linux)
        var result: Int?
        // On the channel's loop the option is read at once: the future is complete here.
        provider.unsafeGetSocketOption(level: SocketOptionLevel(IPPROTO_TCP), name: SocketOptionName(TCP_INFO))
            .assumeIsolated()
            .whenSuccess { (info: Bytes) in
                var info = info
                result = withUnsafeBytes(of: &info) { Int($0.load(fromByteOffset: notsentBytesOffset, as: UInt32.self)) }
            }
        return result
        #else
        return nil
        #endif
    }
}
