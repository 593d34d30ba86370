import NIOCore
import STOMPCodec
import Testing

@Suite("Decoder limits")
struct DecoderLimitsTests {
    @Test("headers up to the limit pass; one more is too many")
    func tooManyHeaders() throws {
        let limits = STOMPDecoderLimits(maxHeaders: 3)
        let ok = try decodeOne("SEND\na:1\nb:2\na:3\n\n\u{0}", limits: limits)
        #expect(ok.headers.count == 3)
        let error = decodingError { _ = try decodeAll("SEND\na:1\nb:2\na:3\nc:4\n\n\u{0}", limits: limits) }
        #expect(error == .tooManyHeaders(limit: 3))
    }

    @Test("too many headers is detected before the header block ends")
    func tooManyHeadersIncomplete() {
        let limits = STOMPDecoderLimits(maxHeaders: 2)
        let error = decodingError { _ = try decodeAll("SEND\na:1\nb:2\nc:3\nd:", limits: limits) }
        #expect(error == .tooManyHeaders(limit: 2))
    }

    @Test("a header line at the limit passes; longer is an error")
    func headerLineTooLong() throws {
        let limits = STOMPDecoderLimits(maxHeaderLineBytes: 10)
        let atLimit = "k:" + String(repeating: "v", count: 8)  // 10 bytes
        let frame = try decodeOne("SEND\n\(atLimit)\n\n\u{0}", limits: limits)
        #expect(frame.headers["k"] == String(repeating: "v", count: 8))
        let error = decodingError { _ = try decodeAll("SEND\n\(atLimit)v\n\n\u{0}", limits: limits) }
        #expect(error == .headerLineTooLong(limit: 10))
    }

    @Test("an over-long header line is detected before its LF arrives")
    func headerLineTooLongIncomplete() {
        let limits = STOMPDecoderLimits(maxHeaderLineBytes: 16)
        let error = decodingError { _ = try decodeAll("SEND\nk:" + String(repeating: "x", count: 40), limits: limits) }
        #expect(error == .headerLineTooLong(limit: 16))
    }

    @Test("an over-long command line is detected too")
    func commandLineTooLong() {
        let limits = STOMPDecoderLimits(maxHeaderLineBytes: 16)
        let error = decodingError { _ = try decodeAll(String(repeating: "S", count: 40), limits: limits) }
        #expect(error == .headerLineTooLong(limit: 16))
    }

    @Test("a content-length beyond the frame limit fails before the body arrives")
    func frameTooLargeWithContentLength() {
        let limits = STOMPDecoderLimits(maxFrameBytes: 100)
        let error = decodingError { _ = try decodeAll("SEND\ncontent-length:200\n\nabc", limits: limits) }
        #expect(error == .frameTooLarge(limit: 100))
    }

    @Test("body limit: with content-length, without (complete and still arriving), and at the limit")
    func bodyTooLarge() throws {
        let limits = STOMPDecoderLimits(maxFrameBytes: 1000, maxBodyBytes: 10)
        #expect(decodingError { _ = try decodeAll("SEND\ncontent-length:11\n\n", limits: limits) } == .bodyTooLarge(limit: 10))
        #expect(decodingError { _ = try decodeAll("SEND\n\n\(String(repeating: "b", count: 11))\u{0}", limits: limits) } == .bodyTooLarge(limit: 10))
        #expect(decodingError { _ = try decodeAll("SEND\n\n\(String(repeating: "b", count: 11))", limits: limits) } == .bodyTooLarge(limit: 10))
        #expect(try decodeOne("SEND\n\n\(String(repeating: "b", count: 10))\u{0}", limits: limits).body.readableBytes == 10)
    }

    @Test("header block limit: complete and still arriving; at the limit passes")
    func headersTooLarge() throws {
        let limits = STOMPDecoderLimits(maxFrameBytes: 1000, maxHeaders: 64, maxHeaderLineBytes: 100, maxHeaderBytes: 40)
        let headers = (0..<5).map { "h\($0):vvvvvvvv\n" }.joined()  // 5 × 12 bytes
        #expect(decodingError { _ = try decodeAll("SEND\n\(headers)\n\u{0}", limits: limits) } == .headersTooLarge(limit: 40))
        #expect(decodingError { _ = try decodeAll("SEND\n\(headers)", limits: limits) } == .headersTooLarge(limit: 40))
        #expect(decodingError { _ = try decodeAll("SEND\nh0:\(String(repeating: "v", count: 60))", limits: limits) } == .headersTooLarge(limit: 40))
        #expect(try decodeOne("SEND\nh0:vvvvvvvv\nh1:vvvvvvvv\n\n\u{0}", limits: limits).headers.count == 2)
    }

    @Test("a content-length body within the limit passes")
    func contentLengthWithinLimit() throws {
        let limits = STOMPDecoderLimits(maxFrameBytes: 100)
        let body = String(repeating: "b", count: 60)
        let frame = try decodeOne("SEND\ncontent-length:60\n\n\(body)\u{0}", limits: limits)
        #expect(frame.bodyString == body)
    }

