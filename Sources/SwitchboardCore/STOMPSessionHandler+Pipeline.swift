import NIOCore
import STOMPCodec

/// Pipelined SENDs: receipts in frame order without waiting for each confirmation.
///
/// A SEND to a destination whose backend keeps the order of what it is given (a Redis stream
/// or channel route, the Redis broker: their commands go out in order on one connection) does
/// not hold up the session. It joins ``STOMPSessionHandler/pipeline`` and the next frame is
/// read at once; receipts still go out strictly in frame order, as the oldest steps complete.
/// A failed step ends the session with an `ERROR` for that frame once every older step has
/// been answered. Any other frame waits until the pipeline is empty, and reading from the
/// socket pauses while `SessionConfiguration.maxPipelinedSends` steps are unconfirmed.
extension STOMPSessionHandler {
    /// One pipelined SEND: the frame (for its receipt or error) and, once known, how it ended.
    struct PipelinedSend {
        enum Outcome {
            case done
            case failed(String, SessionErrorKind)
        }
        let frame: STOMPFrame
        var outcome: Outcome?
    }

    /// Whether `frame` may be handled now rather than queued: nothing runs serially, and
    /// either nothing is pipelined or `frame` can join the pipeline.
    func canHandleNow(_ frame: STOMPFrame) -> Bool {
        guard !inFlight else { return false }
        if pipeline.isEmpty { return true }
        return pipeline.count < config.maxPipelinedSends && isPipelinable(frame)
    }

    /// Whether socket reads wait: a serial step runs, frames are queued, or the pipeline is full.
    var readsPaused: Bool { inFlight || !queued.isEmpty || pipeline.count >= config.maxPipelinedSends }

    /// Whether a session is waiting on something (serial step or pipelined SENDs).
    var isBusy: Bool { inFlight || !pipeline.isEmpty }

    /// A valid SEND outside a transaction to a destination whose backend keeps order. A SEND
    /// that will be refused is not: its `ERROR` must come after the receipts before it.
    func isPipelinable(_ frame: STOMPFrame) -> Bool {
        guard frame.command == .send, state == .connected, frame.headers["transaction"] == nil,
              let destination = frame.headers["destination"] else { return false }
        if let policy = config.accessPolicy, !policy.maySend(destination, identity: identity) { return false }
        if config.isBrokerDestination(destination) { return !destination.contains("*") }
        if config.isApplicationDestination(destination) {
            return services.routes.route(for: destination)?.keepsOrderWhenPipelined ?? false
        }
        return false
    }

    /// Adds a SEND that is already complete (a synchronous publish) behind the pipelined ones,
    /// so its receipt does not overtake theirs; answers it at once when nothing is pipelined.
    func completeSend(_ frame: STOMPFrame) {
        if pipeline.isEmpty {
            sendReceipt(for: frame)
        } else {
            pipeline.append(PipelinedSend(frame: frame, outcome: .done))
        }
    }

    /// Starts a pipelined step: `future` completes it; `onSuccess` runs when it succeeds.
    func pipelineStep<T: Sendable>(_ future: EventLoopFuture<T>, for frame: STOMPFrame, kind: SessionErrorKind = .route,
                                   describe: @escaping (any Error) -> String, onSuccess: @escaping (T) -> Void) {
        let sequence = pipelineBase &+ UInt64(pipeline.count)
        pipeline.append(PipelinedSend(frame: frame))
        let loop = shard.eventLoop
        let bound = NIOLoopBound((handler: self, describe: describe, onSuccess: onSuccess), eventLoop: loop)
        future.hop(to: loop).whenComplete { result in
            let (handler, describe, onSuccess) = bound.value
            guard handler.state != .closing, sequence >= handler.pipelineBase else { return }
            let index = handler.pipeline.index(handler.pipeline.startIndex, offsetBy: Int(sequence - handler.pipelineBase))
            switch result {
            case .success(let value):
                onSuccess(value)
                handler.pipeline[index].outcome = .done
            case .failure(let error):
                handler.pipeline[index].outcome = .failed(describe(error), kind)
            }
            handler.answerCompletedSends()
        }
    }

    /// Sends the receipts (or the first error) of the oldest completed steps, then goes on
    /// with queued frames. Flushes once per loop tick through the shard.
    func answerCompletedSends() {
        while let head = pipeline.first, let outcome = head.outcome {
            pipeline.removeFirst()
            pipelineBase &+= 1
            switch outcome {
            case .done:
                sendReceipt(for: head.frame)
            case .failed(let message, let kind):
                fail(message, frame: head.frame, kind: kind)
                return
            }
        }
        if pipeline.isEmpty, let reason = closeAfterInFlight, !inFlight {
            fail(reason, kind: .shutdown)
            return
        }
        drainQueue()
        if wroteSinceFlush {
            shard.markDirty(self)
            shard.scheduleFlush()
        }
    }
}
