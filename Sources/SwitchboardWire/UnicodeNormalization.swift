import Foundation

extension DestinationPattern {
    /// Whether `text` is in Unicode Normalization Form C (NFC).
    ///
    /// Swift compares and hashes strings by canonical equivalence: two names that differ in
    /// bytes (`josé` with a precomposed `é`, and `jose` followed by a combining accent) are equal
    /// to `==` and one key of a dictionary, while Redis and the wildcard matcher compare bytes.
    /// So destinations and user names are accepted only in NFC, where equal means byte-equal (a
    /// probe's user whose name only looked like another's read the other's queue and history).
    public static func isNormalized(_ text: String) -> Bool {
        if text.utf8.allSatisfy({ $0 < 0x80 }) { return true }
        return text.precomposedStringWithCanonicalMapping.utf8.elementsEqual(text.utf8)
    }
}
