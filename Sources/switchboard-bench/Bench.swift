// switchboard-bench: load generator for STOMP-over-WebSocket gateways (Switchboard,
// RabbitMQ Web-STOMP) and raw-WebSocket pub/sub servers (nginx + nchan).
//
//   switchboard-bench subscribe --port 8080 --connections 1000 --topic /topic/bench ...
//   switchboard-bench publish   --port 8080 --rate 100 --duration 10 --topic /topic/bench
//   switchboard-bench run       --port 8080 --connections 20 --rate 50 --duration 3
//
// Progress goes to stderr once a second; the result is ONE JSON line on stdout.

import ArgumentParser
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension ClientMode: ExpressibleByArgument {}

enum PublishVia: String, ExpressibleByArgument, Sendable { case http, stomp }
enum PublishFormat: String, ExpressibleByArgument, Sendable { case json, raw }

struct ConnOptions: ParsableArguments, Sendable {
    @Option(help: "Server host (IPv4 literal or name).") var host = "127.0.0.1"
    @Option(help: "Server port.") var port = 8080
    @Option(help: "stomp or raw-ws (one text message = one payload, e.g. nginx+nchan).") var mode: ClientMode = .stomp
    @Option(name: .customLong("ws-path"), help: "WebSocket path; {topic} is replaced by the topic (e.g. /sub/{topic}).") var wsPath = "/stomp"
    @Option(help: "Single topic (when --topics is 0).") var topic = "/topic/bench"
    @Option(help: "Spread over K topics named <topic-prefix><i> (seq i goes to topic i mod K).") var topics = 0
    @Option(name: .customLong("topic-prefix"), help: "Prefix of topic names with --topics.") var topicPrefix = "/topic/bench."
    @Option(name: .customLong("source-addresses"), help: "Comma-separated local addresses to bind, round-robin (127.0.0.2,127.0.0.3).") var sourceAddresses = ""
    @Option(help: "Event loop threads (default: cores).") var threads = System.coreCount
    @Option(help: "STOMP login.") var login: String?
    @Option(help: "STOMP passcode.") var passcode: String?
    @Option(help: "STOMP host header (RabbitMQ: /).") var vhost: String?
    @Option(name: .customLong("server-pid"), help: "Comma-separated pids whose VmRSS is reported (summed).") var serverPid = ""
    @Option(help: "Label copied into the JSON line.") var label = ""

    var sourceAddressList: [String] { sourceAddresses.split(separator: ",").map(String.init).filter { !$0.isEmpty } }
    var pids: [Int32] { serverPid.split(separator: ",").compactMap { Int32($0) } }
}

struct SubscriberOptions: ParsableArguments, Sendable {
    @Option(help: "Subscriber connections.") var connections = 10
    @Option(name: .customLong("ramp-per-second"), help: "Connection attempts per second (0: as fast as possible).") var rampPerSecond = 2000
    @Option(name: .customLong("handshake-timeout"), help: "Seconds for TCP + WebSocket + CONNECT + SUBSCRIBE.") var handshakeTimeout = 30
    @Option(
        name: .customLong("heart-beat"),
        help: "STOMP: the CONNECT heart-beat header, cx,cy. The subscribers never send heart-beats, so keep cx 0; cy > 0 asks the server for EOLs every cy ms (idle-timer cost).")
    var heartBeat = "0,0"
    @Flag(
        name: .customLong("pipeline-subscribe"),
        help: "STOMP: send SUBSCRIBE right behind CONNECT, without waiting for CONNECTED (one round trip less; STOMP processes frames in order).") var pipelineSubscribe = false
    @Option(name: .customLong("index-offset"), help: "Global index of this process's first connection (topic assignment across processes).") var indexOffset = 0
    @Option(name: .customLong("ready-file"), help: "Touch this file once every connection is up (or failed).") var readyFile: String?
    @Option(name: .customLong("stop-file"), help: "Finish when this file appears.") var stopFile: String?
    @Option(name: .customLong("hold"), help: "subscribe: seconds to stay connected after ready (0: until --stop-file).") var hold = 0.0
    @Option(name: .customLong("expect-published"), help: "Messages the publisher sent (exact loss accounting).") var expectPublished: UInt64?
    @Flag(name: .customLong("export-hist"), help: "Add the latency histogram ([value_us,count] pairs) to the JSON line.") var exportHist = false
    @Flag(
        name: .customLong("until-complete"),
        help: "subscribe: finish as soon as every connection has all --expect-published messages (or --hold / --stop-file first)."
    ) var untilComplete = false
}

