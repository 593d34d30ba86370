// libFuzzer target: the STOMP frame decoder (Sources/STOMPCodec).
//
// Input layout: byte 0 is a control byte, the rest is the STOMP byte stream.
//   bits 0-4  chunk size (1...32 bytes) for the split feed
//   bit  5    compact the buffer (discardReadBytes) between chunks, as ByteToMessageHandler may
//   bit  6-7  which small limit set to use
//
// Checked properties (a violation traps, which libFuzzer reports as a crash):
//   1. No crash, trap or hang in STOMPFrameDecoder for any input, either escape mode.
//   2. Feeding the stream whole or in chunks gives the same frames, and fails iff the other fails.
//   3. Every decoded frame obeys the limits (frame bytes, header count) and its body is
//      exactly `content-length` bytes when that header is present, else NUL-free.
//   4. Round trip: STOMPFrameEncoder.encode(frame) decodes back to exactly one frame with the
//      same command, headers and body. The encoder writes a NUL in a header as a space, and
//      in unescaped frames (STOMP 1.0, CONNECT, STOMP, CONNECTED) CR/LF too, so the
//      comparison does too.
//   5. An error's description (an ERROR frame's `message` header) holds no control character.
import NIOCore
import STOMPCodec

private let limitSets: [STOMPDecoderLimits] = [
    STOMPDecoderLimits(maxFrameBytes: 512, maxHeaders: 8, maxHeaderLineBytes: 128),
    STOMPDecoderLimits(maxFrameBytes: 64, maxHeaders: 2, maxHeaderLineBytes: 16),
    STOMPDecoderLimits(maxFrameBytes: 4096, maxHeaders: 64, maxHeaderLineBytes: 1024),
    STOMPDecoderLimits(maxFrameBytes: 1, maxHeaders: 0, maxHeaderLineBytes: 1),
]

/// Limits large enough that a re-encoded frame never trips them.
private let roomyLimits = STOMPDecoderLimits(maxFrameBytes: 1 << 20, maxHeaders: 1 << 16, maxHeaderLineBytes: 1 << 20)

private struct Outcome {
    var frames: [STOMPFrame] = []
    var error: STOMPDecodingError?
}

private func decodeAll(_ data: UnsafeRawBufferPointer, chunk: Int, compact: Bool, limits: STOMPDecoderLimits, escape: Bool) -> Outcome {
    var decoder = STOMPFrameDecoder(limits: limits, escapeHeaders: escape)
    var buffer = ByteBufferAllocator().buffer(capacity: 0)
    var outcome = Outcome()
    var offset = 0
    repeat {
        let end = min(offset + chunk, data.count)
        buffer.writeBytes(UnsafeRawBufferPointer(rebasing: data[offset..<end]))
        offset = end
        do throws(STOMPDecodingError) {
            while let frame = try decoder.decodeFrame(&buffer) {
                outcome.frames.append(frame)
            }
        } catch {
            check(
                !error.description.unicodeScalars.contains { $0.properties.generalCategory == .control },
                "control character in error description \(error.description.debugDescription)")
            outcome.error = error
            return outcome
        }
        if compact { buffer.discardReadBytes() }
    } while offset < data.count
    return outcome
}

private func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() {
        fatalError("FuzzSTOMPDecoder property violated: \(message())")
    }
}

/// What a header value looks like after an unescaped encode (CR/LF/NUL written as spaces).
private func flattened(_ s: String) -> String {
    String(decoding: s.utf8.map { $0 == UInt8(ascii: "\n") || $0 == UInt8(ascii: "\r") || $0 == 0 ? UInt8(ascii: " ") : $0 }, as: UTF8.self)
}

/// What a header value looks like after an escaped encode (NUL written as a space).
private func denulled(_ s: String) -> String {
    String(decoding: s.utf8.map { $0 == 0 ? UInt8(ascii: " ") : $0 }, as: UTF8.self)
}

private func checkFrame(_ frame: STOMPFrame, limits: STOMPDecoderLimits, escape: Bool) {
    check(frame.headers.count <= limits.maxHeaders, "\(frame.headers.count) headers > limit \(limits.maxHeaders)")
    check(frame.body.readableBytes <= limits.maxFrameBytes, "body \(frame.body.readableBytes) > frame limit \(limits.maxFrameBytes)")
    if let cl = frame.headers["content-length"] {
        check(Int(cl) == frame.body.readableBytes, "content-length \(cl) but body has \(frame.body.readableBytes) bytes")
    } else {
        check(!frame.body.readableBytesView.contains(0), "body without content-length contains NUL")
    }

    // Round trip through the encoder.
    let escaped = escape && frame.command.usesHeaderEscaping
    var encoded = ByteBuffer()
    STOMPFrameEncoder.encode(frame, escapeHeaders: escape, into: &encoded)
    let encodedLength = encoded.readableBytes
    var decoder = STOMPFrameDecoder(limits: roomyLimits, escapeHeaders: escape)
    let again: STOMPFrame?
    do {
        again = try decoder.decodeFrame(&encoded)
    } catch {
        fatalError("FuzzSTOMPDecoder round trip: re-encoded \(frame.command) frame (\(encodedLength) bytes) fails to decode: \(error)")
    }
    guard let again else {
        fatalError("FuzzSTOMPDecoder round trip: re-encoded \(frame.command) frame is incomplete")
    }
    check(encoded.readableBytes == 0, "round trip left \(encoded.readableBytes) bytes")
    check(again.command == frame.command, "round trip command \(again.command) != \(frame.command)")
    check(again.body == frame.body, "round trip body differs")
    var expected = STOMPHeaders()
    for (name, value) in frame.headers {
        expected.add(escaped ? denulled(name) : flattened(name), escaped ? denulled(value) : flattened(value))
    }
    check(again.headers == expected, "round trip headers \(Array(again.headers)) != \(Array(expected))")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    guard count > 0 else { return 0 }
    let input = UnsafeRawBufferPointer(start: start, count: count)
    let control = input[0]
    let data = UnsafeRawBufferPointer(rebasing: input[1...])
    let chunk = Int(control & 0x1F) + 1
    let compact = control & 0x20 != 0
    let limits = limitSets[Int(control >> 6)]

    for escape in [true, false] {
        let whole = decodeAll(data, chunk: max(data.count, 1), compact: false, limits: limits, escape: escape)
        let split = decodeAll(data, chunk: chunk, compact: compact, limits: limits, escape: escape)
        check(
            whole.frames == split.frames,
            "whole feed gave \(whole.frames.count) frames, split feed (chunk \(chunk)) gave \(split.frames.count) or different ones")
        check(
            (whole.error == nil) == (split.error == nil),
            "whole feed error \(String(describing: whole.error)) vs split feed (chunk \(chunk)) error \(String(describing: split.error))")
        for frame in whole.frames {
            checkFrame(frame, limits: limits, escape: escape)
        }
    }
    return 0
}
