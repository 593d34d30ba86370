import NIOCore
import STOMPCodec
import Testing

/// Decodes every complete frame in `input` (fed in one buffer) and returns them with the
/// bytes left over.
func decodeAll(
    _ input: ByteBuffer,
    limits: STOMPDecoderLimits = STOMPDecoderLimits(),
    escapeHeaders: Bool = true
) throws(STOMPDecodingError) -> (frames: [STOMPFrame], rest: ByteBuffer) {
    var decoder = STOMPFrameDecoder(limits: limits, escapeHeaders: escapeHeaders)
    var buffer = input
    var frames: [STOMPFrame] = []
    while let frame = try decoder.decodeFrame(&buffer) {
        frames.append(frame)
    }
    return (frames, buffer)
}

func decodeAll(
    _ input: String,
    limits: STOMPDecoderLimits = STOMPDecoderLimits(),
    escapeHeaders: Bool = true
) throws(STOMPDecodingError) -> [STOMPFrame] {
    try decodeAll(ByteBuffer(string: input), limits: limits, escapeHeaders: escapeHeaders).frames
}

/// Decodes exactly one frame from `input`, recording an issue if there is not exactly one.
func decodeOne(
    _ input: String,
    limits: STOMPDecoderLimits = STOMPDecoderLimits(),
    escapeHeaders: Bool = true,
    sourceLocation: SourceLocation = #_sourceLocation
) throws -> STOMPFrame {
    let frames = try decodeAll(input, limits: limits, escapeHeaders: escapeHeaders)
    try #require(frames.count == 1, "expected one frame, got \(frames.count)", sourceLocation: sourceLocation)
    return frames[0]
}

/// Feeds `input` to one decoder in slices of `chunk` bytes, collecting frames.
func decodeChunked(
    _ input: ByteBuffer,
    chunk: Int,
    limits: STOMPDecoderLimits = STOMPDecoderLimits()
) throws(STOMPDecodingError) -> (frames: [STOMPFrame], rest: ByteBuffer) {
    var decoder = STOMPFrameDecoder(limits: limits)
    var cumulation = ByteBuffer()
    var source = input
    var frames: [STOMPFrame] = []
    while source.readableBytes > 0 {
        var piece = source.readSlice(length: min(chunk, source.readableBytes))!
        cumulation.writeBuffer(&piece)
        while let frame = try decoder.decodeFrame(&cumulation) {
            frames.append(frame)
        }
    }
    return (frames, cumulation)
}

/// The headers of a frame as an array of pairs, for order-sensitive comparisons.
func pairs(_ headers: STOMPHeaders) -> [String] {
    headers.map { "\($0.name)=\($0.value)" }
}

/// Runs `body` and returns the `STOMPDecodingError` it throws (nil if none).
func decodingError(_ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) -> STOMPDecodingError? {
    do {
        try body()
        return nil
    } catch let error as STOMPDecodingError {
        return error
    } catch {
        Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

/// The bytes of `buffer` as a string with control characters made visible.
func visible(_ buffer: ByteBuffer) -> String {
    var out = ""
    for b in buffer.readableBytesView {
        switch b {
        case 0: out += "^@"
        case UInt8(ascii: "\n"): out += "\\n"
        case UInt8(ascii: "\r"): out += "\\r"
        default: out.unicodeScalars.append(Unicode.Scalar(b))
        }
    }
    return out
}