struct PublisherOptions: ParsableArguments, Sendable {
    @Option(help: "Messages per second (open loop).") var rate = 100.0
    @Option(help: "Seconds of publishing.") var duration = 5.0
    @Option(help: "http or stomp.") var via: PublishVia = .http
    @Option(name: .customLong("publish-url"), help: "HTTP path template; {topic} is replaced (nchan: /pub/{topic}).") var publishURL = "/api/notification"
    @Option(name: .customLong("publish-format"), help: "json ({\"topic\",\"message\"}) or raw body.") var publishFormat: PublishFormat = .json
    @Option(name: .customLong("publish-host"), help: "Publisher target host (default --host).") var publishHost: String?
    @Option(name: .customLong("publish-port"), help: "Publisher target port (default --port).") var publishPort: Int?
    @Option(name: .customLong("publish-ws-path"), help: "WebSocket path of the STOMP publisher (default --ws-path).") var publishWSPath: String?
    @Option(name: .customLong("http-connections"), help: "Keep-alive HTTP connections.") var httpConnections = 4
    @Option(
        help: "HTTP: up to N messages per request, as a JSON array (use with --publish-url /api/notifications); responses count the messages they answer."
    ) var batch = 1
    @Option(name: .customLong("publish-connections"), help: "STOMP publisher connections.") var publishConnections = 1
    @Flag(help: "Ask for a RECEIPT on every SEND (reports receipts/s and receipt latency).") var receipts = false
    @Option(name: .customLong("send-destination"), help: "STOMP SEND destination for every message (e.g. /app/bench), instead of the topics.") var sendDestination: String?
    @Option(help: "Padding bytes per payload.") var padding = 32
    @Option(name: .customLong("max-inflight"), help: "Unanswered requests per connection before it is skipped.") var maxInflight = 50000
    @Option(name: .customLong("tick-us"), help: "Publisher timer period (µs).") var tickMicros = 1000
    @Option(help: "Seconds to wait for stragglers after publishing.") var drain = 3.0
    @Option(
        name: .customLong("seq-start"),
        help: "First sequence number (a second publisher run goes on where the first stopped; subscribers time seq 0 apart)."
    ) var seqStart: UInt64 = 0
}

@main
struct SwitchboardBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchboard-bench",
        abstract: "Load generator for STOMP-over-WebSocket and raw WebSocket pub/sub servers.",
        subcommands: [Subscribe.self, Publish.self, Run.self])
}

// MARK: reporting

func rssKB(_ pids: [Int32]) -> Int {
    if pids.isEmpty { return -1 }
    return pids.map { max(0, readRSSKB(pid: $0)) }.reduce(0, +)
}

func writeFD(_ fd: Int32, _ s: String) {
    var s = s
    s.withUTF8 { p in
        var off = 0
        while off < p.count {
            let n = write(fd, p.baseAddress! + off, p.count - off)
            if n <= 0 { break }
            off += n
        }
    }
}

func log(_ s: String) { writeFD(2, s + "\n") }
func emitJSON(_ s: String) { writeFD(1, s + "\n") }

/// A histogram as `[[value_us,count],…]` (merged across processes by aggregate.py).
func histJSON(_ h: Hist) -> String {
    "[" + h.recordedValues().map { "[\($0.value),\($0.count)]" }.joined(separator: ",") + "]"
}

func pct(_ h: Hist) -> String {
    if h.totalCount == 0 { return "{\"p50\":null,\"p90\":null,\"p99\":null,\"p999\":null,\"max\":null,\"mean\":null,\"count\":0}" }
    return
        "{\"p50\":\(h.valueAtPercentile(50)),\"p90\":\(h.valueAtPercentile(90)),\"p99\":\(h.valueAtPercentile(99)),\"p999\":\(h.valueAtPercentile(99.9)),\"max\":\(h.max),\"mean\":\(Int(h.mean)),\"count\":\(h.totalCount)}"
}

func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if u.value < 0x20 { out += "\\u00" + String(u.value, radix: 16).leftPad(2) } else { out.unicodeScalars.append(u) }
        }
    }
    return out + "\""
}

extension String {
    func leftPad(_ n: Int) -> String { String(repeating: "0", count: max(0, n - count)) + self }
}

