import Logging
import TPMEngine
import TPMWire
import _VTPMPosix

#if canImport(Glibc)
import Glibc
#endif

/// `vtpmd cuse`: swtpm's CUSE interface. One character device, /dev/NAME, takes the TPM commands by write()
/// and read() and the control commands as ioctls (tpm_ioctl.h's structures, in host byte order). The ioctls are
/// translated to the control channel's requests and answered by the same protocol core (Server+Control), so
/// INIT, the state blobs and clone-rekey behave as on the socket.
///
/// State blobs larger than one ioctl's 3 KiB move as swtpm moves them: GET_STATEBLOB returns the first part and
/// the rest either by further ioctls at an offset or by read()s that follow; SET_STATEBLOB takes the blob in
/// full 3 KiB parts ended by a shorter one, or, started with a part of length 0, by write()s ended by an ioctl
/// of length 0.
final class CUSEChannel: CUSERequestHandler {
    unowned let server: Server
    let name: String
    var device: CUSEDevice?
    /// The device node exists (the kernel's CUSE_INIT was answered).
    var ready = false

    /// What read() returns: a TPM response, or the rest of a state blob.
    enum Transfer {
        case command
        /// A GET_STATEBLOB whose rest is read with read().
        case gettingBlob(rest: ArraySlice<UInt8>)
        /// A SET_STATEBLOB being received (by ioctls or write()).
        case settingBlob
    }

    var transfer = Transfer.command
    /// The response to the last command written, and how much of it was read.
    var response: [UInt8] = []
    var responseRead = 0
    /// The SET_STATEBLOB being assembled: its type, flags and bytes.
    var incoming: (type: UInt32, flags: UInt32, bytes: [UInt8])? = nil

    init(server: Server, name: String) {
        self.server = server
        self.name = name
    }

    func cuseReady() {
        self.ready = true
        self.server.logger.info("CUSE device /dev/\(self.name) created")
    }

    func cuseOpen() -> Int32 {
        // A transfer a previous opener left unfinished is dropped, not continued.
        self.abandonTransfer()
        return 0
    }

    func cuseRelease() {}

    func cuseRead(maximum: Int) -> (bytes: [UInt8], error: Int32) {
        switch self.transfer {
        case .command:
            let end = min(self.response.count, self.responseRead + maximum)
            let bytes = Array(self.response[min(self.responseRead, end)..<end])
            self.responseRead = end
            return (bytes, 0)
        case .gettingBlob(let rest):
            let part = Array(rest.prefix(maximum))
            // The transfer ends with its last byte (swtpm waits for a read shorter than asked for; a TPM command
            // written after the last byte is then refused with EIO, which helps no one).
            self.transfer = rest.count <= maximum ? .command : .gettingBlob(rest: rest.dropFirst(part.count))
            return (part, 0)
        case .settingBlob:
            self.transfer = .command
            self.incoming = nil
            return ([], EIO)
        }
    }

    func cuseWrite(_ bytes: [UInt8]) -> Int32 {
        switch self.transfer {
        case .command:
            self.response = self.server.executeDeviceCommand(bytes)
            self.responseRead = 0
            return 0
        case .gettingBlob:
            self.transfer = .command
            return EIO
        case .settingBlob:
            let result = self.appendBlob(bytes, last: bytes.isEmpty)
            return result == 0 ? 0 : EIO
        }
    }

