// libFuzzer target: the RESP2/RESP3 parser (Sources/RedisClient/RESP).
//
// Input layout: byte 0 is a control byte, the rest is what a "server" sent.
//   bits 0-4  chunk size (1...32 bytes) for the split feed
//   bit  5    small limits (depth 8, bulk 256, line 64) instead of the defaults
//
// Checked properties:
//   1. RESPParser.next never crashes/traps/hangs, whole or split feed, and both feeds give the
//      same tokens and fail iff the other fails.
//   2. The tokens are exactly the consumed prefix of the input, back to back.
//   3. Every token re-validates on its own (`RESPToken(validating:)`) to an equal token.
//   4. Walking every token's `value` recursively (arrays, sets, pushes, maps, attributes),
//      `description` and the RESPTokenDecodable conversions never trap, and aggregate
//      views yield exactly `count` elements.
import NIOCore
import Redis

private let smallLimits = RESPParserLimits(maxDepth: 8, maxBulkLength: 256, maxLineLength: 64)

private struct Outcome {
    var tokens: [RESPToken] = []
    var consumed = 0
    var failed = false
}

private func parseAll(_ data: UnsafeRawBufferPointer, chunk: Int, limits: RESPParserLimits) -> Outcome {
    var parser = RESPParser(limits: limits)
    var buffer = ByteBuffer()
    var outcome = Outcome()
    var offset = 0
    repeat {
        let end = min(offset + chunk, data.count)
        buffer.writeBytes(UnsafeRawBufferPointer(rebasing: data[offset..<end]))
        offset = end
        do throws(RESPParsingError) {
            while let token = try parser.next(from: &buffer) {
                outcome.consumed += token.base.readableBytes
                outcome.tokens.append(token)
            }
        } catch {
            _ = error.description
            outcome.failed = true
            return outcome
        }
    } while offset < data.count
    return outcome
}

private func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() {
        fatalError("FuzzRESPParser property violated: \(message())")
    }
}

private func walk(_ token: RESPToken, depth: Int) {
    check(depth < 10_000, "runaway nesting")
    if let attributes = token.attributes {
        var n = 0
        for (k, v) in attributes {
            walk(k, depth: depth + 1)
            walk(v, depth: depth + 1)
            n += 1
        }
        check(n == attributes.count, "attribute map yielded \(n) pairs, count \(attributes.count)")
    }
    switch token.value {
    case .simpleString(let b), .simpleError(let b), .bulkString(let b), .verbatimString(let b), .bigNumber(let b), .bulkError(let b):
        _ = String(buffer: b)
    case .number(let n):
        _ = n.description
    case .double(let d):
        _ = d.description
    case .boolean(let b):
        _ = b.description
    case .null:
        break
    case .array(let a), .set(let a), .push(let a):
        var n = 0
        for element in a {
            walk(element, depth: depth + 1)
            n += 1
        }
        check(n == a.count, "aggregate yielded \(n) elements, count \(a.count)")
        _ = try? a.decode(as: RESPToken.self)
    case .map(let m):
        var n = 0
        for (k, v) in m {
            walk(k, depth: depth + 1)
            walk(v, depth: depth + 1)
            n += 1
        }
        check(n == m.count, "map yielded \(n) pairs, count \(m.count)")
        _ = m["key"]
    }
    // The typed decoders the client uses on replies.
    _ = try? String(fromRESP: token)
    _ = try? Int64(fromRESP: token)
    _ = try? Int(fromRESP: token)
    _ = try? Double(fromRESP: token)
    _ = try? Bool(fromRESP: token)
    _ = try? ByteBuffer(fromRESP: token)
    _ = try? RedisOK(fromRESP: token)
    _ = try? [String](fromRESP: token)
    _ = try? String?(fromRESP: token)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    guard count > 0 else { return 0 }
    let input = UnsafeRawBufferPointer(start: start, count: count)
    let control = input[0]
    let data = UnsafeRawBufferPointer(rebasing: input[1...])
    let chunk = Int(control & 0x1F) + 1
    let limits = control & 0x20 != 0 ? smallLimits : RESPParserLimits()

    let whole = parseAll(data, chunk: max(data.count, 1), limits: limits)
    let split = parseAll(data, chunk: chunk, limits: limits)
    check(whole.tokens == split.tokens, "whole feed gave \(whole.tokens.count) tokens, split feed (chunk \(chunk)) \(split.tokens.count) or different ones")
    check(whole.failed == split.failed, "whole feed failed: \(whole.failed), split feed (chunk \(chunk)) failed: \(split.failed)")

    var offset = 0
    for token in whole.tokens {
        check(
            token.base.readableBytesView.elementsEqual(UnsafeRawBufferPointer(rebasing: data[offset..<(offset + token.base.readableBytes)])),
            "token bytes are not the input at offset \(offset)")
        offset += token.base.readableBytes
        do {
            let again = try RESPToken(validating: token.base, limits: limits)
            check(again == token, "re-validated token differs")
        } catch {
            fatalError("FuzzRESPParser: token \(token.base.readableBytes) bytes at offset \(offset) does not re-validate: \(error)")
        }
        walk(token, depth: 0)
        _ = token.description
    }
    return 0
}
