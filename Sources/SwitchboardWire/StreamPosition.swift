/// A message's place in its destination's history: the history's epoch and a dense sequence
/// number (1, 2, 3, … with no holes). Written `<epoch>:<seq>` in the `x-position` header of
/// every delivery and in the `x-resume-from` header a client sends to resume.
public struct StreamPosition: Sendable, Hashable, CustomStringConvertible {
    /// Changes whenever the history was lost (a restart, an evicted destination): positions of
    /// another epoch cannot be resumed from.
    public var epoch: String
    public var sequence: UInt64

    public init(epoch: String, sequence: UInt64) {
        self.epoch = epoch
        self.sequence = sequence
    }

    /// Parses `<epoch>:<seq>`; nil when malformed. The epoch has no `:` (none the gateway makes
    /// has), the sequence is decimal digits as the gateway writes them (no sign, no leading
    /// zero), so one position has one spelling.
    public init?(parsing text: String) {
        guard let colon = text.firstIndex(of: ":"), colon != text.startIndex else { return nil }
        let digits = text.utf8[text.utf8.index(after: colon)...]
        guard let first = digits.first, digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
            first != UInt8(ascii: "0") || digits.count == 1, let sequence = UInt64(Substring(digits))
        else { return nil }
        let epoch = String(text[..<colon])
        guard epoch.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) else { return nil }
        self.init(epoch: epoch, sequence: sequence)
    }

    public var description: String { "\(epoch):\(sequence)" }
}
