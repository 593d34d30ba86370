import Dispatch
import NIOConcurrencyHelpers
import NIOCore
import STOMPCodec
import SwitchboardWire
import Testing

@testable import SwitchboardCore

@Suite struct DestinationHistoryTests {
    final class Clock: Sendable {
        let now = NIOLockedValueBox(NIODeadline.uptimeNanoseconds(1_000_000_000))
        func advance(_ by: TimeAmount) { now.withLockedValue { $0 = $0 + by } }
        var read: @Sendable () -> NIODeadline { { self.now.withLockedValue { $0 } } }
    }

    func history(
        maxLength: Int = 5, ttl: TimeAmount = .seconds(60), maxDestinations: Int = 100, maxBytes: Int = 1 << 30, clock: Clock = Clock()
    ) -> DestinationHistory {
        var settings = DestinationHistory.Settings()
        settings.maxBytes = maxBytes
        settings.maxLength = maxLength
        settings.ttl = ttl
        settings.maxDestinations = maxDestinations
        settings.disabledPrefixes = ["/topic/nohistory."]
        return DestinationHistory(settings: settings, processEpoch: "p", clock: clock.read)
    }

    /// Publishes `count` messages `m<first>`… and returns the numbered copies delivered.
    @discardableResult
    func publish(_ h: DestinationHistory, _ destination: String, _ bodies: [String]) -> [PublishedMessage] {
        var out: [PublishedMessage] = []
        for body in bodies {
            h.record(PublishedMessage(destination: destination, messageID: "id-\(body)", headers: [:], body: ByteBuffer(string: body))) { out.append($0) }
        }
        return out
    }

    func bodies(_ messages: [PublishedMessage]) -> [String] { messages.map { String(buffer: $0.body) } }

    @Test func messagesAreNumberedDenselyPerDestinationAndCarryXPosition() {
        let h = history()
        let a = publish(h, "/topic/a", ["1", "2", "3"])
        let b = publish(h, "/topic/b", ["x"])
        #expect(a.map { $0.position!.sequence } == [1, 2, 3])
        #expect(b.map { $0.position!.sequence } == [1])
        #expect(a[0].position!.epoch != b[0].position!.epoch)  // each destination's history has its own epoch
        let frame = String(buffer: a[1].encodeFrame(subscription: "s", ack: nil, escape: true, allocator: ByteBufferAllocator()))
        // STOMP 1.1+ escapes the colon in a header value (`\c`); clients read it back as `:`.
        #expect(frame.contains("\nx-position:\(a[1].position!.epoch)\\c2\n"))
        #expect(a[1].messageID == "id-2")
    }

    @Test func pastMaxBytesTheOldestMessagesOfTheLeastRecentlyPublishedDestinationsGo() {
        let clock = Clock()
        // Each message counts its body's storage (1,024 bytes) + 2 × 8 (its destination) + 256
        // = 1,296 bytes, so 7 fit in 10,200 (and below the 9,180 an eviction goes down to), and
        // the 8th passes it.
        let h = history(maxLength: 100, maxBytes: 10_200, clock: clock)
        let body = String(repeating: "x", count: 1_024)
        let a = publish(h, "/topic/a", Array(repeating: body, count: 4))
        clock.advance(.seconds(1))
        let b = publish(h, "/topic/b", Array(repeating: body, count: 3))
        #expect(h.retainedMessages == 7 && h.retainedBytes == 7 * 1_296)
        clock.advance(.seconds(1))
        // The oldest message over all destinations (/topic/a's first) goes, until 9,180 are left.
        publish(h, "/topic/b", [body])
        #expect(h.retainedMessages == 7 && h.retainedBytes == 7 * 1_296)
        let fromA = h.resume("/topic/a", from: .last(4)) {}
        #expect(fromA.messages.map(\.messageID) == a.dropFirst().map(\.messageID) && !fromA.recovered)
        let fromB = h.resume("/topic/b", from: .after(b[0].position!)) {}
        #expect(fromB.messages.count == 3 && fromB.recovered)
        // A flood of one destination keeps no more than the budget either, and goes last.
        clock.advance(.seconds(1))
        publish(h, "/topic/c", Array(repeating: body, count: 50))
        #expect(h.retainedBytes == 7 * 1_296)
        #expect(h.resume("/topic/a", from: .last(100)) {}.messages.isEmpty)
        #expect(h.resume("/topic/b", from: .last(100)) {}.messages.isEmpty)
        #expect(h.resume("/topic/c", from: .last(100)) {}.messages.count == 7)
    }

