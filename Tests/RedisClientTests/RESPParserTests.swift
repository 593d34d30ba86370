import NIOCore
import NIOTestUtils
import Testing

@testable import Redis

/// Parses every complete value in `bytes`; fails if bytes are left over.
func parseAll(_ bytes: String, limits: RESPParserLimits = .init()) throws -> [RESPToken] {
    var buffer = ByteBuffer(string: bytes)
    var parser = RESPParser(limits: limits)
    var tokens: [RESPToken] = []
    while let token = try parser.next(from: &buffer) { tokens.append(token) }
    #expect(buffer.readableBytes == 0, "unparsed bytes left")
    return tokens
}

func parseOne(_ bytes: String) throws -> RESPToken {
    let tokens = try parseAll(bytes)
    try #require(tokens.count == 1)
    return tokens[0]
}

func parseError(_ bytes: String, limits: RESPParserLimits = .init()) -> RESPParsingError? {
    var buffer = ByteBuffer(string: bytes)
    var parser = RESPParser(limits: limits)
    do {
        while try parser.next(from: &buffer) != nil {}
        return nil
    } catch {
        return error
    }
}

@Suite("RESP parser")
struct RESPParserTests {
    @Test func simpleTypes() throws {
        #expect(try parseOne("+OK\r\n").value == .simpleString(ByteBuffer(string: "OK")))
        #expect(try parseOne("-ERR bad\r\n").value == .simpleError(ByteBuffer(string: "ERR bad")))
        #expect(try parseOne(":-42\r\n").value == .number(-42))
        #expect(try parseOne(":9223372036854775807\r\n").value == .number(.max))
        #expect(try parseOne(":-9223372036854775808\r\n").value == .number(.min))
        #expect(try parseOne("$5\r\nhe\r\no\r\n").value == .bulkString(ByteBuffer(string: "he\r\no")))
        #expect(try parseOne("$0\r\n\r\n").value == .bulkString(ByteBuffer()))
        #expect(try parseOne("$-1\r\n").value == .null)
        #expect(try parseOne("*-1\r\n").value == .null)
        #expect(try parseOne("_\r\n").value == .null)
        #expect(try parseOne("#t\r\n").value == .boolean(true))
        #expect(try parseOne("#f\r\n").value == .boolean(false))
        #expect(try parseOne(",3.25\r\n").value == .double(3.25))
        #expect(try parseOne(",-1e3\r\n").value == .double(-1000))
        #expect(try parseOne(",inf\r\n").value == .double(.infinity))
        #expect(try parseOne(",-inf\r\n").value == .double(-.infinity))
        guard case .double(let nan) = try parseOne(",nan\r\n").value else { Issue.record("not a double"); return }
        #expect(nan.isNaN)
        #expect(
            try parseOne("(3492890328409238509324850943850943825024385\r\n").value
                == .bigNumber(ByteBuffer(string: "3492890328409238509324850943850943825024385")))
        #expect(try parseOne("!21\r\nSYNTAX invalid syntax\r\n").value == .bulkError(ByteBuffer(string: "SYNTAX invalid syntax")))
        #expect(try parseOne("=15\r\ntxt:Some string\r\n").value == .verbatimString(ByteBuffer(string: "txt:Some string")))
        #expect(try String(fromRESP: parseOne("=15\r\ntxt:Some string\r\n")) == "Some string")
    }

    @Test func aggregates() throws {
        let array = try parseOne("*3\r\n:1\r\n$3\r\nfoo\r\n*2\r\n+a\r\n_\r\n")
        guard case .array(let elements) = array.value else { Issue.record("not an array"); return }
        let items = Array(elements)
        #expect(items.count == 3)
        #expect(items[0].value == .number(1))
        #expect(try String(fromRESP: items[1]) == "foo")
        guard case .array(let inner) = items[2].value else { Issue.record("not nested"); return }
        #expect(Array(inner).map(\.value) == [.simpleString(ByteBuffer(string: "a")), .null])

        let map = try parseOne("%2\r\n+first\r\n:1\r\n$6\r\nsecond\r\n#f\r\n")
        guard case .map(let m) = map.value else { Issue.record("not a map"); return }
        #expect(m.count == 2)
        #expect(m["first"]?.value == .number(1))
        #expect(m["second"]?.value == .boolean(false))
        #expect(m["missing"] == nil)

        let set = try parseOne("~2\r\n+a\r\n+b\r\n")
        guard case .set(let s) = set.value else { Issue.record("not a set"); return }
        #expect(try s.decode(as: String.self) == ["a", "b"])

        let push = try parseOne(">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n")
        guard case .push(let p) = push.value else { Issue.record("not a push"); return }
        #expect(try p.decode(as: String.self) == ["message", "ch", "hi"])

        #expect(try parseOne("*0\r\n").value == .array(RESPToken.Array(count: 0, buffer: ByteBuffer())))
        #expect(try [String](fromRESP: parseOne("*0\r\n")) == [])
    }

    @Test func attributesPrefixTheValue() throws {
        let token = try parseOne("|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*2\r\n:2039123\r\n:9543892\r\n")
        guard case .array(let values) = token.value else { Issue.record("attribute not skipped: \(token.value)"); return }
        #expect(try values.decode(as: Int.self) == [2_039_123, 9_543_892])
        let attributes = try #require(token.attributes)
        #expect(attributes.count == 1)
        #expect(attributes["key-popularity"] != nil)
        // Attribute nested inside an array does not count as an element.
        let nested = try parseOne("*2\r\n|1\r\n+ttl\r\n:10\r\n+a\r\n+b\r\n")
        guard case .array(let n) = nested.value else { Issue.record("not an array"); return }
        #expect(try n.decode(as: String.self) == ["a", "b"])
    }

    @Test func manyValuesInOneBuffer() throws {
        let tokens = try parseAll("+OK\r\n:1\r\n$3\r\nabc\r\n*1\r\n:2\r\n_\r\n")
        #expect(
            tokens.map(\.value) == [
                .simpleString(ByteBuffer(string: "OK")), .number(1), .bulkString(ByteBuffer(string: "abc")),
                .array(RESPToken.Array(count: 1, buffer: ByteBuffer(string: ":2\r\n"))), .null,
            ])
        // Tokens are exact slices.
        #expect(tokens[2].base == ByteBuffer(string: "$3\r\nabc\r\n"))
    }

    @Test func byteAtATimeFeeding() throws {
        let input = Array("*3\r\n$5\r\nhello\r\n%1\r\n+k\r\n~1\r\n:7\r\n,1.5\r\n+OK\r\n".utf8)
        var parser = RESPParser()
        var buffer = ByteBuffer()
        var tokens: [RESPToken] = []
        for byte in input {
            buffer.writeInteger(byte)
            while let token = try parser.next(from: &buffer) { tokens.append(token) }
        }
        #expect(tokens.count == 2)
        #expect(tokens[0].base == ByteBuffer(bytes: input.dropLast(5)))
        #expect(tokens[1].value == .simpleString(ByteBuffer(string: "OK")))
        guard case .array(let outer) = tokens[0].value else { Issue.record("not an array"); return }
        #expect(outer.count == 3)
    }

    @Test func incompleteInputReturnsNilWithoutConsuming() throws {
        for partial in ["", "*", "*2\r", "*2\r\n:1\r\n", "$10\r\nhello", "$5\r\nhello\r", "%1\r\n+a\r\n"] {
            var buffer = ByteBuffer(string: partial)
            var parser = RESPParser()
            #expect(try parser.next(from: &buffer) == nil, "\(partial.debugDescription)")
            #expect(buffer.readableBytes == partial.utf8.count)
        }
    }

    @Test func malformedInput() {
        #expect(parseError("?foo\r\n")?.code == .invalidLeadingByte)
        #expect(parseError("*1\r\n?x\r\n") == RESPParsingError(code: .invalidLeadingByte, offset: 4))
        #expect(parseError(":12a\r\n")?.code == .canNotParseInteger)
        #expect(parseError(":\r\n")?.code == .canNotParseInteger)
        #expect(parseError(":99999999999999999999\r\n")?.code == .canNotParseInteger)
        #expect(parseError("$abc\r\n")?.code == .invalidLength)
        #expect(parseError("$-2\r\n")?.code == .invalidLength)
        #expect(parseError("*-5\r\n")?.code == .invalidLength)
        #expect(parseError("$3\r\nabcd\r\n")?.code == .missingCRLF)
        #expect(parseError("+OK\rX")?.code == .missingCRLF)
        #expect(parseError("+O\nK\r\n")?.code == .invalidSimpleString)
        #expect(parseError("#x\r\n")?.code == .canNotParseBoolean)
        #expect(parseError(",abc\r\n")?.code == .canNotParseDouble)
        #expect(parseError(",0x1p3\r\n")?.code == .canNotParseDouble)
        #expect(parseError("(12x\r\n")?.code == .canNotParseBigNumber)
        #expect(parseError("=3\r\ntxt\r\n")?.code == .invalidVerbatimString)
        #expect(parseError("_x\r\n")?.code == .missingCRLF)
        #expect(parseError("$10\r\n", limits: .init(maxBulkLength: 5))?.code == .bulkStringTooLarge)
        #expect(parseError("+aaaaaaaaaaaa", limits: .init(maxLineLength: 4))?.code == .lineTooLong)
    }

    /// With the bulk limit raised to `.max`, a length near `Int.max` trapped adding the
    /// payload's end: it is a value not complete yet.
    @Test func aHugeBulkLengthWithoutALimitWaitsForMoreBytes() throws {
        var buffer = ByteBuffer(string: "$9223372036854775807\r\nabc")
        var parser = RESPParser(limits: .init(maxBulkLength: .max))
        #expect(try parser.next(from: &buffer) == nil)
        #expect(buffer.readableBytes == 25)
    }

    @Test func nestingLimit() throws {
        let depth = 100
        let ok = String(repeating: "*1\r\n", count: depth) + ":1\r\n"
        #expect(try parseAll(ok).count == 1)
        let tooDeep = String(repeating: "*1\r\n", count: depth + 1) + ":1\r\n"
        #expect(parseError(tooDeep)?.code == .tooDeeplyNested)
        #expect(parseError(String(repeating: "*1\r\n", count: 4) + ":1\r\n", limits: .init(maxDepth: 3))?.code == .tooDeeplyNested)
        // Rejected before the whole (possibly endless) input has arrived.
        #expect(parseError(String(repeating: ">1\r\n", count: 200))?.code == .tooDeeplyNested)
    }

    @Test func validatingInitializer() throws {
        #expect(try RESPToken(validating: ByteBuffer(string: ":1\r\n")).value == .number(1))
        #expect(throws: RESPParsingError.self) { try RESPToken(validating: ByteBuffer(string: ":1\r\n:2\r\n")) }
        #expect(throws: RESPParsingError.self) { try RESPToken(validating: ByteBuffer(string: ":1\r")) }
    }

    @Test func decoderVerifier() throws {
        func token(_ s: String) throws -> RESPToken { try RESPToken(validating: ByteBuffer(string: s)) }
        try ByteToMessageDecoderVerifier.verifyDecoder(
            stringInputOutputPairs: [
                ("+OK\r\n", [try token("+OK\r\n")]),
                ("*2\r\n$3\r\nfoo\r\n%1\r\n:1\r\n#t\r\n:5\r\n", [try token("*2\r\n$3\r\nfoo\r\n%1\r\n:1\r\n#t\r\n"), try token(":5\r\n")]),
                (">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$0\r\n\r\n", [try token(">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$0\r\n\r\n")]),
                ("$-1\r\n_\r\n", [try token("$-1\r\n"), try token("_\r\n")]),
            ],
            decoderFactory: { RESPTokenDecoder() }
        )
    }

    @Test func decodableConformances() throws {
        #expect(try Int(fromRESP: parseOne(":12\r\n")) == 12)
        #expect(try Int(fromRESP: parseOne("$2\r\n12\r\n")) == 12)
        #expect(try String?(fromRESP: parseOne("_\r\n")) == nil)
        #expect(try Double(fromRESP: parseOne("$4\r\n1.25\r\n")) == 1.25)
        #expect(throws: RESPDecodeError.self) { try Int(fromRESP: parseOne("+nope\r\n")) }
        #expect(throws: RESPDecodeError.self) { try RedisOK(fromRESP: parseOne("+QUEUED\r\n")) }
        _ = try RedisOK(fromRESP: parseOne("+OK\r\n"))
    }
}