    func cuseIoctl(command: UInt32, input: [UInt8], outputSize: Int) -> (bytes: [UInt8], error: Int32) {
        guard let ioctl = CUSEIoctl(number: command), outputSize == ioctl.argumentSize,
            input.count == (ioctl.writesArgument ? ioctl.argumentSize : 0)
        else {
            self.server.logger.warning("CUSE: unknown ioctl 0x\(String(command, radix: 16))")
            return ([], EINVAL)
        }
        self.server.logger.trace("CUSE ioctl", metadata: ["ioctl": "\(ioctl)"])
        var out = NativeStruct(size: ioctl.argumentSize)
        switch ioctl {
        case .getCapability:
            out.setUInt64(UInt64(ControlCapabilities.vtpmdCUSE.rawValue), at: 0)
        case .initialize:
            self.abandonTransfer()
            self.response = []
            let result = self.controlResult(.initialize(flags: NativeStruct.uint32(input, at: 0)))
            out.setUInt32(result, at: 0)
        case .shutdown, .stop:
            self.abandonTransfer()
            self.response = []
            out.setUInt32(self.controlResult(ioctl == .shutdown ? .shutdown : .stop), at: 0)
            if ioctl == .shutdown { self.server.shouldExit = true }
        case .getTPMEstablished:
            let reply = self.server.handle(.getTPMEstablished, passedDescriptor: nil)
            out.setFields(fromBigEndian: reply, count: 1)
            out.setBytes([reply.count > 4 ? reply[4] : 0], at: 4)
        case .setLocality:
            out.setUInt32(self.controlResult(.setLocality(input[0])), at: 0)
        case .resetTPMEstablished:
            out.setUInt32(self.controlResult(.resetTPMEstablished(locality: input[0])), at: 0)
        case .hashStart:
            out.setUInt32(self.controlResult(.hashStart), at: 0)
        case .hashData:
            out.setUInt32(self.server.hashDeviceData(input), at: 0)
        case .hashEnd:
            out.setUInt32(self.controlResult(.hashEnd), at: 0)
        case .cancelTPMCommand:
            out.setUInt32(self.controlResult(.cancelTPMCommand), at: 0)
        case .storeVolatile:
            out.setUInt32(self.controlResult(.storeVolatile), at: 0)
        case .getStateBlob:
            out = self.getStateBlob(input)
        case .setStateBlob:
            out.setUInt32(self.setStateBlob(input), at: 0)
        case .getConfig:
            out.setFields(fromBigEndian: self.server.handle(.getConfig, passedDescriptor: nil), count: 2)
        case .setDataFD:
            // A CUSE device has no socket to pass a descriptor over (swtpm answers EINVAL too).
            return ([], EINVAL)
        case .setBufferSize:
            let reply = self.server.handle(
                .setBufferSize(NativeStruct.uint32(input, at: 0)),
                passedDescriptor: nil
            )
            out.setFields(fromBigEndian: reply, count: 4)
        case .getInfo:
            let reply = self.server.handle(
                .getInfo(flags: NativeStruct.uint64(input, at: 0), offset: NativeStruct.uint32(input, at: 8)),
                passedDescriptor: nil
            )
            out.setUInt32(reply.readBigEndianUInt32(at: 0), at: 0)
            if reply.count >= 12 {
                let total = reply.readBigEndianUInt32(at: 4)
                let chunk = reply[12...].prefix(CUSEIoctl.chunkSize)
                out.setUInt32(total, at: 4)
                out.setUInt32(UInt32(chunk.count), at: 8)
                out.setBytes(chunk, at: 12)
            }
        }
        return (out.bytes, 0)
    }

    /// The TPM_RESULT of a control request whose reply is just that.
    private func controlResult(_ request: ControlRequest) -> UInt32 {
        self.server.handle(request, passedDescriptor: nil).readBigEndianUInt32(at: 0)
    }

    private func abandonTransfer() {
        self.transfer = .command
        self.incoming = nil
    }

    /// GET_STATEBLOB (ptm_getstate): the request's flags, type and offset; the response's result, flags, total
    /// length, and up to 3 KiB of the blob from the offset. A rest is left for read().
    private func getStateBlob(_ input: [UInt8]) -> NativeStruct {
        let flags = NativeStruct.uint32(input, at: 0)
        let type = NativeStruct.uint32(input, at: 4)
        let offset = NativeStruct.uint32(input, at: 8)
        self.abandonTransfer()
        // Reads after the blob's last byte must not return an older TPM response.
        self.response = []
        self.responseRead = 0
        let reply = self.server.getStateBlob(flags: flags, type: type, offset: offset)
        var out = NativeStruct(size: CUSEIoctl.getStateBlob.argumentSize)
        let result = reply.readBigEndianUInt32(at: 0)
        out.setUInt32(result, at: 0)
        guard result == 0, reply.count >= 16 else { return out }
        let data = reply[16...]
        let part = data.prefix(CUSEIoctl.chunkSize)
        out.setUInt32(reply.readBigEndianUInt32(at: 4), at: 4)
        out.setUInt32(offset + UInt32(data.count), at: 8)
        out.setUInt32(UInt32(part.count), at: 12)
        out.setBytes(part, at: 16)
        if data.count > part.count { self.transfer = .gettingBlob(rest: data.dropFirst(part.count)) }
        return out
    }

    /// SET_STATEBLOB (ptm_setstate): flags, type, length and up to 3 KiB. A full part asks for more; a shorter
    /// one ends the blob, which then goes to the core. A first part of length 0 starts a transfer by write().
    private func setStateBlob(_ input: [UInt8]) -> UInt32 {
        let flags = NativeStruct.uint32(input, at: 0)
        let type = NativeStruct.uint32(input, at: 4)
        let length = Int(NativeStruct.uint32(input, at: 8))
        guard length <= CUSEIoctl.chunkSize else {
            self.abandonTransfer()
            return ControlResult.badParameter
        }
        guard !self.server.engine.isRunning else {
            self.abandonTransfer()
            return ControlResult.badOrdinal
        }
        if self.incoming?.type != type {
            self.incoming = (type, flags, [])
            self.transfer = .settingBlob
            if length == 0 { return 0 }
        }
        return self.appendBlob(Array(input[12..<12 + length]), last: length != CUSEIoctl.chunkSize)
    }