    @Test func pastMaxBytesDestinationsPublishedInTurnEachKeepTheirNewest() {
        let clock = Clock()
        let h = history(maxLength: 100_000, maxBytes: 125_000, clock: clock)  // 96 messages of 1,296 bytes fit
        let body = String(repeating: "x", count: 1_024)
        let names = ["a", "b", "c", "d", "e"]
        for i in 0..<1_000 {
            publish(h, "/topic/\(names[i % 5])", [body])
            clock.advance(.microseconds(1))
        }
        let kept = names.map { h.resume("/topic/\($0)", from: .last(1_000)) {}.messages.count }
        #expect(kept.reduce(0, +) == h.retainedMessages && h.retainedBytes <= 125_000)
        // Not one destination's history emptied for another's: each keeps about a fifth.
        #expect(kept.allSatisfy { $0 >= 15 }, "\(kept)")
    }

    /// A kept message counts the storage its body keeps alive: a small body that is a slice of
    /// a large buffer counted its own bytes, and the byte budget held many times itself.
    @Test func aKeptBodyCountsTheStorageItKeepsAlive() {
        let h = history(maxLength: 100, maxBytes: 1 << 30)
        var input = ByteBuffer(repeating: 0x61, count: 64_000)
        let slice = input.readSlice(length: 10)!
        h.record(PublishedMessage(destination: "/topic/a", messageID: "1", headers: [:], body: slice)) { _ in }
        #expect(h.retainedBytes >= 64_000)
    }

    @Test func publishersCannotForgeAPosition() {
        let m = PublishedMessage(destination: "/topic/a", messageID: "1", headers: ["x-position": "e:99"], body: ByteBuffer())
        #expect(m.headers["x-position"] == nil && m.position == nil)
    }

    @Test func resumeFromAPositionReplaysWhatFollowsIt() {
        let h = history()
        let sent = publish(h, "/topic/a", ["1", "2", "3", "4"])
        var registered = false
        let replay = h.resume("/topic/a", from: .after(sent[1].position!)) { registered = true }
        #expect(registered)
        #expect(replay.recovered)
        #expect(bodies(replay.messages) == ["3", "4"])
        #expect(replay.position == sent[3].position)
        // Up to date: nothing to replay, still recovered.
        let current = h.resume("/topic/a", from: .after(sent[3].position!)) {}
        #expect(current.recovered && current.messages.isEmpty)
    }

    @Test func aTrimmedPositionIsNotRecoveredAndReplaysTheWindow() {
        let h = history(maxLength: 3)
        let sent = publish(h, "/topic/a", ["1", "2", "3", "4", "5"])
        let replay = h.resume("/topic/a", from: .after(sent[0].position!)) {}
        #expect(!replay.recovered)
        #expect(bodies(replay.messages) == ["3", "4", "5"])
        // The oldest kept message's predecessor is still a complete resume.
        let edge = h.resume("/topic/a", from: .after(sent[1].position!)) {}
        #expect(edge.recovered && bodies(edge.messages) == ["3", "4", "5"])
    }

