import NIOConcurrencyHelpers

/// Inbound messages of the Redis routes (Pub/Sub and streams) dropped, counted by reason for
/// `switchboard_redis_inbound_dropped_total{reason}`: each drop is also logged, throttled, so a
/// log line may stand for many.
package final class InboundDrops: Sendable {
    /// Why an inbound message was dropped.
    package enum Reason: String, CaseIterable, Sendable {
        /// Its destination is not a broker destination (or a wildcard), or a user message's
        /// topic is not a user destination.
        case notBrokerDestination = "not_broker_destination"
        /// Its destination is not a valid name (too long, control characters, not NFC).
        case badDestination = "bad_destination"
        /// A broadcast payload that is not `{"topic", "message"}` JSON.
        case badPayload = "bad_payload"
        /// A stream entry without the fields `topic` and `message`.
        case badStreamEntry = "bad_stream_entry"
        /// A Pub/Sub message Redis did not record in history (a stream entry is read again instead).
        case notRecorded = "not_recorded"
    }

    private let counts = NIOLockedValueBox<[Reason: Int]>([:])

    package init() {}

    func add(_ reason: Reason) { counts.withLockedValue { $0[reason, default: 0] += 1 } }

    /// How many were dropped for `reason`.
    package func count(_ reason: Reason) -> Int { counts.withLockedValue { $0[reason, default: 0] } }
}