func fmt(_ d: Double) -> String {
    if !d.isFinite { return "0" }
    let scaled = Int64((abs(d) * 1000).rounded())
    let ip = scaled / 1000, fp = scaled % 1000
    var s = (d < 0 && scaled != 0 ? "-" : "") + String(ip)
    if fp != 0 {
        var f = String(fp).leftPad(3)
        while f.hasSuffix("0") { f.removeLast() }
        s += "." + f
    }
    return s
}

struct Report {
    var fields: [(String, String)] = []
    mutating func add(_ k: String, _ v: String) { fields.append((k, v)) }
    mutating func add(_ k: String, _ v: Int) { fields.append((k, String(v))) }
    mutating func add(_ k: String, _ v: UInt64) { fields.append((k, String(v))) }
    mutating func add(_ k: String, _ v: Double) { fields.append((k, fmt(v))) }
    var json: String { "{" + fields.map { "\(jsonString($0.0)):\($0.1)" }.joined(separator: ",") + "}" }
}

final class Progress {
    var lastDeliveries: UInt64 = 0
    var lastPublished: UInt64 = 0
    var lastReceipts: UInt64 = 0
    var lastPrint = monoNanos()
    let t0 = monoNanos()

    func maybePrint(_ s: StatsSnapshot, pids: [Int32], force: Bool = false) {
        let now = monoNanos()
        let dt = Double(now - lastPrint) / 1e9
        guard force || dt >= 1.0 else { return }
        let dr = Double(s.deliveries &- lastDeliveries) / dt
        let pr = Double(s.published &- lastPublished) / dt
        let rr = Double(s.receipts &- lastReceipts) / dt
        lastDeliveries = s.deliveries; lastPublished = s.published; lastReceipts = s.receipts; lastPrint = now
        var line = "[\(fmt(Double(now - t0) / 1e9))s] conns ok=\(s.connectOK) failed=\(s.connectFailed) dropped=\(s.disconnects)"
        line += " | delivered \(s.deliveries) (\(Int(dr))/s) dup=\(s.duplicates)"
        if s.latency.totalCount > 0 { line += " p99=\(s.latency.valueAtPercentile(99))us" }
        if s.published > 0 { line += " | published \(s.published) (\(Int(pr))/s) ok=\(s.responsesOK) err=\(s.responsesFailed)" }
        if s.receipts > 0 { line += " receipts \(s.receipts) (\(Int(rr))/s)" }
        if s.stompErrors > 0 { line += " | errors=\(s.stompErrors)" }
        if !pids.isEmpty { line += " | server rss \(rssKB(pids)) kB" }
        log(line)
    }
}

