import NIOConcurrencyHelpers
import SwitchboardWire

/// Counts WebSocket connections per instance and per client address, to refuse new ones
/// over `limits.max-connections` / `limits.max-connections-per-ip` (HTTP 429).
final class ConnectionLimiter: Sendable {
    private struct State {
        var total = 0
        var perAddress: [String: Int] = [:]
    }
    private let state = NIOLockedValueBox(State())
    let maxTotal: Int
    let maxPerAddress: Int
    /// What an address counts under (an IPv6 address: its /64, by default).
    let key: ClientAddressKey

    init(maxTotal: Int, maxPerAddress: Int, key: ClientAddressKey = ClientAddressKey()) {
        self.maxTotal = maxTotal
        self.maxPerAddress = maxPerAddress
        self.key = key
    }

    /// Reserves a connection for `address`, or says why it may not have one. Check and count
    /// happen under one lock, so concurrent handshakes cannot overshoot the limits.
    func reserve(for address: String) -> String? {
        let address = key(address)
        return state.withLockedValue { s in
            if s.total >= maxTotal { return "too many connections on this instance (limit \(maxTotal))" }
            if s.perAddress[address, default: 0] >= maxPerAddress {
                return "too many connections from \(address) (limit \(maxPerAddress))"
            }
            s.total += 1
            s.perAddress[address, default: 0] += 1
            return nil
        }
    }

    func remove(_ address: String) {
        let address = key(address)
        state.withLockedValue { s in
            s.total -= 1
            let n = s.perAddress[address, default: 0] - 1
            s.perAddress[address] = n > 0 ? n : nil
        }
    }
}