    @Test("a body without content-length and no NUL yet fails once past the limit")
    func frameTooLargeWithoutContentLengthIncomplete() {
        let limits = STOMPDecoderLimits(maxFrameBytes: 100)
        let error = decodingError { _ = try decodeAll("SEND\n\n" + String(repeating: "x", count: 200), limits: limits) }
        #expect(error == .frameTooLarge(limit: 100))
    }

    @Test("a complete over-size frame without content-length fails however it is fed", arguments: [1, 7, 64, 10_000])
    func frameTooLargeWithoutContentLengthComplete(_ chunk: Int) {
        let limits = STOMPDecoderLimits(maxFrameBytes: 100)
        let wire = ByteBuffer(string: "SEND\n\n" + String(repeating: "x", count: 200) + "\u{0}")
        let error = decodingError { _ = try decodeChunked(wire, chunk: chunk, limits: limits) }
        #expect(error == .frameTooLarge(limit: 100))
    }

    @Test("a complete over-size frame with content-length fails however it is fed", arguments: [1, 7, 64, 10_000])
    func frameTooLargeWithContentLengthComplete(_ chunk: Int) {
        let limits = STOMPDecoderLimits(maxFrameBytes: 100)
        let wire = ByteBuffer(string: "SEND\ncontent-length:200\n\n" + String(repeating: "x", count: 200) + "\u{0}")
        let error = decodingError { _ = try decodeChunked(wire, chunk: chunk, limits: limits) }
        #expect(error == .frameTooLarge(limit: 100))
    }

    @Test("a header block that never ends fails as too large", arguments: [1, 13, 10_000])
    func headerBlockNeverEnds(_ chunk: Int) {
        let limits = STOMPDecoderLimits(maxFrameBytes: 100, maxHeaders: 10_000, maxHeaderLineBytes: 50)
        var text = "SEND\n"
        for i in 0..<40 { text += "h\(i):v\n" }
        let error = decodingError { _ = try decodeChunked(ByteBuffer(string: text), chunk: chunk, limits: limits) }
        #expect(error == .frameTooLarge(limit: 100))
    }

    @Test("limits apply per frame, not per stream")
    func limitsResetBetweenFrames() throws {
        let limits = STOMPDecoderLimits(maxFrameBytes: 64, maxHeaders: 2)
        var text = ""
        for i in 0..<20 { text += "SEND\na:\(i)\nb:x\n\n" + String(repeating: "y", count: 30) + "\u{0}" }
        for chunk in [1, 5, 1000] {
            let (frames, rest) = try decodeChunked(ByteBuffer(string: text), chunk: chunk, limits: limits)
            #expect(frames.count == 20, "chunk \(chunk)")
            #expect(frames.last?.headers["a"] == "19")
            #expect(rest.readableBytes == 0)
        }
    }

    /// A small body decoded from a large input (padding of heart-beat EOLs after it, or other
    /// frames) is copied: a slice would keep the whole input alive in history or a transaction,
    /// where limits count the body's bytes only. A body that is most of its input stays a slice.
    @Test("a small body does not pin a large input; a large one is not copied")
    func smallBodyDoesNotPinItsInput() throws {
        let padded = ByteBuffer(string: "SEND\ndestination:/topic/a\n\nx\u{0}" + String(repeating: "\n", count: 200_000))
        let (frames, _) = try decodeAll(padded)
        let small = try #require(frames.first?.body)
        #expect(String(buffer: small) == "x")
        #expect(small.storageCapacity < 4096, "storage kept: \(small.storageCapacity) bytes")

        let big = String(repeating: "b", count: 100_000)
        let (whole, _) = try decodeAll(ByteBuffer(string: "SEND\ndestination:/topic/a\n\n\(big)\u{0}"))
        let body = try #require(whole.first?.body)
        #expect(String(buffer: body) == big)
        #expect(body.storageCapacity >= 100_000)
        var input = ByteBuffer(string: "SEND\ndestination:/topic/a\n\n\(big)\u{0}")
        let inputStorage = input.storageCapacity
        var decoder = STOMPFrameDecoder()
        let frame = try #require(try decoder.decodeFrame(&input))
        // The same storage: a slice, no copy.
        frame.body.withUnsafeReadableBytes { bodyBytes in
            input.withVeryUnsafeBytes { all in
                #expect(bodyBytes.baseAddress! >= all.baseAddress! && bodyBytes.baseAddress! < all.baseAddress! + inputStorage)
            }
        }
    }

    /// A small frame padded with heart-beat EOLs to just under 4 KiB (one WebSocket message
    /// each): its body kept the whole input alive, 40 times its size, in a transaction or the
    /// history, which count far less. It is copied now.
    @Test("a small body padded to just under 4 KiB does not keep the padding")
    func aSmallBodyPaddedUnder4KiBIsCopied() throws {
        var input = ByteBuffer(string: "SEND\ndestination:/topic/a\n\nx\u{0}" + String(repeating: "\n", count: 4_000))
        var decoder = STOMPFrameDecoder()
        let frame = try #require(try decoder.decodeFrame(&input))
        #expect(String(buffer: frame.body) == "x")
        #expect(frame.body.storageCapacity <= 1_024, "storage kept: \(frame.body.storageCapacity) bytes")
    }
}
