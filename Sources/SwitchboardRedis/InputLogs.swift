import SwitchboardCore

/// Log lines whose rate others decide: one per message arriving from Redis (anyone with access
/// to its channels and streams publishes them), or one per destination or message while Redis
/// is unreachable. Each kind logs at most 10 lines per 10 s; the next line says how many were
/// left out (`suppressed`).
enum InputLogs {
    static let malformedEnvelope = LogThrottle()
    static let malformedPresence = LogThrottle()
    static let subscribeFailed = LogThrottle()
    static let notRecorded = LogThrottle()
    static let historyUnread = LogThrottle()
    static let holes = LogThrottle()
    static let notBroker = LogThrottle()
    static let badName = LogThrottle()
    static let badBroadcast = LogThrottle()
    static let badStreamEntry = LogThrottle()
    static let streamReads = LogThrottle()
    static let streamPositions = LogThrottle()
}
