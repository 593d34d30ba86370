import NIOCore
import NIOEmbedded
import SwitchboardWire
import Testing

@testable import SwitchboardCore

/// The embedded broker's idempotency keys: per destination, 10 minutes, bounded.
@Suite struct IdempotencyKeysTests {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

    @Test func aKeyCountsOncePerDestinationWithinTheWindow() {
        let keys = IdempotencyKeys()
        #expect(keys.claim("k", destination: "/topic/a", now: t0))
        #expect(!keys.claim("k", destination: "/topic/a", now: t0 + .minutes(9)))
        #expect(keys.claim("k", destination: "/topic/b", now: t0), "another destination")
        #expect(keys.claim("k2", destination: "/topic/a", now: t0))
        #expect(keys.claim("k", destination: "/topic/a", now: t0 + .minutes(10)), "the window is over")
    }

    @Test func theDestinationAndKeyAreNotConfused() {
        let keys = IdempotencyKeys()
        #expect(keys.claim("b", destination: "/topic/a", now: t0))
        #expect(keys.claim("", destination: "/topic/ab", now: t0))
        #expect(keys.claim("a\u{0}b", destination: "/topic", now: t0))
    }

    /// Keys are compared by their bytes, as in Redis: Swift's `String` equality took
    /// canonically equivalent keys for one, and the second message was not published.
    @Test func keysAreBytesNotCanonicalText() {
        let keys = IdempotencyKeys()
        #expect(keys.claim("caf\u{E9}", destination: "/topic/a", now: t0))
        #expect(keys.claim("cafe\u{301}", destination: "/topic/a", now: t0))
        #expect(!keys.claim("caf\u{E9}", destination: "/topic/a", now: t0))
    }

    @Test func pastItsCapacityTheOldestGoFirst() {
        let keys = IdempotencyKeys(capacity: 3)
        for n in 0..<3 { #expect(keys.claim("k\(n)", destination: "/topic/a", now: t0)) }
        #expect(keys.claim("k3", destination: "/topic/a", now: t0))
        #expect(keys.count == 3)
        #expect(!keys.claim("k3", destination: "/topic/a", now: t0))
        #expect(keys.claim("k0", destination: "/topic/a", now: t0), "forgotten: the oldest went")
    }

    @Test func aDuplicateClaimWhenFullEvictsNothing() {
        let keys = IdempotencyKeys(capacity: 3)
        for n in 0..<3 { #expect(keys.claim("k\(n)", destination: "/topic/a", now: t0)) }
        #expect(!keys.claim("k0", destination: "/topic/a", now: t0), "the oldest, claimed again: still a duplicate")
        #expect(keys.count == 3)
        #expect(!keys.claim("k1", destination: "/topic/a", now: t0))
    }

    @Test func backendsAndStompUsersHaveTheirOwnTokens() {
        #expect(IdempotencyTokens.api("k") != IdempotencyTokens.stomp(user: nil, key: "k"))
        #expect(IdempotencyTokens.stomp(user: "alice", key: "k") != IdempotencyTokens.stomp(user: "bob", key: "k"))
        // Inbound routes' tokens (`<stream>:<entry-id>`) never start with a NUL.
        #expect(IdempotencyTokens.api("1700000000000-0") != "api:1700000000000-0")
    }

    @Test func expiredKeysAreForgotten() {
        let keys = IdempotencyKeys()
        for n in 0..<10 { #expect(keys.claim("k\(n)", destination: "/topic/a", now: t0)) }
        #expect(keys.claim("later", destination: "/topic/a", now: t0 + .minutes(11)))
        #expect(keys.count == 1)
    }

    @Test func theEmbeddedBrokerPublishesAKeyOnce() throws {
        let loop = EmbeddedEventLoop()
        let hub = FanoutHub(eventLoops: [loop])
        let engine = InMemoryEngine(hub: hub)
        let message = PublishedMessage(destination: "/topic/a", messageID: "m1", headers: [:], body: ByteBuffer(string: "x"))
        #expect(try engine.publish(message, idempotencyKey: IdempotencyTokens.api("k"), on: loop).wait())
        #expect(try !engine.publish(message, idempotencyKey: IdempotencyTokens.api("k"), on: loop).wait())
        #expect(try engine.publish(message, idempotencyKey: IdempotencyTokens.api("k2"), on: loop).wait())
    }
}
