import Foundation

/// A TCP socket bound to a free port on 127.0.0.1, held until ``close()``: connects to it are
/// refused while it does not listen, and no other process can take the port meanwhile (as it
/// could a port found free and let go).
package final class LoopbackSocket {
    package let descriptor: Int32
    package let port: Int

    package struct Failure: Error, CustomStringConvertible {
        package var description: String
    }

    package init() throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw Failure(description: "socket failed: errno \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) == 0 && getsockname(descriptor, $0, &length) == 0 }
        }
        guard bound else {
            Foundation.close(descriptor)
            throw Failure(description: "bind to 127.0.0.1 failed: errno \(errno)")
        }
        self.descriptor = descriptor
        self.port = Int(UInt16(bigEndian: address.sin_port))
    }

    /// Listens, with an accept queue of `backlog`.
    package func listen(backlog: Int32) -> Bool { Foundation.listen(self.descriptor, backlog) == 0 }

    package func close() { Foundation.close(self.descriptor) }
}
