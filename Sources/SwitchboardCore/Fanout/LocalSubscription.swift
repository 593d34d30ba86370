import NIOCore
import STOMPCodec
import SwitchboardWire

/// How a subscription acknowledges messages (STOMP `ack` header).
package enum AckMode: String, Sendable {
    case auto
    case client
    case clientIndividual = "client-individual"
}

/// Receives messages for the subscriptions of one session. Called on the session's event loop only.
package protocol SubscriptionSink: AnyObject {
    /// Writes `message` for `subscription` without flushing. `batch.frames` holds the frames of
    /// this message already encoded on this loop, to reuse when the bytes would be the same;
    /// a sink that writes counts it in `batch.delivered` and `batch.bytes`.
    func deliver(_ message: PublishedMessage, to subscription: LocalSubscription, batch: inout DeliveryBatch)
    /// Flushes what ``deliver(_:to:)`` wrote since the last flush.
    func flushDeliveries()
}

/// One SUBSCRIBE of one session, registered in the shard of the session's event loop.
package final class LocalSubscription {
    package let id: String
    package let pattern: DestinationPattern
    package let ackMode: AckMode
    package unowned let sink: any SubscriptionSink
    /// Position in the shard's bucket, for O(1) removal.
    var slot: Int = -1
    /// Per-flush dedup marker for the sink (see ``LoopShard``).
    var active = true
    /// Registered under a destination history's lock at this position: live copies up to it
    /// are skipped (the replay has them, or they predate the subscription). Cleared by the
    /// first later message.
    package var replayedThrough: StreamPosition?
    /// Its replay is being read (a resuming `SUBSCRIBE`, answered once it is back).
    package var replayPending = false
    /// Live messages delivered while the replay was read (they wait behind the `SUBSCRIBE`'s
    /// receipt, after the replay): the first and the last, of one epoch. The replay stops before
    /// the first, and live copies after the last go on, so the seam holds when history moved to
    /// a new epoch while the replay was read.
    package var liveDuringReplay: (first: StreamPosition, last: StreamPosition)?
    /// The client resumed from further than this instance had delivered (`x-resume-from` ahead
    /// of the registration position, or in another epoch): live copies of that epoch up to it
    /// are the client's already. Kept (a copy of another epoch does not clear it) until a later
    /// copy of its epoch, or a replay that puts it ahead of history or in an older epoch.
    package var claimedThrough: StreamPosition?
    /// The epoch of the position this instance registered the subscription at, while its
    /// replay is read.
    package var registeredEpoch: String?
    /// Registered with a replay read at once, under the history's lock (the embedded broker):
    /// while the seam is open, a copy of an older epoch than the replay's was numbered before
    /// the registration (its ring evicted and made anew meanwhile), and is not the client's.
    package var replayedInStep = false
    /// The replay came back in another epoch than ``registeredEpoch`` (Redis started the
    /// history over, and this instance has not heard of it yet): live copies of the registered
    /// epoch are older than the replay, and are dropped until the seam clears.
    package var leavingEpoch: String?
    /// The last live copy skipped as the client's while the replay was read.
    package var skippedAsClientsThrough: StreamPosition?
    /// Live messages of another epoch than the client's (``claimedThrough``) that arrived while
    /// the replay was read: which of the two epochs history is in, the replay tells. They follow
    /// it if it is in their epoch, else they are dropped. Counted in the session's pending
    /// bytes, and at most ``maxDeferredDuringReplay``: past either the session ends as a slow
    /// consumer.
    package var deferredDuringReplay: [PublishedMessage] = []
    package static let maxDeferredDuringReplay = 10_000
    /// This subscription receives a destination's join/leave notices (its pattern is the
    /// routing destination `/~presence<destination>`), not its messages.
    package var isPresence = false

    package init(id: String, pattern: DestinationPattern, ackMode: AckMode, sink: any SubscriptionSink) {
        self.id = id
        self.pattern = pattern
        self.ackMode = ackMode
        self.sink = sink
    }
}
