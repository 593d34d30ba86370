import NIOConcurrencyHelpers

/// The instance's outbound memory: bytes written to connections and not yet taken by them
/// (NIO's pending writes, and deliveries a session holds behind a step), summed per event loop
/// once per sweep (``LoopShard``), and the cap on their total (`limits.max-pending-bytes-total`).
///
/// Each connection has its own cap (`limits.max-pending-bytes`), so this one only matters
/// when many connections fall behind at once: past it, every loop closes its connections that
/// are falling behind (``isFallingBehind(outstanding:previous:sweep:)``), those holding the most first, with a
/// slow-consumer `ERROR`, until its share of the excess is shed, in proportion to what it
/// holds. Connections that take what they are sent go on, and the process is not killed for
/// its memory.
///
/// The total is an upper bound: a frame shared by many subscribers (the same bytes for each,
/// over plain TCP) counts once per connection that has not taken it yet. A broadcast of a
/// large message to many connections can therefore reach the cap for a moment; only
/// connections that are falling behind are closed for it.
package final class OutboundMemory: Sendable {
    /// 0: no cap.
    package let limit: Int
    private let perLoop: NIOLockedValueBox<[Int]>
    private let shedSessions = NIOLockedValueBox(0)

    package init(limit: Int, loops: Int) {
        self.limit = limit
        self.perLoop = NIOLockedValueBox([Int](repeating: 0, count: max(loops, 1)))
    }

    /// Records what loop `index` holds; returns the instance's total with it.
    @discardableResult
    package func report(_ bytes: Int, loop index: Int) -> Int {
        self.perLoop.withLockedValue { loops in
            if index >= loops.count { loops += [Int](repeating: 0, count: index + 1 - loops.count) }
            loops[index] = bytes
            return loops.reduce(0, +)
        }
    }

    /// The instance's total at the last sweep of each loop.
    package var total: Int { self.perLoop.withLockedValue { $0.reduce(0, +) } }

    /// Sessions closed because the total was over the cap.
    package var shedCount: Int { self.shedSessions.withLockedValue { $0 } }

    func countShed(_ sessions: Int) { self.shedSessions.withLockedValue { $0 += sessions } }

    /// How much of the excess a loop holding `loopBytes` of `total` sheds: its share, in
    /// proportion to what it holds (nothing while the total is within the cap).
    package func share(ofExcess total: Int, loopBytes: Int) -> Int {
        guard self.limit > 0, total > self.limit, loopBytes > 0 else { return 0 }
        let excess = Double(total - self.limit)
        return Int((excess * Double(loopBytes) / Double(total)).rounded(.up))
    }

    /// Holding less than this is never falling behind (a reader's usual flight of frames).
    package static let fallingBehindFloor = 64 * 1024

    /// Whether a connection is falling behind: at the sweep before this one (`sweep`) it had
    /// `previous.bytes` outstanding, and now as much or more (`outstanding`): it took less
    /// since than it was sent. Outstanding counts the kernel's unsent bytes too: a reader
    /// draining the kernel's send buffer leaves NIO's pending writes unchanged for a while (the
    /// kernel asks for more only once half of its buffer is free), yet it is taking its data.
    package static func isFallingBehind(outstanding: Int, previous: OutboundSample, sweep: UInt64) -> Bool {
        previous.sweep == sweep &- 1 && previous.bytes > 0 && outstanding >= previous.bytes
    }

    /// Which of `pending` (bytes per session) to close to shed `bytes`: the largest first, until
    /// their sum reaches `bytes`. Returns their indices.
    package static func slowest(_ pending: [Int], toShed bytes: Int) -> [Int] {
        guard bytes > 0 else { return [] }
        var chosen: [Int] = []
        var shed = 0
        for index in pending.indices.sorted(by: { pending[$0] > pending[$1] }) {
            guard shed < bytes, pending[index] > 0 else { break }
            chosen.append(index)
            shed += pending[index]
        }
        return chosen
    }
}

/// What an outbound sweep saw of one connection: the sweep's number and the bytes outstanding
/// (not taken by the connection: NIO's pending writes, held deliveries, the kernel's unsent bytes).
package struct OutboundSample: Sendable, Equatable {
    package var sweep: UInt64
    package var bytes: Int

    package init(sweep: UInt64 = 0, bytes: Int = 0) {
        self.sweep = sweep
        self.bytes = bytes
    }
}
