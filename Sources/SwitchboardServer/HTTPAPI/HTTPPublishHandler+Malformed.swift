import NIOCore
import NIOHTTP1

/// Malformed bytes and requests cut off: what is still owed and what is dropped.
extension HTTPPublishHandler {
    /// Drops the held parts of a request whose end never came (cut off by malformed bytes).
    func dropIncompleteHeldRequest() {
        guard let lastHead = held.lastIndex(where: { if case .head = $0 { true } else { false } }) else { return }
        if held[lastHead...].contains(where: { if case .end = $0 { true } else { false } }) { return }
        let keep = held.distance(from: held.startIndex, to: lastHead)
        while held.count > keep { held.removeLast() }
        // Not being read any more: its time limit must not close the connection before the
        // answers still owed.
        idle.stoppedReading()
    }

    /// Forgets the request being read (its head arrived, not its end): no answer is owed for it.
    func dropIncompleteRequest() {
        if case .answering(let answer, _, _, _) = current, answers.last === answer { answers.removeLast() }
        current = .none
    }

    func closeIfDone(context: ChannelHandlerContext) {
        guard inputClosed, !taskOpen, !closing, answers.isEmpty else { return }
        closing = true
        context.close(promise: nil)
    }

    /// Malformed HTTP (the parser's error; NIO's own handler, which would answer an empty 400
    /// at once, is not installed). The 400 is one more answer, after those owed for the requests
    /// before it, in order (the router's too, when its task serves the connection); then the
    /// connection closes. The error does not go on to the router's task: it would answer a
    /// second, empty 400.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let parserError = error as? HTTPParserError else {
            // The parser's later complaints about bytes after its error.
            if malformed || refused || lingering, error is ByteToMessageDecoderError { return }
            context.fireErrorCaught(error)
            return
        }
        // After a refusal the connection ends with its answer: bytes after it are not requests.
        guard !malformed, !refused else { return }
        malformed = true
        // Requests held (waiting for the answers before them) that arrived whole are answered
        // before the 400; one cut off by the bad bytes is the bad one.
        dropIncompleteHeldRequest()
        if !taskOpen, !held.isEmpty {
            // The held requests go to the router once the answers before them are written,
            // and the 400 follows the router's answers (``writeMalformedIfDue()``).
            dropIncompleteRequest()
            malformedAfterRouter = Answer(malformed: parserError)
            inReadBatch = false
            writeAnswers()
            context.flush()
            return
        }
        if !taskOpen {
            // The request being read is the bad one: the 400 is its answer.
            dropIncompleteRequest()
            answers.append(Answer(malformed: parserError))
            inReadBatch = false
            writeAnswers()
            context.flush()
            return
        }
        // The router's task serves the connection. A forwarded request cut off by the bad bytes
        // is the bad one: the router cannot answer it.
        if !held.isEmpty {
            // Held whole requests go on after the answers before them (the request read when
            // the first was held was complete).
        } else if case .forwarding = current {
            abandonedForward = true
            current = .none
        } else {
            dropIncompleteRequest()
        }
        malformedAfterRouter = Answer(malformed: parserError)
        inReadBatch = false
        writeMalformedIfDue()
        context.flush()
    }

    /// Writes the 400 for malformed bytes once the router has answered the requests before them
    /// (held ones too).
    func writeMalformedIfDue() {
        guard let answer = malformedAfterRouter, routerOwesNothing, held.isEmpty, !closing else { return }
        malformedAfterRouter = nil
        answers.append(answer)
        writeAnswers()
    }
}