    @Test func expiredMessagesAreGone() {
        let clock = Clock()
        let h = history(ttl: .seconds(10), clock: clock)
        let sent = publish(h, "/topic/a", ["1", "2"])
        clock.advance(.seconds(11))
        publish(h, "/topic/a", ["3"])
        let replay = h.resume("/topic/a", from: .after(sent[0].position!)) {}
        #expect(!replay.recovered)
        #expect(bodies(replay.messages) == ["3"])
    }

    /// A clock whose first read runs `onFirstRead` (once) before it answers.
    final class HookedClock: Sendable {
        let state = NIOLockedValueBox<(now: NIODeadline, onFirstRead: (@Sendable () -> Void)?)>((.uptimeNanoseconds(1_000_000_000), nil))
        func advance(_ by: TimeAmount) { state.withLockedValue { $0.now = $0.now + by } }
        var read: @Sendable () -> NIODeadline {
            {
                let (now, hook) = self.state.withLockedValue { s in
                    defer { s.onFirstRead = nil }
                    return (s.now, s.onFirstRead)
                }
                hook?()
                return now
            }
        }
    }

    /// A record's time is read under the history's lock: read before it, a publish on another
    /// thread between the read and the lock appended a newer entry first, and the older one behind
    /// it outlived its time to live (trimming stops at the first entry still in the window).
    @Test func aRecordOnAnotherThreadBetweenTheClockReadAndTheAppendCannotGetAhead() {
        let clock = HookedClock()
        var settings = DestinationHistory.Settings()
        settings.maxLength = 10
        settings.ttl = .seconds(10)
        let h = DestinationHistory(settings: settings, processEpoch: "p", clock: clock.read)
        @Sendable func message(_ body: String) -> PublishedMessage {
            PublishedMessage(destination: "/topic/a", messageID: "id-\(body)", headers: [:], body: ByteBuffer(string: body))
        }
        let other = DispatchGroup()
        clock.state.withLockedValue { s in
            s.onFirstRead = {
                // "a" has read its time: "b" is published 5 s later on another thread, and "a"
                // goes on when "b" is in (or after 200 ms: "b" waits for the history's lock).
                clock.advance(.seconds(5))
                DispatchQueue.global().async(group: other) { h.record(message("b")) { _ in } }
                _ = other.wait(timeout: .now() + .milliseconds(200))
            }
        }
        h.record(message("a")) { _ in }
        other.wait()
        // 11 s after "a", 6 s after "b": "a" is past its time to live.
        clock.advance(.seconds(6))
        #expect(bodies(h.resume("/topic/a", from: .last(10)) {}.messages) == ["b"])
    }

    @Test func anotherEpochIsNotRecovered() {
        let h = history()
        publish(h, "/topic/a", ["1", "2"])
        let replay = h.resume("/topic/a", from: .after(StreamPosition(epoch: "old", sequence: 1))) {}
        #expect(!replay.recovered)
        #expect(bodies(replay.messages) == ["1", "2"])
        let ahead = h.resume("/topic/a", from: .after(StreamPosition(epoch: replay.position.epoch, sequence: 9))) {}
        #expect(!ahead.recovered && ahead.messages.isEmpty)
    }

    @Test func lastNMessages() {
        let h = history()
        publish(h, "/topic/a", ["1", "2", "3"])
        #expect(bodies(h.resume("/topic/a", from: .last(2)) {}.messages) == ["2", "3"])
        let all = h.resume("/topic/a", from: .last(10)) {}
        #expect(all.recovered && bodies(all.messages) == ["1", "2", "3"])
        let fresh = h.resume("/topic/never", from: .last(3)) {}
        #expect(fresh.recovered && fresh.messages.isEmpty && fresh.position.sequence == 0)
        // A subscriber of a destination nobody published to yet resumes from its position.
        let later = publish(h, "/topic/never", ["first"])
        let resumed = h.resume("/topic/never", from: .after(fresh.position)) {}
        #expect(resumed.recovered && bodies(resumed.messages) == ["first"] && later[0].position!.epoch == fresh.position.epoch)
    }

