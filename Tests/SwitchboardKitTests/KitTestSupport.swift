import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Redis
import RedisServerTesting
import STOMPCodec
import SwitchboardCore
import SwitchboardKit
import SwitchboardRedis
import SwitchboardRoutes
import SwitchboardWire
import Testing

/// The quiet logger used by consumers under test.
let quietLogger: Logger = {
    var logger = Logger(label: "kit-test")
    logger.logLevel = .critical
    return logger
}()

/// Test configuration: short block and claim timings.
func testConfiguration(
    stream: String = "OUT", group: String = "svc", name: String = "c-\(UUID().uuidString.prefix(8))",
    claimMinIdle: Duration = .seconds(60), claimInterval: Duration = .seconds(60),
    retryDelay: Duration = .milliseconds(100), maxDeliveries: Int = 5, batchSize: Int = 16
) -> StreamConsumerConfiguration {
    StreamConsumerConfiguration(
        stream: stream, group: group, consumerName: name, batchSize: batchSize, blockTime: .milliseconds(500),
        claimMinIdle: claimMinIdle, claimInterval: claimInterval, retryDelay: retryDelay, maxDeliveries: maxDeliveries
    )
}

/// XADDs an entry with exactly the fields the gateway's stream route writes.
@discardableResult
func addGatewayEntry(
    _ client: RedisClient, stream: String = "OUT", destination: String = "/app/greet", body: String,
    session: String = "sess-1", user: String? = "alice", instance: String = "gw-1", headers: STOMPHeaders = [:]
) async throws -> String {
    let message = AppMessage(
        destination: destination, body: ByteBuffer(string: body), headers: headers, contentType: "text/plain",
        sessionID: session, user: user, instanceID: instance, timestamp: 1_700_000_000_123
    )
    return try await client.execute(XADD(key: stream, fields: RedisStreamRoute.fields(for: message)))
}

/// Number of entries pending in `group` (0 if the group does not exist).
func pendingCount(_ client: RedisClient, stream: String = "OUT", group: String = "svc") async throws -> Int {
    try await client.execute(XPENDING(key: stream, group: group)).count
}

/// Runs `consumer` in a task; returns the task so the test can await its end.
func start(_ consumer: StreamConsumer, _ handler: @escaping StreamConsumer.Handler) -> Task<Void, any Error> {
    Task { try await consumer.run(handler) }
}

/// Waits until `consumer` has created its group and is reading.
func waitUntilReading(_ consumer: StreamConsumer, _ client: RedisClient) async throws -> Bool {
    let stream = consumer.configuration.stream
    let group = consumer.configuration.group
    return try await eventually {
        guard consumer.statistics.connects >= 1 else { return false }
        return (try? await client.execute(XPENDING(key: stream, group: group))) != nil
    }
}

/// Waits until `count` clients are blocked in `XREADGROUP` (`CLIENT LIST`: `flags=b`,
/// `cmd=xreadgroup`), so entries added next are handed to blocked readers in the order they blocked.
func waitUntilBlockedReaders(_ count: Int, _ client: RedisClient) async throws -> Bool {
    try await eventually {
        let list = try String(fromRESP: try await client.execute(RawCommand("CLIENT", "LIST")))
        let blocked = list.split(separator: "\n").filter { line in
            let fields = line.split(separator: " ")
            return fields.contains("cmd=xreadgroup") && fields.contains { $0.hasPrefix("flags=") && $0.contains("b") }
        }
        return blocked.count >= count
    }
}

/// A test error.
struct Boom: Error, CustomStringConvertible {
    var description: String
}

/// Three entries on `OUT`; a consumer with a limit of one attempt stops while its first
/// handler runs (`whileHandling` runs then, before the stop); a second consumer of the same
/// name must then handle the other two, each at its first attempt, none dead-lettered.
func expectEntriesNotStartedAtAStopKeepTheirAttempts(
    on server: RedisServerProcess, whileHandling: (RedisServerProcess) async throws -> Void = { _ in }
) async throws {
    let client = try await server.client()
    _ = try await client.execute(XGROUPCREATE(key: "OUT", group: "svc", id: "$", makeStream: true))
    var ids: [String] = []
    for n in 0..<3 { ids.append(try await addGatewayEntry(client, body: "job\(n)")) }
    let (gate, release) = AsyncStream.makeStream(of: Void.self)
    let started = NIOLockedValueBox<[String]>([])
    let first = StreamConsumer(client: client, configuration: testConfiguration(name: "stable", maxDeliveries: 1), logger: quietLogger)
    let firstTask = start(first) { message in
        started.withLockedValue { $0.append(message.id) }
        for await _ in gate {}
    }
    #expect(try await eventually { started.withLockedValue { $0.count } == 1 })
    try await whileHandling(server)
    first.stop()
    release.finish()
    try await firstTask.value
    #expect(started.withLockedValue { $0 } == [ids[0]])

    let handled = NIOLockedValueBox<[IncomingMessage]>([])
    let second = StreamConsumer(client: client, configuration: testConfiguration(name: "stable", maxDeliveries: 1), logger: quietLogger)
    let secondTask = start(second) { message in handled.withLockedValue { $0.append(message) } }
    #expect(try await eventually { handled.withLockedValue { $0.count } == 2 }, "\(handled.withLockedValue { $0.map(\.id) })")
    #expect(handled.withLockedValue { $0.map(\.id) } == Array(ids[1...]))
    #expect(handled.withLockedValue { $0.map(\.deliveryCount) } == [1, 1])
    #expect(try await client.execute(XLEN(key: "OUT:dead")) == 0)
    second.stop()
    try await secondTask.value
    await client.shutdown()
}
