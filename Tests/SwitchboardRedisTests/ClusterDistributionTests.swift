import Foundation
import Redis
import SwitchboardWire
import Testing

/// How destination names spread over the shards of a Redis Cluster: a destination's keys and
/// channel share the hash tag `{<destination>}` (``RedisChannelNaming/historyKey(forDestination:)``),
/// so its slot is the CRC16 of the destination name. The figures are in docs/scaling.md.
@Suite struct ClusterDistributionTests {
    /// 10,000 names shaped like real destinations: per-entity topics, chat rooms, user queues, tickers.
    static func realisticDestinations(count: Int = 10_000) -> [String] {
        var generator = SplitMix64(seed: 20)
        let symbols = ["AAPL", "MSFT", "GOOG", "AMZN", "TSLA", "NVDA", "META", "BTC-USD", "ETH-USD", "EURUSD"]
        var names: Set<String> = []
        var index = 0
        while names.count < count {
            let id = generator.next() % 1_000_000
            switch index % 6 {
            case 0: names.insert("/topic/orders.\(id)")
            case 1: names.insert("/topic/chat.room-\(id % 50_000)")
            case 2: names.insert("/user/u\(id)/queue/notifications")
            case 3: names.insert("/topic/prices.\(symbols[Int(id % 10)]).\(id % 5000)")
            case 4: names.insert("/topic/tenant-\(id % 300)/dashboard.\(index)")
            default: names.insert("/queue/jobs.\(index)")
            }
            index += 1
        }
        return names.sorted()
    }

    /// Shard `i` of `n` owns slots `[i·16384/n, (i+1)·16384/n)`, as `redis-cli --cluster create` splits them.
    static func distribution(_ destinations: [String], shards: Int) -> [Int] {
        var counts = [Int](repeating: 0, count: shards)
        let naming = RedisChannelNaming()
        for destination in destinations {
            let slot = HashSlot(key: naming.historyKey(forDestination: destination) + ":seq").rawValue
            counts[slot * shards / HashSlot.count] += 1
        }
        return counts
    }

    @Test(arguments: [3, 6])
    func destinationsSpreadEvenly(shards: Int) {
        let destinations = Self.realisticDestinations()
        #expect(destinations.count == 10_000)
        let counts = Self.distribution(destinations, shards: shards)
        let mean = Double(destinations.count) / Double(shards)
        let deviations = counts.map { (Double($0) - mean) / mean * 100 }
        print(
            "cluster distribution: \(destinations.count) destinations over \(shards) shards: \(counts), deviation from even (%): \(deviations.map { String(format: "%+.1f", $0) })")
        for deviation in deviations { #expect(abs(deviation) <= 10, "\(counts)") }
        // Key and channel of one destination share a slot.
        let naming = RedisChannelNaming()
        for destination in destinations.prefix(100) {
            let base = naming.historyKey(forDestination: destination)
            #expect(HashSlot(key: base + ":seq") == HashSlot(key: base + ":log"))
        }
    }
}

/// A small deterministic generator (SplitMix64), so the figures are reproducible.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { self.state = seed }
    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
