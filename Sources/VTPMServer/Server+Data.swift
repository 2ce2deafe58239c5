import Logging
import TPMEngine
import TPMWire
import _VTPMPosix

extension Server {
    /// How long the rest of a TPM command may take once its first bytes arrived.
    static let dataDeadlineNanoseconds: UInt64 = 2_000_000_000
    static let tpm2ShutdownCode: UInt32 = 0x145

    /// Reads one TPM command and answers it. Clients (QEMU, tpm2-tss, swtpm's tools) write a whole
    /// command and wait for its response, so one command is what arrives: it is framed by its size
    /// field, the rest of a short command is waited for (up to the deadline), and bytes beyond the
    /// size field that arrived with it are an error (R8), never a second command: on QEMU's socket
    /// that would give QEMU two responses for one request.
    func serveData() {
        let fd = self.dataConnection
        let n: Int
        do {
            n = try Socket.read(fd, into: &self.readBuffer, at: 0, count: self.readBuffer.count)
        } catch {
            self.closeDataConnection(byPeer: true, reason: "read failed: \(error)")
            return
        }
        if n == 0 {
            self.closeDataConnection(byPeer: true, reason: "end of stream")
            return
        }
        self.dataPending = n
        let deadline = ProcessControl.monotonicNanoseconds() + Self.dataDeadlineNanoseconds
        guard self.fillData(fd, to: TPMFrame.headerSize, deadline: deadline) else {
            self.rejectFrame(reason: "header of \(self.dataPending) bytes")
            return
        }
        if self.readBuffer.readBigEndianUInt32(at: 0) == Self.tcgSendCommand {
            self.serveSendCommandFrame(fd, deadline: deadline)
            return
        }
        let size = Int(self.readBuffer.readBigEndianUInt32(at: 2))
        guard size >= TPMFrame.headerSize, size <= Int(self.bufferSize), size <= self.readBuffer.count else {
            self.rejectFrame(reason: "size field \(size) outside 10...\(self.bufferSize)")
            return
        }
        guard self.fillData(fd, to: size, deadline: deadline) else {
            self.rejectFrame(reason: "\(self.dataPending) of \(size) bytes arrived")
            return
        }
        guard self.dataPending == size else {
            self.rejectFrame(reason: "\(self.dataPending - size) bytes beyond the size field")
            return
        }
        let response = self.execute(frameOf: size)
        self.dataPending = 0
        _ = self.respond(fd, response)
    }

    /// Writes a response; with `disconnect`, closes the connection after it.
    /// Returns whether the connection is still open.
    func respond(_ fd: Int32, _ response: [UInt8]) -> Bool {
        do {
            try Socket.sendAll(fd, response)
        } catch {
            self.closeDataConnection(byPeer: true, reason: "write failed: \(error)")
            return false
        }
        if self.configuration.disconnectAfterResponse {
            self.closeDataConnection(byPeer: false, reason: "disconnect after response")
            return false
        }
        return true
    }

    /// TCG "TPM_SEND_COMMAND" framing (the MS simulator convention, capability 0x8000):
    /// be32 8, u8 locality, be32 size, command; reply be32 size, response, be32 0.
    /// Accepted only on connections from the `--server` listener (never on QEMU's SET_DATAFD
    /// socket), and unlike swtpm the locality applies to this one command only and is checked
    /// against 0...4 and `reject-locality-4`.
    static let tcgSendCommand: UInt32 = 8

    func serveSendCommandFrame(_ fd: Int32, deadline: UInt64) {
        guard !self.dataFromControl, !self.configuration.dataIsCharacterDevice else {
            self.rejectFrame(reason: "TCG send-command framing on a QEMU data channel")
            return
        }
        let prefix = 9
        let locality = self.readBuffer[4]
        let size = Int(self.readBuffer.readBigEndianUInt32(at: 5))
        guard size >= TPMFrame.headerSize, size <= Int(self.bufferSize), prefix + size <= self.readBuffer.count else {
            self.rejectFrame(reason: "send-command size \(size) outside 10...\(self.bufferSize)")
            return
        }
        guard self.fillData(fd, to: prefix + size, deadline: deadline) else {
            self.rejectFrame(reason: "\(self.dataPending) of \(prefix + size) send-command bytes arrived")
            return
        }
        guard self.dataPending == prefix + size else {
            self.rejectFrame(reason: "\(self.dataPending - prefix - size) bytes beyond the send-command size")
            return
        }
        var command = Array(self.readBuffer[prefix..<(prefix + size)])
        self.dataPending = 0
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
        _ = self.respond(fd, w.bytes)
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
        return TPMFrame.errorResponse(TPMFrame.rcSuccess)
    }

    /// Reads until `dataPending` reaches `count` or the deadline passes (never beyond `count`).
    func fillData(_ fd: Int32, to count: Int, deadline: UInt64) -> Bool {
        while self.dataPending < count {
            let now = ProcessControl.monotonicNanoseconds()
            guard now < deadline else { return false }
            let waitMs = Int32((deadline - now) / 1_000_000 + 1)
            guard (try? waitReadable(fd, timeoutMilliseconds: waitMs)) == true else { continue }
            guard
                let n = try? Socket.read(
                    fd,
                    into: &self.readBuffer,
                    at: self.dataPending,
                    count: count - self.dataPending
                ), n > 0
            else {
                return false
            }
            self.dataPending += n
        }
        return true
    }

    /// A frame that cannot be a TPM command: one TPM_RC_COMMAND_SIZE reply and libtpms is not called.
    /// On QEMU's socket (SET_DATAFD) the connection stays open, since QEMU never reconnects and a
    /// guest must not be able to cut itself off from its TPM with one bad command; QEMU sends nothing
    /// more until it has the reply, so the stream is in step again. Other clients are disconnected,
    /// as the rest of an oversized command could still be on its way.
    func rejectFrame(reason: String) {
        self.logger.warning("data: malformed TPM command (\(reason))")
        self.dataPending = 0
        let fd = self.dataConnection
        guard self.respond(fd, TPMFrame.errorResponse(TPMFrame.rcCommandSize)) else { return }
        if !self.dataFromControl && !self.configuration.dataIsCharacterDevice {
            self.closeDataConnection(byPeer: false, reason: "malformed command")
        }
    }
}
