import SwitchboardCore
import SwitchboardWire
import Testing

/// Feeds `bytes` to a fresh validator in pieces cut at `cuts`; nil if refused, else whether
/// the input ended on a code point boundary.
private func run(_ bytes: [UInt8], cuts: [Int] = []) -> Bool? {
    var validator = UTF8Validator()
    var start = 0
    for end in cuts + [bytes.count] {
        let ok = bytes[start..<end].withUnsafeBytes { validator.validate($0) }
        if !ok { return nil }
        start = end
    }
    return validator.isComplete
}

/// Valid and complete UTF-8, whole and cut anywhere.
private func isValid(_ bytes: [UInt8]) -> Bool {
    guard run(bytes) == true else { return false }
    for cut in 0...bytes.count where run(bytes, cuts: [cut]) != true { return false }
    return true
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
private struct TestRandom: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 2_685_821_657_736_338_717
    }
}

@Suite("UTF-8 validator")
struct UTF8ValidatorTests {
    @Test(
        "valid text, including every encoding length and the edges of each range",
        arguments: [
            "", "plain ASCII over more than eight bytes", "\u{7F}", "\u{80}", "\u{7FF}", "\u{800}", "\u{D7FF}", "\u{E000}",
            "\u{FFFD}", "\u{FFFF}", "\u{10000}", "\u{10FFFF}", "h\u{E9}llo \u{20AC} \u{1F600} \u{4E2D}\u{6587}", String(repeating: "\u{E9}a", count: 20),
        ])
    func valid(_ text: String) {
        #expect(isValid(Array(text.utf8)))
    }

    @Test(
        "invalid sequences are refused",
        arguments: [
            [0x80], [0xBF], [0xC0, 0x80], [0xC1, 0xBF],  // stray continuation, overlong 2-byte
            [0xE0, 0x80, 0x80], [0xE0, 0x9F, 0xBF],  // overlong 3-byte
            [0xED, 0xA0, 0x80], [0xED, 0xBF, 0xBF],  // surrogates
            [0xF0, 0x80, 0x80, 0x80], [0xF0, 0x8F, 0xBF, 0xBF],  // overlong 4-byte
            [0xF4, 0x90, 0x80, 0x80], [0xF5, 0x80, 0x80, 0x80], [0xFE], [0xFF],  // above U+10FFFF
            [0xC3, 0x28], [0xE2, 0x82, 0x28], [0xF0, 0x9F, 0x98, 0x41],  // lead byte followed by ASCII
        ] as [[UInt8]])
    func invalid(_ bytes: [UInt8]) {
        #expect(run(bytes) == nil)
        for cut in 0...bytes.count {
            #expect(run(bytes, cuts: [cut]) == nil, "cut at \(cut)")
        }
        // Also after an ASCII run long enough for the word-at-a-time path.
        #expect(run(Array("0123456789abcdef".utf8) + bytes) == nil)
    }

    @Test("a truncated code point is incomplete, not refused", arguments: [[0xC3], [0xE2, 0x82], [0xF0, 0x9F, 0x98]] as [[UInt8]])
    func truncated(_ bytes: [UInt8]) {
        #expect(run(bytes) == false)
        #expect(run(Array("long ascii prefix ".utf8) + bytes) == false)
    }

    @Test("a bad byte is found at every position of an ASCII run")
    func everyPosition() {
        for length in 1...40 {
            for position in 0..<length {
                var bytes = [UInt8](repeating: UInt8(ascii: "a"), count: length)
                bytes[position] = 0xFF
                #expect(run(bytes) == nil, "length \(length), position \(position)")
            }
        }
    }

    @Test("agrees with the standard library on random input, whole and in pieces")
    func matchesStandardLibrary() {
        var random = TestRandom(state: 0x9E37_79B9_7F4A_7C15)
        // Bytes biased towards the interesting ones so that valid multi-byte text occurs too.
        let alphabet: [UInt8] = [0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC2, 0xC3, 0xDF, 0xE0, 0xE1, 0xED, 0xEF, 0xF0, 0xF3, 0xF4, 0xF5]
        for _ in 0..<20_000 {
            let count = Int.random(in: 0...12, using: &random)
            let bytes = (0..<count).map { _ in
                Bool.random(using: &random) ? alphabet.randomElement(using: &random)! : UInt8.random(in: 0...255, using: &random)
            }
            let expected = String(validating: bytes, as: UTF8.self) != nil
            let cut = Int.random(in: 0...count, using: &random)
            #expect((run(bytes) == true) == expected, "\(bytes)")
            #expect((run(bytes, cuts: [cut]) == true) == expected, "\(bytes) cut at \(cut)")
        }
    }
}
