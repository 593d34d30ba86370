import Testing

@testable import SwitchboardServer

/// The per-address limits counted each IPv6 address on its own: whoever holds a /64 has 2^64
/// addresses, and none of them ever reached a limit.
struct ClientAddressKeyTests {
    @Test func anIPv6ClientCountsByItsPrefix() {
        let key = ClientAddressKey()
        #expect(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd") == "2001:db8:1:2::/64")
        #expect(key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff::9"))
        #expect(key("2001:db8:1:3::1") != key("2001:db8:1:2::1"))
        // Bits within a byte.
        #expect(ClientAddressKey(ipv6PrefixLength: 60)("2001:db8:1:2f::1") == "2001:db8:1:20::/60")
        #expect(ClientAddressKey(ipv6PrefixLength: 128)("2001:db8::1") == "2001:db8::1")
        #expect(ClientAddressKey(ipv6PrefixLength: 1)("ffff::1") == "8000::/1")
    }

    @Test func anIPv4ClientCountsByItsAddress() {
        let key = ClientAddressKey()
        #expect(key("192.0.2.7") == "192.0.2.7")
        #expect(key("::ffff:192.0.2.7") == "192.0.2.7", "an IPv4-mapped address on a dual-stack listener")
        #expect(key("64:ff9b::c000:207") == "192.0.2.7", "behind a NAT64 translator")
        #expect(key("64:ff9b:0:0:1::1") == "64:ff9b::/64", "not the well-known prefix's /96")
        #expect(key("not an address") == "not an address")
        #expect(key("fe80::1%eth0") == "fe80::1%eth0", "what does not parse is its own key")
    }

    @Test func theLimitsCountByTheKey() {
        let limiter = ConnectionLimiter(maxTotal: 10, maxPerAddress: 2)
        #expect(limiter.reserve(for: "2001:db8:1:2::1") == nil)
        #expect(limiter.reserve(for: "2001:db8:1:2::2") == nil)
        #expect(limiter.reserve(for: "2001:db8:1:2::3") == "too many connections from 2001:db8:1:2::/64 (limit 2)")
        #expect(limiter.reserve(for: "2001:db8:1:9::3") == nil)
        limiter.remove("2001:db8:1:2::2")
        #expect(limiter.reserve(for: "2001:db8:1:2::4") == nil)

        let pending = PendingHandshakes(maxPerAddress: 1)
        #expect(pending.admit("2001:db8:1:2::1"))
        #expect(!pending.admit("2001:db8:1:2::5"))
        pending.release("2001:db8:1:2::1")
        #expect(pending.admit("2001:db8:1:2::5"))
        #expect(pending.addressesPending == 1)
    }

    @Test func thePrefixLengthIsChecked() async {
        for bad in ["0", "129"] {
            let error = await ConfigurationCheckTests().loadError(["limits.ipv6-prefix-length=\(bad)"])
            #expect(error == "limits.ipv6-prefix-length must be 1…128 (bits of an IPv6 address), got \(bad)")
        }
        #expect(await ConfigurationCheckTests().loadError(["limits.ipv6-prefix-length=48"]) == nil)
    }
}
