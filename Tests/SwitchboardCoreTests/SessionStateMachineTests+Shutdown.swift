import NIOCore
import NIOWebSocket
import STOMPCodec
import SwitchboardCore
import SwitchboardWire
import Testing

/// Closing a session for the server's sake (a shutdown, a lost lease): after the steps in
/// flight or at once, with which error kind and close code.
extension SessionStateMachineTests {
    @Test func shutdownLetsTheStepInFlightFinishFirst() {
        var m = Self.connected()
        m.frameReceived(Self.send("/app/serial", receipt: "w"), now: .now())
        m.frameReceived(Self.send("/topic/a", receipt: "queued"), now: .now())
        _ = Self.drain(&m)
        m.closeRequested(reason: "server shutting down, reconnect")
        #expect(Self.drain(&m) == [])
        m.stepCompleted(2, .success)
        #expect(Self.drain(&m) == [.answered(2, receipt: "w"), .error("server shutting down, reconnect", receiptID: nil)])
    }

    /// A close for the server's shutdown or a lost lease says "going away" (1001), after the
    /// step in flight or at once; a client that takes 1000 for a final end would not reconnect.
    @Test(arguments: [(SessionErrorKind.shutdown, true), (.shutdown, false), (.leaseLost, true)])
    func aCloseForTheServersSakeGoesAway(kind: SessionErrorKind, waitForStep: Bool) {
        var m = Self.connected()
        m.frameReceived(Self.send("/app/serial", receipt: "w"), now: .now())
        _ = Self.drain(&m)
        m.closeRequested(reason: "reconnect", waitForStep: waitForStep, kind: kind)
        if waitForStep { m.stepCompleted(2, .success) }
        var code: WebSocketErrorCode?
        while let action = m.nextAction() {
            if case .close(let close) = action { code = close.failure?.closeCode }
        }
        #expect(code == .goingAway)
    }

    /// Closing after the steps in flight: a pipelinable SEND arriving meanwhile does not join
    /// them (a client streaming SENDs kept the pipeline busy until the grace ran out).
    @Test func shutdownStartsNoSendBehindThePipelinedOnesInFlight() {
        var m = Self.connected()
        m.frameReceived(Self.send("/app/stream", receipt: "1"), now: .now())
        #expect(Self.drain(&m) == [.execute("route(/app/stream)", step: 2)])
        m.closeRequested(reason: "server shutting down, reconnect")
        m.frameReceived(Self.send("/app/stream", receipt: "2"), now: .now())
        m.frameReceived(Self.send("/topic/a", receipt: "3"), now: .now())
        #expect(Self.drain(&m) == [])
        m.stepCompleted(2, .success)
        #expect(Self.drain(&m) == [.answered(2, receipt: "1"), .error("server shutting down, reconnect", receiptID: nil)])
    }

    @Test func shutdownPastTheGraceAbandonsTheStepInFlight() {
        var m = Self.connected()
        m.frameReceived(Self.send("/app/serial", receipt: "w"), now: .now())
        m.frameReceived(Self.send("/topic/a", receipt: "queued"), now: .now())
        _ = Self.drain(&m)
        m.closeRequested(reason: "server shutting down, reconnect", waitForStep: false)
        // No receipt for the abandoned step nor the one queued behind it: their outcome is unknown.
        #expect(Self.drain(&m) == [.error("server shutting down, reconnect", receiptID: nil)])
        m.stepCompleted(2, .success)
        #expect(Self.drain(&m) == [])
    }

    /// A lease lost closes the sessions as `lease_lost` (reported `node-lost`), not as a
    /// shutdown (`drain`), after the step in flight too.
    @Test func aLostLeaseClosesWithItsOwnKind() {
        var m = Self.connected()
        m.frameReceived(Self.send("/app/serial", receipt: "w"), now: .now())
        _ = Self.drain(&m)
        m.closeRequested(reason: "lease lost", kind: .leaseLost)
        #expect(Self.drain(&m) == [])
        m.stepCompleted(2, .success)
        var kinds: [SessionErrorKind] = []
        while let action = m.nextAction() {
            if case .close(let close) = action, let failure = close.failure { kinds.append(failure.kind) }
        }
        #expect(kinds == [.leaseLost])
        #expect(SessionErrorKind.leaseLost.disconnectReason == .nodeLost && SessionErrorKind.shutdown.disconnectReason == .drain)
    }

    @Test func shutdownOfAnIdleSessionIsImmediate() {
        var m = Self.connected()
        m.closeRequested(reason: "bye")
        #expect(Self.drain(&m) == [.error("bye", receiptID: nil)])
    }
}
