import Logging
import NIOConcurrencyHelpers

/// Records the messages logged, for a test to wait for one.
package struct RecordingLogHandler: LogHandler {
    package let messages: NIOLockedValueBox<[String]>
    package var metadata: Logger.Metadata = [:]
    package var logLevel: Logger.Level = .trace

    package init(messages: NIOLockedValueBox<[String]>) { self.messages = messages }

    package subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    package func log(event: LogEvent) { messages.withLockedValue { $0.append("\(event.message)") } }
}