func buildReport(
    role: String, c: ConnOptions, sub: SubscriberOptions?, pub: PublisherOptions?, snap s: StatsSnapshot,
    loss: (expected: UInt64, unique: UInt64, lost: UInt64, subsByTopic: [Int])?, lossExact: Bool,
    rssStart: Int, rssReady: Int, exportHist: Bool
) -> Report {
    var r = Report()
    r.add("role", jsonString(role))
    if !c.label.isEmpty { r.add("label", jsonString(c.label)) }
    r.add("mode", jsonString(c.mode.rawValue))
    r.add("topics", max(1, c.topics))
    if let sub {
        r.add("connections", sub.connections)
        r.add("connect_ok", s.connectOK)
        r.add("connect_failed", s.connectFailed)
        let span = Double(s.lastConnectOKMono &- s.firstConnectStartMono) / 1e9
        r.add("connect_rate", s.connectOK > 0 && span > 0 ? Double(s.connectOK) / span : 0)
        r.add("connect_span_s", span > 0 ? span : 0)
        r.add("connect_latency_us", pct(s.connectLatency))
        r.add("disconnects", s.disconnects)
        r.add("deliveries", s.deliveries)
        let win = Double(s.lastDeliveryMono &- s.firstDeliveryMono) / 1e9
        r.add("delivery_window_s", win)
        r.add("deliveries_per_sec", win > 0 ? Double(s.deliveries) / win : 0)
        r.add("unique", s.unique)
        r.add("duplicates", s.duplicates)
        if let loss {
            r.add("lost", loss.lost)
            r.add("lost_basis", jsonString(lossExact ? "exact" : "gaps"))
            if lossExact { r.add("expected", loss.expected) }
            if loss.subsByTopic.count <= 10000 { r.add("subs_by_topic", "[" + loss.subsByTopic.map(String.init).joined(separator: ",") + "]") }
        }
        r.add("unparsable", s.unparsable)
        r.add("latency_us", pct(s.latency))
        if exportHist {
            r.add("latency_hist", histJSON(s.latency))
        }
        if s.firstLatency.totalCount > 0 {
            r.add("first_latency_us", pct(s.firstLatency))
            if exportHist { r.add("first_latency_hist", histJSON(s.firstLatency)) }
        }
    }
    if let pub {
        r.add("via", jsonString(pub.via.rawValue))
        r.add("target_rate", pub.rate)
        r.add("published", s.published)
        let pspan = Double(s.publishEndMono &- s.publishStartMono) / 1e9
        r.add("publish_rate", pspan > 0 ? Double(s.published) / max(pspan, pub.duration) : 0)
        r.add("responses_ok", s.responsesOK)
        r.add("responses_failed", s.responsesFailed)
        r.add("retried_requests", s.retriedRequests)
        if s.responseLatency.totalCount > 0 { r.add("response_latency_us", pct(s.responseLatency)) }
        if pub.receipts {
            r.add("receipts", s.receipts)
            r.add("receipts_per_sec", pspan > 0 ? Double(s.receipts) / max(pspan, pub.duration) : 0)
            r.add("receipt_latency_us", pct(s.receiptLatency))
        }
    }
    r.add("errors", s.stompErrors)
    r.add("error_samples", "[" + s.errorSamples.map(jsonString).joined(separator: ",") + "]")
    r.add("server_rss_kb_start", rssStart)
    r.add("server_rss_kb_ready", rssReady)
    r.add("server_rss_kb", rssKB(c.pids))
    r.add("client_rss_kb", readRSSKB(pid: getpid()))
    var ru = rusage()
    #if os(Linux)
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &ru)
    #else
    getrusage(RUSAGE_SELF, &ru)
    #endif
    let cpu = Double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + Double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6
    r.add("client_cpu_s", cpu)
    if s.deliveries > 0 { r.add("client_cpu_us_per_delivery", cpu * 1e6 / Double(s.deliveries)) }
    return r
}

func humanSummary(_ s: StatsSnapshot, _ r: Report) {
    var lines = "---- switchboard-bench summary ----\n"
    for (k, v) in r.fields where !k.hasSuffix("latency_hist") && k != "subs_by_topic" { lines += "  \(k): \(v)\n" }
    writeFD(2, lines)
}

func fileExists(_ path: String) -> Bool { access(path, F_OK) == 0 }
func touch(_ path: String) {
    let fd = open(path, O_CREAT | O_WRONLY, 0o644)
    if fd >= 0 { close(fd) }
}

/// Waits until all subscriber connections are up or failed (or the timeout passes).
func waitForSubscribers(_ set: LoopSet, _ n: Int, _ sub: SubscriberOptions, _ c: ConnOptions, _ progress: Progress) -> StatsSnapshot {
    let deadline = monoNanos() + UInt64(sub.handshakeTimeout + 30) * 1_000_000_000
    while true {
        let s = collect(set.pairs)
        progress.maybePrint(s, pids: c.pids)
        if s.connectOK + s.connectFailed >= n || monoNanos() > deadline { return s }
        usleep(50_000)
    }
}

struct Subscribe: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Open N subscriptions and count deliveries until --hold expires or --stop-file appears.")
    @OptionGroup var conn: ConnOptions
    @OptionGroup var sub: SubscriberOptions

    func run() throws {
        let set = LoopSet(threads: conn.threads)
        let progress = Progress()
        let rssStart = rssKB(conn.pids)
        try startSubscribers(set, conn, sub)
        _ = waitForSubscribers(set, sub.connections, sub, conn, progress)
        let rssReady = rssKB(conn.pids)
        if let f = sub.readyFile { touch(f) }
        log("subscribers ready")
        let holdUntil = sub.hold > 0 ? monoNanos() + UInt64(sub.hold * 1e9) : UInt64.max
        while monoNanos() < holdUntil {
            if let f = sub.stopFile, fileExists(f) { break }
            if sub.hold <= 0 && sub.stopFile == nil { break }
            if sub.untilComplete, let published = sub.expectPublished {
                let now = lossAccounting(set, published: published, topicCount: max(1, conn.topics))
                if now.expected > 0 && now.lost == 0 { break }
            }
            usleep(50_000)
            progress.maybePrint(collect(set.pairs), pids: conn.pids)
        }
        let s = collect(set.pairs)
        let loss = lossAccounting(set, published: sub.expectPublished, topicCount: max(1, conn.topics))
        let r = buildReport(
            role: "subscribe", c: conn, sub: sub, pub: nil, snap: s, loss: loss,
            lossExact: sub.expectPublished != nil, rssStart: rssStart, rssReady: rssReady, exportHist: sub.exportHist)
        humanSummary(s, r)
        emitJSON(r.json)
        try? set.group.syncShutdownGracefully()
    }
}

