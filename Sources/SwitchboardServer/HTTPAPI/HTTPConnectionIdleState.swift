import NIOCore
import NIOHTTP1

/// The state of one HTTP/1.1 API connection that decides when it closes, as Hummingbird's
/// `HTTPConnectionStateHandler` keeps it: after ``timeout`` without a request (not while an
/// answer is being prepared), and on a graceful shutdown once the answers owed are written, or
/// at the latest ``shutdownGrace`` after the shutdown began (a request whose body never comes,
/// an answer that never completes: the process must still exit).
/// A request must also be read in time (slowloris: a body trickled a byte at a time kept the
/// connection, and its descriptor, for ever): its head and body within ``requestTimeout``,
/// plus a second per ``minimumBodyRate`` bytes of body read, like Apache's `mod_reqtimeout`.
/// Time with reads paused (the client waits for earlier answers) does not count, nor time a
/// request waits for its `100 Continue` (written after the answers before it).
/// An answer owed does not keep the connection for ever either: a client that stops reading
/// (the connection unwritable for ``timeout``, or ``requestTimeout`` without one) is closed.
/// Answers written by Hummingbird's router wait for writability, and with one owed the idle
/// timeout never ran: a client that pipelined requests and read nothing held its connection,
/// and its buffers, until the shutdown.
/// Pure: ``HTTPPublishHandler`` feeds it reads and answers and runs its one timer.
struct HTTPConnectionIdleState {
    /// How long a connection may stay without a request; nil for never.
    let timeout: TimeAmount?
    /// How long reading one request may take (before its body's allowance); nil for no limit.
    let requestTimeout: TimeAmount?
    /// Bytes of body per second of allowance added to ``requestTimeout``.
    static let minimumBodyRate = 500
    /// How long a shutdown waits for the answers owed.
    let shutdownGrace: TimeAmount
    /// Request heads read whose answer is not written yet (both paths).
    private(set) var requestsInProgress = 0
    /// A request's head is in and its end is not.
    private(set) var readingRequest = false
    /// When reading the current request began (or reads last resumed).
    private(set) var requestStarted = NIODeadline.uptimeNanoseconds(0)
    /// Body bytes of the current request read so far.
    private(set) var requestBodyBytes = 0
    /// The last read or answer written.
    private(set) var lastActivity = NIODeadline.uptimeNanoseconds(0)
    /// Shutting down: close once nothing is owed.
    private(set) var closeWhenAnswered = false
    /// Shutting down: close at this time even if answers are still owed.
    private(set) var closeBy: NIODeadline?
    /// Since when the connection has been unwritable (the client reads nothing).
    private(set) var unwritableSince: NIODeadline?

    /// What the idle timer does when it fires.
    enum TimerDecision: Equatable {
        case close
        /// Look again at this time.
        case check(NIODeadline)
    }

    /// What a graceful shutdown does to the connection.
    enum QuiesceDecision: Equatable {
        case closeNow
        /// Close after the last answer owed, or at this time (run the timer for it).
        case closeAfterAnswers(by: NIODeadline)
    }

    init(timeout: TimeAmount?, requestTimeout: TimeAmount? = nil, shutdownGrace: TimeAmount = .seconds(5)) {
        self.timeout = timeout
        self.requestTimeout = requestTimeout
        self.shutdownGrace = shutdownGrace
    }

    /// The connection is active: the first check is due at the returned time (nil: no timeout).
    mutating func activated(now: NIODeadline) -> NIODeadline? {
        lastActivity = now
        switch (timeout, requestTimeout) {
        case (nil, nil): return nil
        case (let timeout?, nil): return now + timeout
        case (nil, let request?): return now + request
        case (let timeout?, let request?): return now + min(timeout, request)
        }
    }

    /// When the request being read must be in, if one is.
    var requestDue: NIODeadline? {
        guard readingRequest, let requestTimeout else { return nil }
        return requestStarted + requestTimeout + .seconds(Int64(requestBodyBytes / Self.minimumBodyRate))
    }

    mutating func read(_ part: HTTPServerRequestPart, now: NIODeadline) {
        lastActivity = now
        switch part {
        case .head:
            requestsInProgress += 1
            readingRequest = true
            requestStarted = now
            requestBodyBytes = 0
        case .body(let bytes):
            requestBodyBytes += bytes.readableBytes
        case .end:
            readingRequest = false
        }
    }

    /// The client may send the request being read from now on (its `100 Continue` was written,
    /// after waiting for earlier answers): its time starts again.
    mutating func resumedReading(now: NIODeadline) {
        if readingRequest { requestStarted = now }
    }

    /// The request being read was refused before its end (its body over the limit): nothing
    /// more of it is read, and its answer is on the way (not idle, not a slow request).
    mutating func stoppedReading() {
        readingRequest = false
    }

    /// An answer's end was written. True when the connection should now close (a shutdown
    /// waited for it).
    mutating func answered(now: NIODeadline) -> Bool {
        requestsInProgress = max(0, requestsInProgress - 1)
        lastActivity = now
        guard requestsInProgress == 0 else { return false }
        return closeWhenAnswered
    }

    /// The connection became unwritable (`false`) or writable again.
    mutating func writabilityChanged(isWritable: Bool, now: NIODeadline) {
        if isWritable {
            unwritableSince = nil
        } else if unwritableSince == nil {
            unwritableSince = now
        }
    }

    /// How long the connection may stay unwritable; nil for no limit.
    var writeStallLimit: TimeAmount? { timeout ?? requestTimeout }

    /// A graceful shutdown began.
    mutating func quiesce(now: NIODeadline) -> QuiesceDecision {
        guard requestsInProgress > 0 else { return .closeNow }
        closeWhenAnswered = true
        let deadline = now + shutdownGrace
        closeBy = deadline
        return .closeAfterAnswers(by: deadline)
    }

    /// The timer fired; `readsPaused` while the connection does not read (the time since
    /// counts for no request being read).
    mutating func timerFired(now: NIODeadline, readsPaused: Bool = false) -> TimerDecision {
        if readsPaused && readingRequest { requestStarted = now }
        var decision = idleDecision(now: now)
        if let since = unwritableSince, let limit = writeStallLimit {
            if now - since >= limit { return .close }
            if case .check(let due) = decision { decision = .check(min(due, since + limit)) }
        }
        if let requestDue {
            if now >= requestDue { return .close }
            // Looked at once per request timeout at least: a request may begin at any time.
            let next = min(requestDue, now + requestTimeout!)
            if case .check(let due) = decision { decision = .check(min(due, next)) }
        } else if let requestTimeout, case .check(let due) = decision {
            decision = .check(min(due, now + requestTimeout))
        }
        guard let closeBy else { return decision }
        if now >= closeBy { return .close }
        if case .check(let next) = decision { return .check(min(next, closeBy)) }
        return decision
    }

    private func idleDecision(now: NIODeadline) -> TimerDecision {
        guard let timeout else { return .check(.distantFuture) }
        // A request is read and its answer is on the way: not idle, also while the next one is
        // being read (that one has ``requestTimeout``); look again later.
        if requestsInProgress > (readingRequest ? 1 : 0) { return .check(now + timeout) }
        let due = lastActivity + timeout
        return now >= due ? .close : .check(due)
    }
}
