import Foundation
import Logging
import SwitchboardServer

/// Log output: human-readable lines (default) or one JSON object per line, with a level
/// per subsystem (`switchboard.session`, `switchboard.redis`, `switchboard.http`, …).
struct LogSetup {
    var format: LogSettings.Format
    var defaultLevel: Logger.Level
    /// Levels by subsystem name (the label after `switchboard.`).
    var levels: [String: Logger.Level]

    func level(for label: String) -> Logger.Level {
        let subsystem = label.hasPrefix("switchboard.") ? String(label.dropFirst("switchboard.".count)) : label
        return levels[subsystem] ?? defaultLevel
    }

    func bootstrap() {
        let setup = self
        LoggingSystem.bootstrap { label in
            switch setup.format {
            case .text:
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = setup.level(for: label)
                return handler
            case .json:
                return JSONLogHandler(label: label, logLevel: setup.level(for: label))
            }
        }
    }
}

/// Writes one JSON object per line to standard error:
/// `{"ts":"…","level":"info","label":"switchboard.session","message":"…","session":"…",…}`.
struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var object: [String: Any] = [
            "ts": ISO8601DateFormatter().string(from: Date()),
            "level": event.level.rawValue,
            "label": label,
            "message": event.message.description,
        ]
        for (key, value) in metadata { object[key] = Self.plain(value) }
        if let extra = event.metadata {
            for (key, value) in extra { object[key] = Self.plain(value) }
        }
        guard var data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else { return }
        data.append(0x0A)
        FileHandle.standardError.write(data)
    }

    static func plain(_ value: Logger.Metadata.Value) -> Any {
        switch value {
        case .string(let s): return s
        case .stringConvertible(let c): return c.description
        case .array(let a): return a.map(plain)
        case .dictionary(let d): return d.mapValues(plain)
        }
    }
}