struct Publish: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Publish at a fixed open-loop rate through HTTP or STOMP SEND.")
    @OptionGroup var conn: ConnOptions
    @OptionGroup var pub: PublisherOptions

    func run() throws {
        let set = LoopSet(threads: 1)
        let progress = Progress()
        let rssStart = rssKB(conn.pids)
        let publisher = Publisher(loop: set.loops[0], stats: set.stats[0], c: conn, p: pub)
        try publisher.connect()
        _ = publisher.start()
        while true {
            usleep(50_000)
            progress.maybePrint(collect(set.pairs), pids: conn.pids)
            if (try? publisher.loop.submit({ publisher.finished }).wait()) == true { break }
        }
        drainPublisher(set, pub, progress, conn)
        let s = collect(set.pairs)
        let r = buildReport(
            role: "publish", c: conn, sub: nil, pub: pub, snap: s, loss: nil, lossExact: false,
            rssStart: rssStart, rssReady: rssStart, exportHist: false)
        humanSummary(s, r)
        emitJSON(r.json)
        try? set.group.syncShutdownGracefully()
    }
}

/// Waits until every request was answered / every receipt arrived, or `drain` seconds pass.
func drainPublisher(_ set: LoopSet, _ pub: PublisherOptions, _ progress: Progress, _ conn: ConnOptions) {
    let deadline = monoNanos() + UInt64(pub.drain * 1e9)
    while monoNanos() < deadline {
        let s = collect(set.pairs)
        progress.maybePrint(s, pids: conn.pids)
        let answered = pub.via == .http ? s.responsesOK + s.responsesFailed : (pub.receipts ? s.receipts : s.published)
        if answered >= s.published { break }
        usleep(20_000)
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Subscribers and publisher in one process: subscribe, publish, drain, report.")
    @OptionGroup var conn: ConnOptions
    @OptionGroup var sub: SubscriberOptions
    @OptionGroup var pub: PublisherOptions

    func run() throws {
        let set = LoopSet(threads: conn.threads)
        let pubSet = LoopSet(threads: 1)
        let progress = Progress()
        let rssStart = rssKB(conn.pids)
        try startSubscribers(set, conn, sub)
        _ = waitForSubscribers(set, sub.connections, sub, conn, progress)
        let rssReady = rssKB(conn.pids)
        if let f = sub.readyFile { touch(f) }
        let publisher = Publisher(loop: pubSet.loops[0], stats: pubSet.stats[0], c: conn, p: pub)
        try publisher.connect()
        _ = publisher.start()
        let all = set.pairs + pubSet.pairs
        while true {
            usleep(50_000)
            progress.maybePrint(collect(all), pids: conn.pids)
            if (try? publisher.loop.submit({ publisher.finished }).wait()) == true { break }
        }
        // Drain: until every expected delivery arrived and the publisher was answered, or timeout.
        let published = collect(pubSet.pairs).published
        let deadline = monoNanos() + UInt64(pub.drain * 1e9)
        while monoNanos() < deadline {
            let l = lossAccounting(set, published: published, topicCount: max(1, conn.topics))
            let ps = collect(pubSet.pairs)
            let answered = pub.via == .http ? ps.responsesOK + ps.responsesFailed : (pub.receipts ? ps.receipts : ps.published)
            if l.unique >= l.expected && answered >= ps.published { break }
            progress.maybePrint(collect(all), pids: conn.pids)
            usleep(20_000)
        }
        let s = collect(all)
        let loss = lossAccounting(set, published: published, topicCount: max(1, conn.topics))
        let r = buildReport(
            role: "run", c: conn, sub: sub, pub: pub, snap: s, loss: loss, lossExact: true,
            rssStart: rssStart, rssReady: rssReady, exportHist: sub.exportHist)
        humanSummary(s, r)
        emitJSON(r.json)
        try? set.group.syncShutdownGracefully()
        try? pubSet.group.syncShutdownGracefully()
    }
}
