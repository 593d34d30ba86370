import SwitchboardCore
import SwitchboardWire
import Testing

@Suite("DestinationPattern.Invalid: a struct with kinds")
struct DestinationPatternInvalidTests {
    @Test("descriptions, byte for byte")
    func descriptions() {
        #expect(DestinationPattern.Invalid.empty.description == "empty destination")
        #expect(
            DestinationPattern.Invalid.misplacedWildcard("/topic/a*").description
                == "invalid wildcard in '/topic/a*': '*' and '**' must be whole segments and '**' must be last")
    }

    @Test("equality takes the pattern into account")
    func equality() {
        #expect(DestinationPattern.Invalid.empty == .empty)
        #expect(DestinationPattern.Invalid.misplacedWildcard("/a*") == .misplacedWildcard("/a*"))
        #expect(DestinationPattern.Invalid.misplacedWildcard("/a*") != .misplacedWildcard("/b*"))
        #expect(DestinationPattern.Invalid.misplacedWildcard("") != .empty)
    }

    @Test("the parser throws them, with their kinds")
    func thrown() {
        #expect(throws: DestinationPattern.Invalid.empty) { try DestinationPattern("") }
        #expect(throws: DestinationPattern.Invalid.misplacedWildcard("/topic/**/x")) { try DestinationPattern("/topic/**/x") }
        do {
            _ = try DestinationPattern("/topic/a.b*c")
            Issue.record("no error")
        } catch {
            #expect(error.kind == .misplacedWildcard)
            switch error {
            case .empty: Issue.record("matched .empty")
            case .misplacedWildcard: break
            default: Issue.record("matched nothing")
            }
        }
        #expect(DestinationPattern.Invalid.empty.kind == .empty)
        #expect(DestinationPattern.Invalid.Kind.empty != .misplacedWildcard)
    }
}
