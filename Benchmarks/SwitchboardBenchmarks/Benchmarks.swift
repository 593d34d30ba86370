import Benchmark
import NIOCore
import NIOEmbedded
import Redis
import STOMPCodec
import SwitchboardCore
import SwitchboardWire

/// A subscriber that only counts what fan-out writes to it.
final class CountingSink: SubscriptionSink {
    var delivered = 0
    var flushes = 0
    let allocator = ByteBufferAllocator()
    func deliver(_ message: PublishedMessage, to subscription: LocalSubscription, batch: inout DeliveryBatch) {
        let frame = batch.frames.frame(message, subscription: subscription.id, ack: false, escape: true, escapeCR: true, allocator: allocator)
        delivered &+= frame.readableBytes
    }
    func flushDeliveries() { flushes &+= 1 }
}

let benchmarks: @Sendable () -> Void = {
    // Regression guard (`benchmark thresholds check`, see docs/micro-benchmarks.md): the p90 malloc
    // count per sample (1,000 operations for `.kilo` benchmarks) may exceed Thresholds/ by at most
    // 10 (improvements past that fail too, so the files stay current). Wall clock is not gated.
    // Names have no spaces or '/': `thresholds update` writes them as '_' in the file name but
    // `thresholds check` looks for the raw name (ordo-one/benchmark#301).
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal, .instructions], maxDuration: .seconds(2),
        thresholds: [.mallocCountTotal: .init(absolute: [.p90: 10])])

    // One SEND frame with headers and a 64-byte body, decoded from a buffer.
    var sendBytes = ByteBuffer()
    STOMPFrameEncoder.encode(
        STOMPFrame(
            .send, headers: ["destination": "/topic/prices.eu", "content-type": "text/plain", "x-trace": "abc:123"],
            body: String(repeating: "x", count: 64)),
        escapeHeaders: true, into: &sendBytes)
    Benchmark("STOMPDecodeSEND64B", configuration: .init(scalingFactor: .kilo)) { benchmark in
        var decoder = STOMPFrameDecoder()
        for _ in benchmark.scaledIterations {
            var input = sendBytes
            blackHole(try decoder.decodeFrame(&input))
        }
    }

    // The UTF-8 check every inbound text message gets (RFC 6455 §8.1): a ~1 KiB JSON SEND,
    // and the same size of mixed non-ASCII text.
    let jsonSend = Array(
        ("SEND\ndestination:/topic/prices.eu\ncontent-type:application/json\n\n"
            + String(repeating: #"{"sym":"EURUSD","px":1.0842,"q":100}"#, count: 28) + "\u{0}").utf8)
    let mixedText = Array(String(repeating: "Grüße, 世界! €5 😀 ", count: 40).utf8)
    for (name, bytes) in [("UTF8CheckJSONSEND1KiB", jsonSend), ("UTF8CheckMixed1KiB", mixedText)] {
        Benchmark(name, configuration: .init(scalingFactor: .kilo)) { benchmark in
            for _ in benchmark.scaledIterations {
                var validator = UTF8Validator()
                blackHole(bytes.withUnsafeBytes { validator.validate($0) } && validator.isComplete)
            }
        }
    }

    // The fan-out encoding step: one MESSAGE frame per subscriber from a pre-encoded prefix.
    let message = PublishedMessage(
        destination: "/topic/prices.eu", messageID: "bench-1",
        headers: ["content-type": "text/plain"], body: ByteBuffer(string: String(repeating: "y", count: 64)))
    let allocator = ByteBufferAllocator()
    Benchmark("MessageEncodeWebSocketFrame", configuration: .init(scalingFactor: .kilo)) { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(message.encodeWebSocketFrame(subscription: "sub-42", ack: nil, escape: true, allocator: allocator))
        }
    }

    // A RESP3 push message as the Redis engine receives it (pub/sub delivery).
    var push = ByteBuffer(string: ">3\r\n$7\r\nmessage\r\n$30\r\nswitchboard:dest:/topic/prices\r\n$64\r\n" + String(repeating: "z", count: 64) + "\r\n")
    _ = push.readableBytes
    Benchmark("RESP3ParsePush", configuration: .init(scalingFactor: .kilo)) { benchmark in
        var parser = RESPParser(limits: .init())
        for _ in benchmark.scaledIterations {
            var input = push
            blackHole(try parser.next(from: &input))
        }
    }

    // Local fan-out: one message to 1,000 subscribers on one event loop (writes + flush pass),
    // with distinct subscription ids (a frame per subscriber) and with the same id (one shared frame).
    for (name, sameID) in [("FanOut1000DistinctIDs", false), ("FanOut1000SameID", true)] {
        Benchmark(name, configuration: .init(scalingFactor: .one)) { benchmark in
            let loop = EmbeddedEventLoop()
            let hub = FanoutHub(eventLoops: [loop])
            let shard = hub.shard(for: loop)
            let pattern = try! DestinationPattern("/topic/prices.eu")
            var sinks: [CountingSink] = []
            var subs: [LocalSubscription] = []
            for i in 0..<1_000 {
                let sink = CountingSink()
                sinks.append(sink)
                let sub = LocalSubscription(id: sameID ? "0" : "s\(i)", pattern: pattern, ackMode: .auto, sink: sink)
                subs.append(sub)
                shard.add(sub)
            }
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                hub.deliver(message)
                loop.run()
            }
            benchmark.stopMeasurement()
            blackHole(sinks.reduce(0) { $0 + $1.delivered })
            for sub in subs { shard.remove(sub) }
        }
    }
}