    private func appendBlob(_ bytes: [UInt8], last: Bool) -> UInt32 {
        guard var incoming = self.incoming else {
            self.transfer = .command
            return ControlResult.fail
        }
        guard incoming.bytes.count + bytes.count <= self.server.configuration.maximumBlobSize else {
            self.server.logger.warning("CUSE: SET_STATEBLOB exceeds the limit")
            self.abandonTransfer()
            return ControlResult.badParameter
        }
        incoming.bytes += bytes
        guard last else {
            self.incoming = incoming
            self.transfer = .settingBlob
            return 0
        }
        self.abandonTransfer()
        return self.server.setStateBlob(flags: incoming.flags, type: incoming.type, blob: incoming.bytes)
    }
}

extension ControlCapabilities {
    /// What the CUSE device implements: the socket's set without SET_DATAFD and the send-command header.
    static let vtpmdCUSE = ControlCapabilities.vtpmd.subtracting([.setDataFD, .sendCommandHeader])
}

extension Server {
    /// Opens the CUSE session and answers the kernel's CUSE_INIT, so /dev/NAME exists when this returns.
    func openCUSEDevice(_ settings: ServerConfiguration.CUSEDevice) throws {
        // The kernel checks the name only among CUSE devices: a /dev node of that name (tpm0, null) would stay
        // what clients open. swtpm refuses it too.
        if fileStatus(atPath: "/dev/\(settings.name)") != nil {
            throw ServerError.startup("a device /dev/\(settings.name) already exists")
        }
        let channel = CUSEChannel(server: self, name: settings.name)
        self.cuseChannel = channel
        let device: CUSEDevice
        do {
            device = try CUSEDevice(
                name: settings.name,
                major: settings.major,
                minor: settings.minor,
                handler: channel
            )
        } catch {
            throw ServerError.startup("cannot create the CUSE device /dev/\(settings.name): \(error)")
        }
        channel.device = device
        let deadline = ProcessControl.monotonicNanoseconds() + 10_000_000_000
        while !channel.ready {
            let now = ProcessControl.monotonicNanoseconds()
            guard now < deadline,
                try waitReadable(device.descriptor, timeoutMilliseconds: Int32((deadline - now) / 1_000_000 + 1)),
                try device.processRequest()
            else {
                throw ServerError.startup("the kernel did not create /dev/\(settings.name) (CUSE_INIT)")
            }
        }
    }

    /// Serves the CUSE device until PTM_SHUTDOWN, a termination signal or the end of the session.
    func runCUSE(_ channel: CUSEChannel) -> Int32 {
        guard let device = channel.device else { return 1 }
        while !self.shouldExit {
            // Registry bookkeeping that is due waits until no request does (as in the socket loop).
            let idleWork = self.identity?.stateWriteDue == true
            let ready: [PollEvents]
            do {
                ready = try pollDescriptors(
                    [(self.signalDescriptor, .readable), (device.descriptor, .readable)],
                    timeoutMilliseconds: idleWork ? 0 : -1
                )
            } catch {
                self.logger.error("poll failed: \(error)")
                self.exitStatus = 1
                break
            }
            if !ready[0].isEmpty, let sig = ProcessControl.readSignal(self.signalDescriptor) {
                self.logger.info("terminating on signal \(sig)")
                break
            }
            guard !ready[1].isEmpty else {
                if idleWork { self.identity?.recordStateWrite() }
                continue
            }
            do {
                if try !device.processRequest() {
                    self.logger.info("CUSE session ended")
                    break
                }
            } catch {
                self.logger.error("CUSE: \(error)")
                self.exitStatus = 1
                break
            }
        }
        return self.exitStatus
    }

    /// A TPM command written to a character device as one whole write: size-checked, then executed.
    func executeDeviceCommand(_ bytes: [UInt8]) -> [UInt8] {
        guard bytes.count >= TPMFrame.headerSize, bytes.count <= Int(self.bufferSize),
            TPMFrame.declaredSize(bytes).map(Int.init) == bytes.count
        else {
            self.logger.warning("CUSE: malformed TPM command (\(bytes.count) bytes)")
            return TPMFrame.errorResponse(TPMFrame.rcCommandSize)
        }
        var command = bytes
        return self.execute(&command)
    }

    /// PTM_HASH_DATA: one chunk of at most 4 KiB (ptm_hdata: length, data).
    func hashDeviceData(_ input: [UInt8]) -> UInt32 {
        guard self.engine.isRunning else { return ControlResult.badOrdinal }
        let length = Int(NativeStruct.uint32(input, at: 0))
        guard length <= CUSEIoctl.hashChunkSize else { return ControlResult.fail }
        self.identity?.stateWillChange()
        return self.engine.hashData(Array(input[4..<4 + length]))
    }
}
