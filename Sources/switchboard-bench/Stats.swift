// Per-event-loop counters and histograms. Each LoopStats is touched only on its own event
// loop; the main thread reads copies through `loop.submit`, so the hot path needs no locks
// and no atomics.

import Histogram
import NIOCore

typealias Hist = Histogram<UInt64>

func makeHist() -> Hist {
    // 1 µs … 120 s, 3 significant digits.
    Hist(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: .three)
}

extension Histogram where Count == UInt64 {
    @inline(__always) mutating func recordClamped(_ v: UInt64) {
        _ = self.record(Swift.min(Swift.max(v, 1), 120_000_000))
    }
}

final class LoopStats: @unchecked Sendable {
    // subscriber side
    var deliveries: UInt64 = 0
    var unique: UInt64 = 0
    var duplicates: UInt64 = 0
    var gapLost: UInt64 = 0  // filled in at report time from per-connection bitmaps
    var unparsable: UInt64 = 0
    var bytesIn: UInt64 = 0
    var firstDeliveryMono: UInt64 = 0
    var lastDeliveryMono: UInt64 = 0
    var latency = makeHist()
    /// Latency of seq 0 only: one publish on its own (`--seq-start` lets the publisher go on from 1).
    var firstLatency = makeHist()
    // connections
    var connectStarted: Int = 0
    var connectOK: Int = 0
    var connectFailed: Int = 0
    var disconnects: Int = 0
    var firstConnectStartMono: UInt64 = 0
    var lastConnectOKMono: UInt64 = 0
    var connectLatency = makeHist()
    var stompErrors: Int = 0
    var errorSamples: [String] = []
    // publisher side
    var published: UInt64 = 0
    var publishSkipped: UInt64 = 0
    var responsesOK: UInt64 = 0
    var responsesFailed: UInt64 = 0
    var retriedRequests: UInt64 = 0
    var receipts: UInt64 = 0
    var receiptLatency = makeHist()
    var responseLatency = makeHist()
    var publishStartMono: UInt64 = 0
    var publishEndMono: UInt64 = 0
    // per-connection views, for loss accounting at the end
    var conns: [WSConn] = []

    func noteError(_ s: String) {
        stompErrors += 1
        if errorSamples.count < 5 { errorSamples.append(s) }
    }

    func snapshot() -> StatsSnapshot {
        var s = StatsSnapshot()
        s.add(self)
        return s
    }
}

struct StatsSnapshot: Sendable {
    var deliveries: UInt64 = 0
    var unique: UInt64 = 0
    var duplicates: UInt64 = 0
    var unparsable: UInt64 = 0
    var bytesIn: UInt64 = 0
    var firstDeliveryMono: UInt64 = 0
    var lastDeliveryMono: UInt64 = 0
    var latency = makeHist()
    var firstLatency = makeHist()
    var connectStarted = 0
    var connectOK = 0
    var connectFailed = 0
    var disconnects = 0
    var firstConnectStartMono: UInt64 = 0
    var lastConnectOKMono: UInt64 = 0
    var connectLatency = makeHist()
    var stompErrors = 0
    var errorSamples: [String] = []
    var published: UInt64 = 0
    var publishSkipped: UInt64 = 0
    var responsesOK: UInt64 = 0
    var responsesFailed: UInt64 = 0
    var retriedRequests: UInt64 = 0
    var receipts: UInt64 = 0
    var receiptLatency = makeHist()
    var responseLatency = makeHist()
    var publishStartMono: UInt64 = 0
    var publishEndMono: UInt64 = 0

    mutating func add(_ o: LoopStats) {
        deliveries += o.deliveries; unique += o.unique; duplicates += o.duplicates
        unparsable += o.unparsable; bytesIn += o.bytesIn
        firstDeliveryMono = minNonZero(firstDeliveryMono, o.firstDeliveryMono)
        lastDeliveryMono = max(lastDeliveryMono, o.lastDeliveryMono)
        latency.add(o.latency)
        firstLatency.add(o.firstLatency)
        connectStarted += o.connectStarted; connectOK += o.connectOK; connectFailed += o.connectFailed
        disconnects += o.disconnects
        firstConnectStartMono = minNonZero(firstConnectStartMono, o.firstConnectStartMono)
        lastConnectOKMono = max(lastConnectOKMono, o.lastConnectOKMono)
        connectLatency.add(o.connectLatency)
        stompErrors += o.stompErrors
        errorSamples.append(contentsOf: o.errorSamples.prefix(max(0, 5 - errorSamples.count)))
        published += o.published; publishSkipped += o.publishSkipped
        responsesOK += o.responsesOK; responsesFailed += o.responsesFailed
        retriedRequests += o.retriedRequests
        receipts += o.receipts
        receiptLatency.add(o.receiptLatency)
        responseLatency.add(o.responseLatency)
        publishStartMono = minNonZero(publishStartMono, o.publishStartMono)
        publishEndMono = max(publishEndMono, o.publishEndMono)
    }

    mutating func merge(_ o: StatsSnapshot) {
        deliveries += o.deliveries; unique += o.unique; duplicates += o.duplicates
        unparsable += o.unparsable; bytesIn += o.bytesIn
        firstDeliveryMono = minNonZero(firstDeliveryMono, o.firstDeliveryMono)
        lastDeliveryMono = max(lastDeliveryMono, o.lastDeliveryMono)
        latency.add(o.latency)
        firstLatency.add(o.firstLatency)
        connectStarted += o.connectStarted; connectOK += o.connectOK; connectFailed += o.connectFailed
        disconnects += o.disconnects
        firstConnectStartMono = minNonZero(firstConnectStartMono, o.firstConnectStartMono)
        lastConnectOKMono = max(lastConnectOKMono, o.lastConnectOKMono)
        connectLatency.add(o.connectLatency)
        stompErrors += o.stompErrors
        errorSamples.append(contentsOf: o.errorSamples.prefix(max(0, 5 - errorSamples.count)))
        published += o.published; publishSkipped += o.publishSkipped
        responsesOK += o.responsesOK; responsesFailed += o.responsesFailed
        retriedRequests += o.retriedRequests
        receipts += o.receipts
        receiptLatency.add(o.receiptLatency)
        responseLatency.add(o.responseLatency)
        publishStartMono = minNonZero(publishStartMono, o.publishStartMono)
        publishEndMono = max(publishEndMono, o.publishEndMono)
    }
}

@inline(__always) func minNonZero(_ a: UInt64, _ b: UInt64) -> UInt64 {
    if a == 0 { return b }
    if b == 0 { return a }
    return min(a, b)
}

/// Collects all loops' stats into one snapshot (blocking; call from the main thread).
func collect(_ group: [(any EventLoop, LoopStats)]) -> StatsSnapshot {
    var total = StatsSnapshot()
    for (loop, stats) in group {
        if let s = try? loop.submit({ stats.snapshot() }).wait() { total.merge(s) }
    }
    return total
}