    @Test func evictedDestinationStartsANewEpoch() {
        let clock = Clock()
        let h = history(maxDestinations: 2, clock: clock)
        let a = publish(h, "/topic/a", ["1"])
        clock.advance(.seconds(1))
        publish(h, "/topic/b", ["1"])
        clock.advance(.seconds(1))
        publish(h, "/topic/c", ["1"])  // evicts /topic/a, published to least recently
        #expect(h.destinationCount == 2)
        let again = publish(h, "/topic/a", ["2"])
        #expect(again[0].position!.epoch != a[0].position!.epoch && again[0].position!.sequence == 1)
        #expect(!h.resume("/topic/a", from: .after(a[0].position!)) {}.recovered)
    }

    /// A client subscribing to many new topics (each a history with no message) evicted the
    /// histories that held messages: a victim resuming was told x-recovered false (a probe).
    @Test func subscribingToNewDestinationsEvictsEmptyHistoriesFirst() {
        let clock = Clock()
        let h = history(maxDestinations: 3, clock: clock)
        let kept = publish(h, "/topic/important", ["1", "2"])
        for i in 0..<20 {
            clock.advance(.seconds(1))
            _ = h.resume("/topic/new.\(i)", from: .last(0)) {}
        }
        #expect(h.destinationCount <= 3)
        let replay = h.resume("/topic/important", from: .after(kept[0].position!)) {}
        #expect(replay.recovered && bodies(replay.messages) == ["2"])
    }

    /// A table full of histories that hold messages: one SUBSCRIBE to a new topic evicted a
    /// hundredth of them (10 of 1,000) to make room for its one empty history. Now one.
    @Test func aSubscribeToANewDestinationEvictsAtMostOneHistoryThatHoldsMessages() {
        let clock = Clock()
        let h = history(maxDestinations: 1_000, clock: clock)
        for i in 0..<1_000 {
            clock.advance(.milliseconds(1))
            publish(h, "/topic/t\(i)", ["m"])
        }
        #expect(h.retainedMessages == 1_000)
        _ = h.resume("/topic/new", from: .last(0)) {}
        #expect(h.retainedMessages == 999)
        #expect(h.destinationCount == 1_000)
        // A publish to a new destination still makes room a hundredth at a time: the empty
        // history first, then 9 that hold messages.
        publish(h, "/topic/published", ["m"])
        #expect(h.retainedMessages == 999 - 9 + 1)
    }

    /// A history emptied by its window (expired) counts as empty for a SUBSCRIBE's eviction,
    /// although it was published to most recently: the histories that hold messages stay.
    @Test func aHistoryEmptiedByItsWindowIsEvictedFirstForASubscribe() {
        let clock = Clock()
        var settings = DestinationHistory.Settings()
        settings.maxDestinations = 3
        settings.windows = [.init(prefix: "/topic/short.", maxLength: 5, ttl: .seconds(1))]
        let h = DestinationHistory(settings: settings, processEpoch: "p", clock: clock.read)
        let kept = publish(h, "/topic/b", ["1"])
        clock.advance(.milliseconds(10))
        publish(h, "/topic/c", ["1"])
        clock.advance(.milliseconds(10))
        publish(h, "/topic/short.x", ["1"])
        clock.advance(.seconds(3))  // /topic/short.x expired; the next use sweeps it
        _ = h.resume("/topic/new", from: .last(0)) {}
        #expect(h.destinationCount == 3)
        #expect(h.retainedMessages == 2)
        #expect(h.resume("/topic/b", from: .after(kept[0].position!)) {}.recovered)
    }

