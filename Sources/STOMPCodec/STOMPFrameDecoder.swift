import NIOCore

/// Limits the decoder enforces. Exceeding one is a ``STOMPDecodingError``.
public struct STOMPDecoderLimits: Sendable, Hashable {
    /// Largest frame, header block plus body, in bytes.
    public var maxFrameBytes: Int
    /// Most header lines in one frame (repeats included).
    public var maxHeaders: Int
    /// Longest single header line, in bytes.
    public var maxHeaderLineBytes: Int
    /// Largest header block (command line and all headers), in bytes.
    public var maxHeaderBytes: Int
    /// Largest body, in bytes.
    public var maxBodyBytes: Int

    public init(
        maxFrameBytes: Int = 256 * 1024, maxHeaders: Int = 64, maxHeaderLineBytes: Int = 8 * 1024,
        maxHeaderBytes: Int = 64 * 1024, maxBodyBytes: Int? = nil
    ) {
        self.maxFrameBytes = maxFrameBytes
        self.maxHeaders = maxHeaders
        self.maxHeaderLineBytes = maxHeaderLineBytes
        self.maxHeaderBytes = maxHeaderBytes
        self.maxBodyBytes = maxBodyBytes ?? maxFrameBytes
    }
}

/// Incremental STOMP frame decoder over a `ByteBuffer`.
///
/// - EOLs between frames (heart-beats) are skipped; both `LF` and `CRLF` end lines. So are
///   NUL octets between frames (a stray extra NUL after a frame's own, as some clients send):
///   they carry nothing, and a frame never starts with one.
/// - Header names and values are unescaped when ``escapeHeaders`` is on, except in
///   `CONNECT`, `STOMP` and `CONNECTED` frames; an undefined escape is an error (`\r` too
///   without ``escapeCarriageReturn``: STOMP 1.1). A header that is not UTF-8 is an error.
/// - Repeated headers are all kept, in order; values are never trimmed.
/// - `content-length` is honoured (bodies may contain NUL); without it the body ends at
///   the first NUL.
/// - Work is resumable: bytes already scanned are not scanned again when more arrive,
///   so feeding one byte at a time stays linear.
/// - The body of a decoded frame is a slice of the input buffer (no copy), unless that buffer
///   holds much more than the body (other frames, padding of heart-beat EOLs): then the body is
///   copied, so that a kept body (history, a transaction) does not keep the whole input alive
///   while limits count only the body's bytes.
public struct STOMPFrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = STOMPFrame

    public var limits: STOMPDecoderLimits
    /// Whether header escaping is in force (STOMP 1.1 and later). The gateway switches it off
    /// once a session negotiates 1.0.
    public var escapeHeaders: Bool
    /// Whether the `\r` escape is defined (STOMP 1.2; in 1.1 it is an undefined escape, an
    /// error). Only with ``escapeHeaders``.
    public var escapeCarriageReturn = true

    /// Start of the header line not yet seen complete, relative to the reader index.
    private var lineStart = 0
    private var headerLinesSeen = 0
    private var pending: PendingBody?

    private struct PendingBody {
        var command: STOMPCommand
        var headers: STOMPHeaders
        var headerBytes: Int
        var contentLength: Int?
        var bodyScanned: Int
    }

    public init(limits: STOMPDecoderLimits = STOMPDecoderLimits(), escapeHeaders: Bool = true) {
        self.limits = limits
        self.escapeHeaders = escapeHeaders
    }

    /// Decodes the next complete frame, consuming its bytes, or returns nil if more bytes
    /// are needed (partial input is left in `buffer`).
    public mutating func decodeFrame(_ buffer: inout ByteBuffer) throws(STOMPDecodingError) -> STOMPFrame? {
        if pending == nil {
            guard skipHeartBeats(&buffer) else { return nil }
            guard let headerEnd = try scanHeaderBlock(buffer) else { return nil }
            pending = try parseHeaderBlock(buffer, length: headerEnd)
        }
        return try decodeBody(&buffer)
    }

    /// Consumes leading EOLs and NULs. Returns false when the buffer holds nothing else yet.
    private func skipHeartBeats(_ buffer: inout ByteBuffer) -> Bool {
        while let b = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) {
            if b == UInt8(ascii: "\n") || b == 0 {
                buffer.moveReaderIndex(forwardBy: 1)
            } else if b == UInt8(ascii: "\r") {
                guard let next = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt8.self) else { return false }
                guard next == UInt8(ascii: "\n") else { return true }
                buffer.moveReaderIndex(forwardBy: 2)
            } else {
                return true
            }
        }
        return false
    }

    /// Finds the blank line ending the header block; returns its end offset or nil.
    private mutating func scanHeaderBlock(_ buffer: ByteBuffer) throws(STOMPDecodingError) -> Int? {
        let limits = self.limits
        var lineStart = self.lineStart
        var lines = self.headerLinesSeen
        let result: Result<Int?, STOMPDecodingError> = buffer.withUnsafeReadableBytes { bytes in
            while true {
                guard let nl = bytes[lineStart...].firstIndex(of: UInt8(ascii: "\n")) else {
                    // A trailing CR may be the first half of a CRLF: it does not count yet,
                    // so the verdict does not depend on where the input was split.
                    let pendingCR = bytes.count > lineStart && bytes[bytes.count - 1] == UInt8(ascii: "\r") ? 1 : 0
                    if bytes.count - pendingCR - lineStart > limits.maxHeaderLineBytes { return .failure(.headerLineTooLong(limit: limits.maxHeaderLineBytes)) }
                    if bytes.count - pendingCR > limits.maxHeaderBytes { return .failure(.headersTooLarge(limit: limits.maxHeaderBytes)) }
                    if bytes.count - pendingCR > limits.maxFrameBytes { return .failure(.frameTooLarge(limit: limits.maxFrameBytes)) }
                    return .success(nil)
                }
                var lineEnd = nl
                if lineEnd > lineStart && bytes[lineEnd - 1] == UInt8(ascii: "\r") { lineEnd -= 1 }
                if lineEnd == lineStart && lineStart > 0 {
                    return .success(nl + 1)
                }
                if lineEnd - lineStart > limits.maxHeaderLineBytes { return .failure(.headerLineTooLong(limit: limits.maxHeaderLineBytes)) }
                lines += 1
                // The first line is the command; the rest are headers.
                if lines - 1 > limits.maxHeaders { return .failure(.tooManyHeaders(limit: limits.maxHeaders)) }
                lineStart = nl + 1
                if lineStart > limits.maxHeaderBytes { return .failure(.headersTooLarge(limit: limits.maxHeaderBytes)) }
                if lineStart > limits.maxFrameBytes { return .failure(.frameTooLarge(limit: limits.maxFrameBytes)) }
            }
        }
        self.lineStart = lineStart
        self.headerLinesSeen = lines
        return try result.get()
    }

    /// Parses the command line and headers of a complete header block.
    private func parseHeaderBlock(_ buffer: ByteBuffer, length: Int) throws(STOMPDecodingError) -> PendingBody {
        let escape = self.escapeHeaders
        let escapeCR = self.escapeCarriageReturn
        let result: Result<PendingBody, STOMPDecodingError> = buffer.withUnsafeReadableBytes { all in
            let bytes = UnsafeRawBufferPointer(rebasing: all[0..<length])
            var start = 0
            var command: STOMPCommand?
            var headers = STOMPHeaders()
            headers.storage.reserveCapacity(8)
            while start < bytes.count, let nl = bytes[start...].firstIndex(of: UInt8(ascii: "\n")) {
                var end = nl
                if end > start && bytes[end - 1] == UInt8(ascii: "\r") { end -= 1 }
                defer { start = nl + 1 }
                if end == start { break }  // the blank line
                let line = UnsafeRawBufferPointer(rebasing: bytes[start..<end])
                guard let cmd = command else {
                    guard let c = STOMPCommand(bytes: line) else {
                        return .failure(.unknownCommand(String(decoding: line, as: UTF8.self)))
                    }
                    command = c
                    continue
                }
                // `header-name = 1*<any OCTET except CR or LF or ":">`: a name is never empty.
                guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon != line.startIndex else {
                    return .failure(STOMPDecodingError.malformedHeaderLine(String(decoding: line, as: UTF8.self)).receipt(headers["receipt"]))
                }
                let name = UnsafeRawBufferPointer(rebasing: line[line.startIndex..<colon])
                let value = UnsafeRawBufferPointer(rebasing: line[(colon + 1)...])
                do throws(STOMPDecodingError) {
                    if escape && cmd.usesHeaderEscaping {
                        headers.add(
                            try STOMPHeaderEscaping.unescape(name, carriageReturn: escapeCR),
                            try STOMPHeaderEscaping.unescape(value, carriageReturn: escapeCR))
                    } else {
                        headers.add(try STOMPHeaderEscaping.utf8(name), try STOMPHeaderEscaping.utf8(value))
                    }
                } catch {
                    return .failure(error.receipt(headers["receipt"]))
                }
            }
            guard let command else { return .failure(.unknownCommand("")) }
            var contentLength: Int?
            if let raw = headers["content-length"] {
                guard !raw.isEmpty, raw.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }), let n = Int(raw) else {
                    return .failure(STOMPDecodingError.invalidContentLength(raw).receipt(headers["receipt"]))
                }
                contentLength = n
            }
            return .success(PendingBody(command: command, headers: headers, headerBytes: length, contentLength: contentLength, bodyScanned: 0))
        }
        return try result.get()
    }

    /// Completes the pending frame once its body and NUL are buffered.
    private mutating func decodeBody(_ buffer: inout ByteBuffer) throws(STOMPDecodingError) -> STOMPFrame? {
        do {
            return try self.decodePendingBody(&buffer)
        } catch {
            throw error.receipt(pending?.headers["receipt"])
        }
    }

    private mutating func decodePendingBody(_ buffer: inout ByteBuffer) throws(STOMPDecodingError) -> STOMPFrame? {
        guard var p = pending else { return nil }
        let available = buffer.readableBytes - p.headerBytes
        let bodyLength: Int
        if let n = p.contentLength {
            if n > limits.maxFrameBytes - p.headerBytes { throw .frameTooLarge(limit: limits.maxFrameBytes) }
            if n > limits.maxBodyBytes { throw .bodyTooLarge(limit: limits.maxBodyBytes) }
            guard available > n else { return nil }
            guard buffer.getInteger(at: buffer.readerIndex + p.headerBytes + n, as: UInt8.self) == 0 else {
                throw .missingNullTerminator
            }
            bodyLength = n
        } else {
            let from = p.headerBytes + p.bodyScanned
            let found: Int? = buffer.withUnsafeReadableBytes { bytes in
                bytes[from...].firstIndex(of: 0)
            }
            guard let nul = found else {
                p.bodyScanned = available
                pending = p
                if buffer.readableBytes > limits.maxFrameBytes { throw .frameTooLarge(limit: limits.maxFrameBytes) }
                if available > limits.maxBodyBytes { throw .bodyTooLarge(limit: limits.maxBodyBytes) }
                return nil
            }
            // A frame that arrived whole must obey the limit too, not only one still arriving.
            if nul > limits.maxFrameBytes { throw .frameTooLarge(limit: limits.maxFrameBytes) }
            if nul - p.headerBytes > limits.maxBodyBytes { throw .bodyTooLarge(limit: limits.maxBodyBytes) }
            bodyLength = nul - p.headerBytes
        }
        buffer.moveReaderIndex(forwardBy: p.headerBytes)
        var body = buffer.readSlice(length: bodyLength)!
        if Self.wouldPin(body) { body = ByteBuffer(bytes: body.readableBytesView) }
        buffer.moveReaderIndex(forwardBy: 1)
        pending = nil
        lineStart = 0
        headerLinesSeen = 0
        return STOMPFrame(p.command, headers: p.headers, body: body)
    }

    // MARK: ByteToMessageDecoder

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try decodeFrame(&buffer) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }
}

extension STOMPFrameDecoder {
    /// Whether a body slice would keep alive much more storage than its own bytes: more than
    /// 1 KiB and more than the body itself besides. (It was 4 KiB: a small frame padded with
    /// heart-beat EOLs to just under 4 KiB of WebSocket message kept all of it.) A body that is
    /// most of its input stays a slice (buffers are allocated in powers of two: up to as much
    /// again is rounding).
    static func wouldPin(_ body: ByteBuffer) -> Bool {
        let extra = body.storageCapacity - body.readableBytes
        return extra > 1024 && extra > body.readableBytes
    }
}
