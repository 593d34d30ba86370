import ArgumentParser
import Logging
import NIOCore
import Redis
import SwitchboardKit
import SwitchboardWire

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Publishes through `SwitchboardPublisher` at a paced rate, in pipelined batches, with the
/// body format of `switchboard-bench` (`<seq> <wall-ns> <padding>`), so that `switchboard-bench
/// subscribe` processes measure delivery and `scripts/bench/aggregate.py` the exact loss. Prints
/// one JSON line (`role: publish`). Used by `scripts/bench/kit-publish`.
@main
struct KitBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchboard-kit-bench", abstract: "SwitchboardKit publishing at a paced rate, pipelined batches.")

    @Option(help: "Redis URL.") var redisURL = "redis://127.0.0.1:6379"
    @Option(help: "Redis Cluster seed nodes (host:port,…); redis-url then gives scheme and credentials.") var clusterNodes = ""
    @Option(help: "Messages per second offered.") var rate: Double = 10_000
    @Option(help: "Seconds of publishing.") var duration: Double = 5
    @Option(help: "Messages per pipelined batch.") var batch = 200
    @Option(help: "Batches in flight at most.") var inflight = 4
    @Option(help: "Topics <topic-prefix><i>; message seq goes to topic seq mod topics.") var topics = 1_000
    @Option(help: "Prefix of the topic names.") var topicPrefix = "/topic/bench."
    @Option(help: "Padding bytes per body.") var padding = 0
    @Flag(help: "Plain PUBLISH, without recording history (recordsHistory = false).") var noHistory = false

    func run() async throws {
        var configuration = try RedisConfiguration(url: redisURL)
        let redis: GatewayRedis
        if clusterNodes.isEmpty {
            let client = RedisClient(configuration: configuration, logger: Logger(label: "kit-bench"), enableSubscriptions: false)
            client.start()
            redis = .single(client)
        } else {
            configuration.cluster = RedisClusterConfiguration(
                nodes: clusterNodes.split(separator: ",").map { RedisServerAddress(host: String($0.split(separator: ":")[0]), port: Int($0.split(separator: ":")[1]) ?? 6379) })
            let client = try RedisClusterClient(configuration: configuration, logger: Logger(label: "kit-bench"))
            try await client.refreshTopology()
            redis = .cluster(client)
        }
        // Wait for the connection (a command waits for it at most `reconnectWait`, then fails).
        for attempt in 0... {
            do {
                _ = try await redis.execute(PING())
                break
            } catch {
                if attempt == 100 { throw error }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        var configured = SwitchboardPublisher(redis: redis, origin: "kit-bench")
        configured.recordsHistory = !noHistory
        let publisher = configured
        let names = (0..<max(1, topics)).map { "\(topicPrefix)\($0)" }
        let total = UInt64(rate * duration)
        let pad = String(repeating: "x", count: padding)
        var published: UInt64 = 0
        var failed: UInt64 = 0
        var batchLatencies: [UInt64] = []
        var firstError: String?
        let start = Self.nanos(CLOCK_MONOTONIC)
        await withTaskGroup(of: (ok: UInt64, failed: UInt64, latency: UInt64, error: String?).self) { group in
            var seq: UInt64 = 0
            var running = 0
            func collect(_ r: (ok: UInt64, failed: UInt64, latency: UInt64, error: String?)) {
                running -= 1
                published += r.ok
                failed += r.failed
                batchLatencies.append(r.latency)
                if firstError == nil { firstError = r.error }
            }
            while seq < total {
                let elapsed = Double(Self.nanos(CLOCK_MONOTONIC) - start) / 1e9
                let due = min(total, UInt64(elapsed * rate))
                if seq < due && running < inflight {
                    let n = min(UInt64(batch), due - seq)
                    let wall = Self.nanos(CLOCK_REALTIME)
                    let items = (seq..<(seq + n)).map { s in
                        SwitchboardPublisher.Notification(destination: names[Int(s % UInt64(names.count))], body: "\(s) \(wall) \(pad)")
                    }
                    seq += n
                    running += 1
                    group.addTask {
                        let sent = Self.nanos(CLOCK_MONOTONIC)
                        let results = await publisher.publish(items)
                        var ok: UInt64 = 0
                        var error: String?
                        for result in results {
                            switch result {
                            case .success: ok += 1
                            case .failure(let e): error = error ?? "\(e)"
                            }
                        }
                        return (ok, UInt64(results.count) - ok, (Self.nanos(CLOCK_MONOTONIC) - sent) / 1_000, error)
                    }
                } else if running >= inflight, let r = await group.next() {
                    collect(r)
                } else {
                    try? await Task.sleep(for: .milliseconds(1))
                }
            }
            while let r = await group.next() { collect(r) }
        }
        let seconds = Double(Self.nanos(CLOCK_MONOTONIC) - start) / 1e9
        batchLatencies.sort()
        func q(_ p: Double) -> UInt64 { batchLatencies.isEmpty ? 0 : batchLatencies[min(batchLatencies.count - 1, Int(Double(batchLatencies.count) * p))] }
        let error = firstError.map { ", \"error_samples\": [\"\(String($0.map { $0 == "\"" ? "'" : $0 }))\"]" } ?? ""
        print(
            "{\"role\": \"publish\", \"via\": \"kit\", \"published\": \(published), \"errors\": \(failed), \"publish_rate\": \(Double(published) / seconds), "
                + "\"seconds\": \(seconds), \"batch\": \(batch), \"batch_latency_us\": {\"p50\": \(q(0.5)), \"p99\": \(q(0.99)), \"max\": \(q(1.0))}\(error)}")
        await redis.shutdown()
    }

    static func nanos(_ clock: clockid_t) -> UInt64 {
        var ts = timespec()
        clock_gettime(clock, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }
}
