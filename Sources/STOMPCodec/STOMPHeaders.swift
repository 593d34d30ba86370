/// The ordered header list of a STOMP frame.
///
/// Repeated headers are kept in order; lookups return the first occurrence, as the
/// STOMP 1.2 specification requires ("only the first header entry SHOULD be used").
/// Values are never trimmed.
public struct STOMPHeaders: Sendable, Hashable, Sequence, ExpressibleByDictionaryLiteral {
    public typealias Element = (name: String, value: String)

    @usableFromInline
    var storage: [Element]

    public init() { self.storage = [] }

    public init(_ headers: [(String, String)]) {
        self.storage = headers.map { (name: $0.0, value: $0.1) }
    }

    public init(dictionaryLiteral elements: (String, String)...) {
        self.storage = elements.map { (name: $0.0, value: $0.1) }
    }

    /// Number of header lines, repeats included.
    @inlinable public var count: Int { storage.count }
    @inlinable public var isEmpty: Bool { storage.isEmpty }

    /// The first value of `name`, or nil.
    @inlinable
    public subscript(name: String) -> String? {
        for h in storage where h.name == name { return h.value }
        return nil
    }

    /// Appends a header line (a repeat does not replace an earlier one).
    @inlinable
    public mutating func add(_ name: String, _ value: String) {
        storage.append((name: name, value: value))
    }

    /// Replaces every line named `name` with one line, or appends it.
    public mutating func set(_ name: String, _ value: String) {
        remove(name)
        storage.append((name: name, value: value))
    }

    /// Removes every line named `name`.
    public mutating func remove(_ name: String) {
        storage.removeAll { $0.name == name }
    }

    public func makeIterator() -> IndexingIterator<[Element]> { storage.makeIterator() }

    public static func == (lhs: STOMPHeaders, rhs: STOMPHeaders) -> Bool {
        lhs.storage.elementsEqual(rhs.storage) { $0.name == $1.name && $0.value == $1.value }
    }

    public func hash(into hasher: inout Hasher) {
        for h in storage {
            hasher.combine(h.name)
            hasher.combine(h.value)
        }
    }
}