    /// A table full of empty histories (subscribed, quiet destinations): a SUBSCRIBE to a new
    /// one evicts the oldest, not one taken in hash order (a subscriber's that just came: its
    /// receipt's epoch gone, its resume told x-recovered false though it missed nothing).
    @Test func aSubscribeEvictsTheOldestEmptyHistory() {
        let clock = Clock()
        let h = history(maxDestinations: 100, clock: clock)
        var positions: [StreamPosition] = []
        for i in 0..<100 {
            clock.advance(.milliseconds(1))
            positions.append(h.resume("/topic/q\(i)", from: .last(0)) {}.position)
        }
        clock.advance(.milliseconds(1))
        _ = h.resume("/topic/newcomer", from: .last(0)) {}
        #expect(h.destinationCount == 100)
        // Only the oldest went: the others keep their epoch.
        for i in 1..<100 {
            #expect(h.resume("/topic/q\(i)", from: .last(0)) {}.position.epoch == positions[i].epoch, "q\(i)")
        }
    }

    /// Expired messages of a destination nobody uses any more are dropped by the next use of
    /// any destination (a probe saw them held until the destination itself was used again).
    @Test func expiredMessagesOfIdleDestinationsAreDropped() {
        let clock = Clock()
        let h = history(ttl: .seconds(10), clock: clock)
        publish(h, "/topic/idle", ["1", "2", "3"])
        #expect(h.retainedMessages == 3)
        clock.advance(.seconds(11))
        publish(h, "/topic/other", ["x"])
        #expect(h.retainedMessages == 1)
    }

    @Test func windowsByPrefixKeepTheirOwnLengthAndTTL() {
        let clock = Clock()
        var settings = DestinationHistory.Settings()
        settings.maxLength = 5
        settings.windows = [
            .init(prefix: "/topic/ticks.", maxLength: 2, ttl: .seconds(60)),
            .init(prefix: "/topic/ticks.slow.", maxLength: 4, ttl: .seconds(1)),
        ]
        let h = DestinationHistory(settings: settings, processEpoch: "p", clock: clock.read)
        let bodies = (1...6).map(String.init)
        publish(h, "/topic/ticks.eur", bodies)
        publish(h, "/topic/ticks.slow.x", bodies)
        publish(h, "/topic/news", bodies)
        #expect(self.bodies(h.resume("/topic/ticks.eur", from: .last(10)) {}.messages) == ["5", "6"])
        #expect(self.bodies(h.resume("/topic/ticks.slow.x", from: .last(10)) {}.messages) == ["3", "4", "5", "6"])
        #expect(self.bodies(h.resume("/topic/news", from: .last(10)) {}.messages) == ["2", "3", "4", "5", "6"])
        clock.advance(.seconds(2))  // the longest prefix's TTL: only the slow window expires
        #expect(h.resume("/topic/ticks.slow.x", from: .last(10)) {}.messages.isEmpty)
        #expect(self.bodies(h.resume("/topic/ticks.eur", from: .last(10)) {}.messages) == ["5", "6"])
    }

    @Test func disabledPrefixesAndUserDestinations() {
        let h = history()
        #expect(!h.covers("/topic/nohistory.ticks"))
        #expect(h.covers("/topic/a"))
        #expect(h.covers(UserDestinations.routing(user: "alice", destination: "/queue/notes")))
    }

    @Test(
        arguments: [
            ("abc:12", StreamPosition(epoch: "abc", sequence: 12)),
            ("abc:0", StreamPosition(epoch: "abc", sequence: 0)),
            ("abc:18446744073709551615", StreamPosition(epoch: "abc", sequence: .max)),
            // One spelling per position: no epoch with a ':', no sign, no leading zero.
            ("a:b:3", nil), ("abc:+5", nil), ("abc:05", nil), ("abc:00", nil), ("abc:18446744073709551616", nil),
            ("abc", nil), (":3", nil), ("abc:", nil), ("abc:-1", nil), ("a c:1", nil), ("abc: 5", nil), ("abc:0x5", nil),
        ] as [(String, StreamPosition?)])
    func positionsParse(text: String, expected: StreamPosition?) {
        #expect(StreamPosition(parsing: text) == expected)
    }
}
