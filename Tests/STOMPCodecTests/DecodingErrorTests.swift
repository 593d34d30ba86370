import STOMPCodec
import Testing

@Suite("STOMPDecodingError: a struct with kinds")
struct DecodingErrorTests {
    @Test(
        "every error's description, byte for byte",
        arguments: [
            (STOMPDecodingError.unknownCommand("FOO"), "unknown command 'FOO'"),
            (.unknownCommand(""), "unknown command ''"),
            (.malformedHeaderLine("abc"), "malformed header line 'abc': expected name:value"),
            (.undefinedEscape("\\t"), "undefined escape sequence '\\t' in header"),
            (.invalidContentLength("-1"), "invalid content-length '-1'"),
            (.missingNullTerminator, "frame body is not followed by a NUL octet after content-length bytes"),
            (.tooManyHeaders(limit: 3), "too many headers (limit 3)"),
            (.headerLineTooLong(limit: 10), "header line too long (limit 10 bytes)"),
            (.frameTooLarge(limit: 99), "frame too large (limit 99 bytes)"),
            (.headersTooLarge(limit: 40), "headers too large (limit 40 bytes)"),
            (.bodyTooLarge(limit: 10), "body too large (limit 10 bytes)"),
        ])
    func description(_ error: STOMPDecodingError, _ expected: String) {
        #expect(error.description == expected)
        #expect("\(error)" == expected)
    }

    @Test("quoted input is shortened and control characters escaped")
    func quoting() {
        #expect(
            STOMPDecodingError.malformedHeaderLine(String(repeating: "y", count: 100)).description
                == "malformed header line '\(String(repeating: "y", count: 64))': expected name:value")
        #expect(STOMPDecodingError.undefinedEscape("\\\u{1}abcdefghij").description == "undefined escape sequence '\\\\x01abcdef' in header")
        #expect(STOMPDecodingError.invalidContentLength("1\u{7F}").description == "invalid content-length '1\\x7f'")
    }

    @Test("equality and hashing take the details into account")
    func equality() {
        #expect(STOMPDecodingError.frameTooLarge(limit: 100) == .frameTooLarge(limit: 100))
        #expect(STOMPDecodingError.frameTooLarge(limit: 100) != .frameTooLarge(limit: 101))
        #expect(STOMPDecodingError.frameTooLarge(limit: 100) != .bodyTooLarge(limit: 100))
        #expect(STOMPDecodingError.unknownCommand("A") != .unknownCommand("B"))
        #expect(STOMPDecodingError.missingNullTerminator == .missingNullTerminator)
        let set: Set<STOMPDecodingError> = [.frameTooLarge(limit: 1), .frameTooLarge(limit: 1), .frameTooLarge(limit: 2), .missingNullTerminator]
        #expect(set.count == 3)
    }

    @Test("kind and limit")
    func kindAndLimit() {
        #expect(STOMPDecodingError.frameTooLarge(limit: 7).kind == .frameTooLarge)
        #expect(STOMPDecodingError.frameTooLarge(limit: 7).limit == 7)
        #expect(STOMPDecodingError.tooManyHeaders(limit: 3).limit == 3)
        #expect(STOMPDecodingError.unknownCommand("X").kind == .unknownCommand)
        #expect(STOMPDecodingError.unknownCommand("X").limit == nil)
        #expect(STOMPDecodingError.missingNullTerminator.kind == .missingNullTerminator)
        #expect(STOMPDecodingError.Kind.bodyTooLarge != .frameTooLarge)
        #expect(STOMPDecodingError.Kind.headersTooLarge.description == "headersTooLarge")
    }

    /// How the session tells limit errors apart (STOMPSessionHandler.errorCaught).
    func closeReason(_ error: STOMPDecodingError) -> String {
        switch error {
        case .frameTooLarge, .bodyTooLarge: "too big"
        case .tooManyHeaders, .headerLineTooLong, .headersTooLarge: "policy"
        case .missingNullTerminator: "framing"
        default: "protocol"
        }
    }

    @Test("a switch matches an error against kinds")
    func switchOnKinds() {
        #expect(closeReason(.frameTooLarge(limit: 1)) == "too big")
        #expect(closeReason(.bodyTooLarge(limit: 1)) == "too big")
        #expect(closeReason(.tooManyHeaders(limit: 1)) == "policy")
        #expect(closeReason(.headerLineTooLong(limit: 1)) == "policy")
        #expect(closeReason(.headersTooLarge(limit: 1)) == "policy")
        #expect(closeReason(.missingNullTerminator) == "framing")
        #expect(closeReason(.unknownCommand("X")) == "protocol")
        #expect(closeReason(.invalidContentLength("x")) == "protocol")
    }

    @Test("the decoder throws the struct errors")
    func thrown() {
        #expect(throws: STOMPDecodingError.unknownCommand("FOO")) { _ = try decodeAll("FOO\n\n\u{0}") }
        let error = decodingError { _ = try decodeAll("SEND\n\n\(String(repeating: "b", count: 11))\u{0}", limits: STOMPDecoderLimits(maxBodyBytes: 10)) }
        #expect(error?.kind == .bodyTooLarge)
        #expect(error?.limit == 10)
    }
}
