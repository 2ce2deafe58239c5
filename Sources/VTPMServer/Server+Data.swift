import Logging
import TPMEngine
import TPMWire
import _VTPMPosix

extension Server {
    /// How long the rest of a TPM command may take once its first bytes arrived.
    static let dataDeadlineNanoseconds: UInt64 = 2_000_000_000
    static let tpm2ShutdownCode: UInt32 = 0x145

    /// Accounts for `count` bytes the loop read into `readBuffer` at `dataFramer.filled` and answers the
    /// command they complete. Framing (R8) is ``TPMCommandFramer``'s: a frame is delimited by its size
    /// field, bytes beyond it in the frame's first read are an error, never a second command.
    func receivedData(_ count: Int, now: UInt64) -> [ConnectionAction] {
        if !self.dataFramer.isInFrame { self.dataStarted = now }
        let step = self.dataFramer.received(
            count,
            in: self.readBuffer,
            maximumCommand: Int(self.bufferSize),
            allowSendCommand: !self.dataFromControl && !self.configuration.dataIsCharacterDevice
        )
        switch step {
        case .needMore:
            return []
        case .malformed(let reason):
            return self.rejectFrame(reason: reason)
        case .frame(let frame):
            let response: [UInt8]
            if let locality = frame.sendCommandLocality {
                response = self.executeSendCommand(frame.command, locality: locality)
            } else {
                response = self.execute(frameOf: frame.command.count)
            }
            var actions: [ConnectionAction] = [.reply(response)]
            if self.configuration.disconnectAfterResponse {
                actions.append(.close(reason: "disconnect after response"))
            }
            return actions
        }
    }

    /// When the partial frame must be complete (nil: none is being received).
    var dataDeadline: UInt64? {
        self.dataFramer.isInFrame ? self.dataStarted + Self.dataDeadlineNanoseconds : nil
    }

    /// The partial frame missed its deadline.
    func expireData() -> [ConnectionAction] {
        self.rejectFrame(reason: self.dataFramer.expire(in: self.readBuffer))
    }

    /// TCG "TPM_SEND_COMMAND" framing (the MS simulator convention, capability 0x8000):
    /// be32 8, u8 locality, be32 size, command; reply be32 size, response, be32 0.
    /// Accepted only on connections from the `--server` listener (never on QEMU's SET_DATAFD
    /// socket), and unlike swtpm the locality applies to this one command only and is checked
    /// against 0...4 and `reject-locality-4`.
    func executeSendCommand(_ range: Range<Int>, locality: UInt8) -> [UInt8] {
        var command = Array(self.readBuffer[range])
        let response: [UInt8]
        if locality > 4 || (locality == 4 && self.configuration.rejectLocality4) {
            response = TPMFrame.errorResponse(TPMFrame.rcLocality)
        } else {
            let saved = self.engine.locality
            self.engine.locality = locality
            response = self.execute(&command)
            self.engine.locality = saved
        }
        var w = ByteWriter(capacity: response.count + 8)
        w.write(UInt32(response.count))
        w.write(bytes: response)
        w.write(UInt32(0))
        return w.bytes
    }

    /// Runs the size-checked command at the start of the read buffer, in place.
    func execute(frameOf size: Int) -> [UInt8] {
        guard self.engine.isRunning else { return TPMFrame.errorResponse(TPMFrame.rcFailure) }
        self.identity?.stateWillChange()
        let code = self.readBuffer.readBigEndianUInt32(at: 6)
        if code == TPMFrame.swtpmSetLocalityOrdinal {
            return self.inBandSetLocality(Array(self.readBuffer[0..<size]))
        }
        return self.checked(self.engine.process(&self.readBuffer, count: size), code: code)
    }

    /// Runs a complete, size-checked command.
    func execute(_ command: inout [UInt8]) -> [UInt8] {
        guard self.engine.isRunning else { return TPMFrame.errorResponse(TPMFrame.rcFailure) }
        self.identity?.stateWillChange()
        let code = command.readBigEndianUInt32(at: 6)
        if code == TPMFrame.swtpmSetLocalityOrdinal {
            return self.inBandSetLocality(command)
        }
        return self.checked(self.engine.process(&command), code: code)
    }

    /// R8: a libtpms response is passed on only when its size field matches its length and fits.
    func checked(_ response: [UInt8]?, code: UInt32) -> [UInt8] {
        guard let response,
            TPMFrame.isWellFormedResponse(response, maximum: max(Int(self.bufferSize), 4096))
        else {
            self.logger.error(
                "libtpms returned no or a malformed response",
                metadata: ["cc": "0x\(String(code, radix: 16))"]
            )
            return TPMFrame.errorResponse(TPMFrame.rcFailure)
        }
        self.lastCommandWasShutdown = code == Self.tpm2ShutdownCode && TPMFrame.responseCode(response) == 0
        return response
    }

    /// swtpm's private in-band locality command, honoured only with `allow-set-locality`.
    func inBandSetLocality(_ command: [UInt8]) -> [UInt8] {
        guard self.configuration.allowSetLocality else { return TPMFrame.errorResponse(TPMFrame.rcFailure) }
        guard command.count == TPMFrame.headerSize + 1 else { return TPMFrame.errorResponse(TPMFrame.rcCommandSize) }
        let locality = command[TPMFrame.headerSize]
        guard locality <= 4, !(locality == 4 && self.configuration.rejectLocality4) else {
            return TPMFrame.errorResponse(TPMFrame.rcLocality)
        }
        self.engine.locality = locality
        self.logger.debug("in-band locality \(locality)")
        return TPMFrame.errorResponse(TPMFrame.rcSuccess)
    }

    /// A frame that cannot be a TPM command: one TPM_RC_COMMAND_SIZE reply and libtpms is not called.
    /// On QEMU's socket (SET_DATAFD) the connection stays open, since QEMU never reconnects and a
    /// guest must not be able to cut itself off from its TPM with one bad command; QEMU sends nothing
    /// more until it has the reply, so the stream is in step again. Other clients are disconnected,
    /// as the rest of an oversized command could still be on its way.
    func rejectFrame(reason: String) -> [ConnectionAction] {
        self.logger.warning("data: malformed TPM command (\(reason))")
        var actions: [ConnectionAction] = [.reply(TPMFrame.errorResponse(TPMFrame.rcCommandSize))]
        if !self.dataFromControl && !self.configuration.dataIsCharacterDevice {
            actions.append(.close(reason: "malformed command"))
        }
        return actions
    }
}
