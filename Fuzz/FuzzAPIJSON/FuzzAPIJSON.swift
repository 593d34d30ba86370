// libFuzzer target: validation of `POST /api/notification` bodies
// (NotificationRequest.parse in Sources/SwitchboardAPIModel).
//
// The input is the raw request body. Checked properties:
//   1. parse never crashes/traps/hangs, whatever the bytes (invalid UTF-8, deep nesting,
//      huge numbers, duplicate keys ...).
//   2. A rejection is a 4xx with a non-empty message; `field` is nil or one of the
//      request's field names.
//   3. An accepted request has a non-empty topic that the topic policy allowed and that
//      holds no wildcard; its headers hold no reserved STOMP header, and end with exactly
//      one non-empty `content-type`.
import NIOCore
import STOMPCodec
import SwitchboardAPIModel

private let reserved: Set<String> = [
    "destination", "message-id", "subscription", "ack", "content-length", "receipt", "transaction", "receipt-id",
]
private let fields: Set<String> = ["topic", "message", "headers", "contentType"]

private func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() {
        fatalError("FuzzAPIJSON property violated: \(message())")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let body = ByteBuffer(bytes: UnsafeRawBufferPointer(start: start, count: count))
    do {
        let request = try NotificationRequest.parse(body) { topic in
            topic.hasPrefix("/topic/") ? nil : "must start with /topic/"
        }
        check(!request.topic.isEmpty && request.topic.hasPrefix("/topic/"), "accepted topic \(request.topic)")
        check(!request.topic.contains("*"), "accepted wildcard topic \(request.topic)")
        let names = request.headers.map(\.name)
        check(names.last == "content-type", "content-type is not the last header: \(names)")
        check(names.filter { $0 == "content-type" }.count == 1, "content-type repeated: \(names)")
        check(!(request.headers["content-type"] ?? "").isEmpty, "empty content-type")
        for name in names {
            check(!reserved.contains(name), "reserved header \(name) passed through")
        }
        // The accepted request must be publishable: encode it as a STOMP MESSAGE.
        var frame = STOMPFrame(.message, headers: request.headers, body: request.body)
        frame.headers.add("destination", request.topic)
        _ = STOMPFrameEncoder.encode(frame, escapeHeaders: true)
    } catch {
        check((400..<500).contains(error.status), "status \(error.status)")
        check(!error.message.isEmpty, "empty error message")
        if let field = error.field {
            check(fields.contains(field), "unknown field \(field)")
        }
    }
    return 0
}
