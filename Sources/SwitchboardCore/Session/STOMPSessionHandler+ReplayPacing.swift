import NIOCore
import SwitchboardWire

/// Replays written as fast as the connection takes them.
///
/// A replay can be far larger than `limits.max-pending-bytes` (`history.max-length` messages
/// of up to the frame limit each, per resuming `SUBSCRIBE`). Handed to NIO at once, it sat in
/// the connection's buffer whole, past the limit, and made the channel unwritable: the session
/// ended as a slow consumer right after it, and the client had to reconnect and resume once
/// more. Now the replay goes out a chunk (``replayChunkBytes``) at a time while the channel is
/// writable, and goes on when it is writable again; the connection's own buffer holds at most
/// the limit plus one chunk and one message. Meanwhile the session's live deliveries wait in
/// ``held``, behind the replay (so every subscription's order holds, and the causality rule of
/// steps too), and they are what counts against the limit: past it, the session ends as a slow
/// consumer, and the client resumes from what it got. Once the replay is out, the held
/// deliveries follow, paced the same way; then writes go straight to NIO again. Until then the
/// client's later frames wait (``STOMPSessionStateMachine/replayPacing(_:at:)``): an
/// `UNSUBSCRIBE`, a `SUBSCRIBE` reusing an id or a `DISCONNECT` is answered after what was held
/// for the session. A connection that takes not one chunk of a paused replay for
/// ``SessionConfiguration/replayStallTimeout`` (10 s) ends as a slow consumer: the replay's
/// messages are held in memory meanwhile. Progress is each written chunk's completion (the
/// socket took it), not the channel becoming writable again, which needs half the limit drained:
/// a client reading slowly but steadily was cut off as if it read nothing.
///
/// Each chunk is flushed as it is written: over TLS the writes wait in the TLS handler until a
/// flush, so the channel stayed writable however much was written, the whole replay went out
/// at once and the session ended as a slow consumer right after it. The pacing ends once the
/// socket took every write made under it (ended while the writable channel still held nearly
/// the limit, the next live pass could make it unwritable: a slow consumer again).
extension STOMPSessionHandler {
    /// The part of one subscription's replay not written yet.
    struct ReplayRemainder {
        let subscription: LocalSubscription
        var messages: ArraySlice<PublishedMessage>
    }

    /// Bytes of replayed frames handed to NIO at a time (one message past it at most): 64 KiB,
    /// or a quarter of the limit when that is less.
    var replayChunkBytes: Int { min(64 * 1024, max(config.maxPendingOutboundBytes / 4, 1)) }

    /// Whether writes are paced by a replay (``replayBacklog`` is set).
    var isPacingReplay: Bool { replayBacklog != nil }

    /// Writes replayed messages while the channel is writable, then the deliveries held behind
    /// them, and flushes. Ends the pacing once everything that may go out went, with the channel
    /// still writable (so a later unwritable channel is a slow consumer again).
    func pumpReplay(context: ChannelHandlerContext) {
        guard replayBacklog != nil else { return }
        guard machine.phase == .connected else {
            replayBacklog = nil
            return
        }
        // Live deliveries of this pass go behind the replay (past the limit, the session ends).
        if let buffer = takeUndelivered() {
            hold(buffer, behind: machine.newestStep, context: context)
            guard replayBacklog != nil, machine.phase == .connected else { return }
        }
        // A flush below can run handlers at once (writability, a close): not this pump again.
        guard !pumpingReplay else { return }
        pumpingReplay = true
        defer { pumpingReplay = false }
        while context.channel.isWritable, var first = replayBacklog?.first {
            let subscription = first.subscription
            guard subscription.slot >= 0 else {
                replayBacklog!.removeFirst()  // unsubscribed meanwhile
                continue
            }
            // Live copies up to `replayedThrough` are the replay's: the replay itself goes out.
            let through = subscription.replayedThrough
            subscription.replayedThrough = nil
            var batch = DeliveryBatch(tick: shard.tick)
            let chunk = replayChunkBytes
            while batch.bytes < chunk, let message = first.messages.popFirst() {
                deliver(message, to: subscription, batch: &batch)
            }
            subscription.replayedThrough = through
            shard.counters.record(batch)
            // The backlog is up to date before the write and its flush.
            if first.messages.isEmpty {
                replayBacklog!.removeFirst()
            } else {
                replayBacklog![replayBacklog!.startIndex] = first
            }
            if let buffer = takeUndelivered() {
                writeTracked(buffer, context: context)
                // Now, so that the channel's writability counts it (over TLS too). A peer gone
                // closes the channel inside it (the session cleaned up, its backlog gone).
                flushReplay(context: context)
                guard replayBacklog != nil, machine.phase == .connected else { return }
            }
            guard machine.phase == .connected else { break }
        }
        if replayBacklog?.isEmpty == true {
            // The replay is out: the held deliveries whose steps are answered follow.
            let answeredThrough = machine.oldestUnansweredStep.map { $0 &- 1 }
            // A chunk at a time too: what one step holds is merged into one buffer of up to the
            // limit, which written whole took the socket longer than the stall deadline at a
            // steady 250 KB/s (a chunk's completion is the progress it counts).
            while context.channel.isWritable, var first = held?.first, answeredThrough.map({ first.step <= $0 }) ?? true {
                // Whole WebSocket frames only: the transport's pongs and close frame are
                // written between the session's writes.
                let length = Self.wholeFramesPrefix(of: first.bytes, upTo: replayChunkBytes)
                let slice = first.bytes.readSlice(length: length)!
                if first.bytes.readableBytes == 0 {
                    held!.removeFirst()
                } else {
                    held![held!.startIndex] = first
                }
                heldBytes -= slice.readableBytes
                writeTracked(slice, context: context)
                flushReplay(context: context)
                guard replayBacklog != nil, machine.phase == .connected else { return }
            }
            if held?.isEmpty == true { held = nil }
            // What is left waits for its step, as without a replay. Once the socket took
            // every write made under the pacing (``replayBytesTaken()`` pumps again then).
            if context.channel.isWritable, replayWritesPending == 0 {
                replayBacklog = nil
                machine.replayProgressed()
                machine.replayPacing(false, at: shard.tick)  // the client's queued frames go on (runActions)
                limitUnsentBytes(false, context: context)
            }
        }
        // Waiting for the socket to drain: not forever (``SessionConfiguration/replayStallTimeout``).
        // (Writes still pending count: a client that stopped reading with the channel still
        // writable kept the pacing, and its frames waiting, for good.)
        if replayBacklog != nil, !context.channel.isWritable || replayWritesPending > 0, machine.replayStalled(at: shard.tick) {
            shard.scheduleHeartbeatCheck(self, at: shard.tick &+ 1)
        }
    }

