#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What the per-address limits (`limits.max-connections-per-ip`,
/// `limits.max-pending-connections-per-ip`) count a connection under.
///
/// An IPv4 address as it is. An IPv6 address by its first `ipv6PrefixLength` bits
/// (`limits.ipv6-prefix-length`, 64 by default), written `2001:db8:1:2::/64`: whoever holds a
/// /64, the smallest block a site or a phone is given, has 2^64 addresses, and counted one by
/// one none of them ever reached a limit. An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, a
/// dual-stack listener) counts as its IPv4 address.
struct ClientAddressKey: Sendable {
    /// 1 to 128; 128 counts each IPv6 address on its own.
    let ipv6PrefixLength: Int

    init(ipv6PrefixLength: Int = 64) {
        self.ipv6PrefixLength = min(max(ipv6PrefixLength, 1), 128)
    }

    /// The key of `address` (an IP address as NIO writes it); an address that does not parse
    /// as IPv6 is its own key.
    func callAsFunction(_ address: String) -> String {
        guard address.utf8.contains(UInt8(ascii: ":")) else { return address }
        var raw = in6_addr()
        guard inet_pton(AF_INET6, address, &raw) == 1 else { return address }
        let prefix = ipv6PrefixLength
        return withUnsafeMutableBytes(of: &raw) { bytes -> String in
            let mapped = bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF
            // The well-known NAT64 prefix (RFC 6052): an IPv4 client behind a translator.
            let nat64 = bytes[0..<12].elementsEqual([0x00, 0x64, 0xFF, 0x9B, 0, 0, 0, 0, 0, 0, 0, 0])
            if mapped || nat64 {
                return "\(bytes[12]).\(bytes[13]).\(bytes[14]).\(bytes[15])"
            }
            guard prefix < 128 else { return address }
            for index in 0..<16 {
                let first = index * 8
                if first >= prefix {
                    bytes[index] = 0
                } else if first + 8 > prefix {
                    bytes[index] &= UInt8(truncatingIfNeeded: 0xFF << (8 - (prefix - first)))
                }
            }
            var text = [CChar](repeating: 0, count: 64)
            guard inet_ntop(AF_INET6, bytes.baseAddress, &text, socklen_t(text.count)) != nil else { return address }
            return String(cString: text) + "/\(prefix)"
        }
    }
}
