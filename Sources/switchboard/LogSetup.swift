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
                var handler = EscapingTextLogHandler(inner: StreamLogHandler.standardError(label: label))
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

/// swift-log's text lines, with control characters in the message and metadata written
/// escaped (`\n`, `\r`, `\u{1B}`): a value a client chose (a JWT `sub`, a destination)
/// cannot end the line and start a forged one. (The JSON format escapes them already.)
struct EscapingTextLogHandler: LogHandler {
    var inner: StreamLogHandler

    var logLevel: Logger.Level {
        get { inner.logLevel }
        set { inner.logLevel = newValue }
    }

    var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue.mapValues(Self.escaped) }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue.map(Self.escaped) }
    }

    func log(event: LogEvent) {
        var event = event
        let message = event.message.description
        if Self.needsEscaping(message) { event.message = Logger.Message(stringLiteral: Self.escaped(message)) }
        event.metadata = event.metadata?.mapValues(Self.escaped)
        inner.log(event: event)
    }

    static func needsEscaping(_ text: String) -> Bool {
        text.unicodeScalars.contains { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) || $0 == "\u{2028}" || $0 == "\u{2029}" }
    }

    static func escaped(_ text: String) -> String {
        guard needsEscaping(text) else { return text }
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar == "\u{2028}" || scalar == "\u{2029}":
                out += "\\u{\(String(scalar.value, radix: 16, uppercase: true))}"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    static func escaped(_ value: Logger.Metadata.Value) -> Logger.Metadata.Value {
        switch value {
        case .string(let s): .string(escaped(s))
        case .stringConvertible(let c): needsEscaping(c.description) ? .string(escaped(c.description)) : value
        case .array(let a): .array(a.map(escaped))
        case .dictionary(let d): .dictionary(d.mapValues(escaped))
        }
    }
}