    /// How many bytes of whole (server, unmasked) WebSocket frames `buffer` starts with, up to
    /// `limit`: at least its first frame; all of it when it does not parse as such frames.
    static func wholeFramesPrefix(of buffer: ByteBuffer, upTo limit: Int) -> Int {
        var offset = buffer.readerIndex
        let end = buffer.writerIndex
        var taken = 0
        while offset < end {
            guard let second = buffer.getInteger(at: offset + 1, as: UInt8.self) else { return buffer.readableBytes }
            var header = 2
            var length = Int(second & 0x7F)
            if length == 126 {
                guard let long = buffer.getInteger(at: offset + 2, as: UInt16.self) else { return buffer.readableBytes }
                header = 4
                length = Int(long)
            } else if length == 127 {
                guard let long = buffer.getInteger(at: offset + 2, as: UInt64.self), long <= UInt64(Int.max / 2) else { return buffer.readableBytes }
                header = 10
                length = Int(long)
            }
            let frame = header + length
            guard frame <= end - offset else { return buffer.readableBytes }
            if taken > 0, taken + frame > limit { break }
            taken += frame
            offset += frame
        }
        return taken
    }

    /// Flushes what a paced replay wrote: a paused replay goes on when the socket drained it.
    private func flushReplay(context: ChannelHandlerContext) {
        wroteSinceFlush = false
        (writer ?? context).flush()
    }

    /// While a replay is paced, the kernel keeps at most two chunks not yet sent
    /// (`TCP_NOTSENT_LOWAT`): its send buffer grows to megabytes on its own and then takes more
    /// only once a third of it was sent, so a client reading 100 KB/s steadily looked stalled
    /// for more than 10 s. Back to the system's default after the replay.
    func limitUnsentBytes(_ limit: Bool, context: ChannelHandlerContext) {
        #if canImport(Glibc)
        let notSentLowWater = NIOBSDSocket.Option(rawValue: 25)  // TCP_NOTSENT_LOWAT
        let value: SocketOptionValue = limit ? SocketOptionValue(2 * replayChunkBytes) : 0  // 0: the system's default
        _ = context.channel.setOption(ChannelOptions.tcpOption(notSentLowWater), value: value)
        #endif
    }

    /// Writes `bytes` of a paced replay; once the socket took them, the stall deadline starts
    /// again.
    private func writeTracked(_ bytes: ByteBuffer, context: ChannelHandlerContext) {
        let promise = context.eventLoop.makePromise(of: Void.self)
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        replayWritesPending += 1
        promise.futureResult.whenComplete { result in
            bound.value.replayWritesPending -= 1
            if case .success = result { bound.value.replayBytesTaken() }
        }
        (writer ?? context).write(wrapOutboundOut(bytes), promise: promise)
        machine.wrote(at: shard.tick)
    }

    /// The socket took a chunk of a paced replay: progress.
    private func replayBytesTaken() {
        guard isPacingReplay, let context else { return }
        // Progress, whatever comes next (the pump below arms a new deadline if it waits again).
        let waited = machine.replayProgressed()
        // The last write of a replay that is out: the pacing can end, once the pump that wrote
        // it returned (a flush completes writes at once, inside it).
        if replayWritesPending == 0, replayBacklog?.isEmpty == true, context.channel.isWritable {
            let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
            context.eventLoop.execute {
                let handler = bound.value
                guard handler.isPacingReplay, let context = handler.context else { return }
                handler.pumpReplay(context: context)
                if !handler.isPacingReplay {
                    handler.runActions()  // the client's frames that waited for the replay
                    handler.flushIfNeeded()
                }
            }
            return
        }
        guard waited, !context.channel.isWritable || replayWritesPending > 0 else { return }
        // Still waiting for the socket: the deadline counts from now.
        _ = machine.replayStalled(at: shard.tick)
    }
}
