import Logging
import StateStore
import TPMEngine
import TPMWire
import _VTPMPosix

extension Server {
    /// How long a control command may take to arrive completely (swtpm uses 500 ms).
    static let controlDeadlineNanoseconds: UInt64 = 500_000_000
    /// SET_STATEBLOB and HASH_DATA bodies may be large: they get a longer total deadline.
    static let bodyDeadlineNanoseconds: UInt64 = 10_000_000_000
    /// swtpm's first read size: 4 + sizeof(hash-data struct).
    static let firstControlRead = 4104

    /// Reads one control command from the control connection, executes it, replies.
    /// - Parameter received: Bytes of the command already read, and descriptors that came with them (a peer
    ///   that waited its turn).
    func serveControl(received: (bytes: [UInt8], fds: [Int32]) = ([], [])) {
        let fd = self.controlConnection
        let start = ProcessControl.monotonicNanoseconds()
        var first = received
        if received.bytes.isEmpty {
            do {
                first = try Socket.receive(fd, max: Self.firstControlRead)
            } catch {
                self.closeControlConnection()
                return
            }
        }
        var passed = first.fds
        defer { for extra in passed { closeDescriptor(extra) } }
        var buffer = first.bytes
        if buffer.isEmpty {
            self.closeControlConnection()
            return
        }
        let deadline = start + Self.controlDeadlineNanoseconds
        guard readUntilFilled(&buffer, from: fd, to: 4, deadline: deadline) else {
            self.logger.warning("control: short command (\(buffer.count) bytes), closing the connection")
            self.closeControlConnection()
            return
        }
        let code = ControlCode(rawValue: buffer.readBigEndianUInt32(at: 0))
        self.logger.trace("control command", metadata: ["code": "\(code)"])
        guard let rule = code.payloadRule else {
            self.logger.warning("control: unknown command code 0x\(String(code.rawValue, radix: 16))")
            self.replyControl(ControlReply.result(ControlResult.badOrdinal))
            return
        }
        switch rule {
        case .exactly(let n), .atLeast(let n):
            guard readUntilFilled(&buffer, from: fd, to: 4 + n, deadline: deadline) else {
                self.rejectShort(code, have: buffer.count, need: 4 + n)
                return
            }
            if case .exactly = rule, buffer.count > 4 + n {
                self.logger.warning("control: \(code) with \(buffer.count - 4 - n) unexpected trailing bytes")
                self.replyControl(self.errorReply(code, ControlResult.badParameter))
                return
            }
            let request: ControlRequest
            do {
                request = try ControlRequest(code: code, payload: Array(buffer[4..<(4 + n)]))
            } catch {
                self.replyControl(self.errorReply(code, ControlResult.badParameter))
                return
            }
            var descriptor: Int32? = nil
            if request == .setDataFD, !passed.isEmpty { descriptor = passed.removeFirst() }
            let reply = self.handle(request, passedDescriptor: descriptor)
            self.replyControl(reply)
            if request == .shutdown { self.shouldExit = true }
        case .stateBlob:
            guard readUntilFilled(&buffer, from: fd, to: 16, deadline: deadline) else {
                self.rejectShort(code, have: buffer.count, need: 16)
                return
            }
            let flags = buffer.readBigEndianUInt32(at: 4)
            let type = buffer.readBigEndianUInt32(at: 8)
            let length = Int(buffer.readBigEndianUInt32(at: 12))
            guard length <= self.configuration.maximumBlobSize else {
                self.logger.warning("control: SET_STATEBLOB of \(length) bytes exceeds the limit; closing")
                self.replyControl(ControlReply.result(ControlResult.badParameter))
                self.closeControlConnection()
                return
            }
            guard readUntilFilled(&buffer, from: fd, to: 16 + length, deadline: start + Self.bodyDeadlineNanoseconds)
            else {
                self.rejectShort(code, have: buffer.count, need: 16 + length)
                return
            }
            let blob = Array(buffer[16..<(16 + length)])
            self.replyControl(ControlReply.result(self.setStateBlob(flags: flags, type: type, blob: blob)))
        case .hashData:
            guard readUntilFilled(&buffer, from: fd, to: 8, deadline: deadline) else {
                self.rejectShort(code, have: buffer.count, need: 8)
                return
            }
            let length = Int(buffer.readBigEndianUInt32(at: 4))
            let result = self.streamHashData(firstBytes: Array(buffer.dropFirst(8).prefix(length)), length: length)
            guard let result else {
                self.closeControlConnection()
                return
            }
            self.replyControl(ControlReply.result(result))
        }
    }

    func rejectShort(_ code: ControlCode, have: Int, need: Int) {
        self.logger.warning("control: \(code) incomplete (\(have) of \(need) bytes) at the deadline; closing")
        self.replyControl(self.errorReply(code, ControlResult.badParameter))
        self.closeControlConnection()
    }

    /// An error reply of the size QEMU reads for `code`: 8 bytes for GET_TPMESTABLISHED, 16 for
    /// GET_STATEBLOB, 4 otherwise.
    func errorReply(_ code: ControlCode, _ result: UInt32) -> [UInt8] {
        switch code {
        case .getTPMEstablished: ControlReply.established(result: result, bit: false)
        case .getStateBlob: ControlReply.stateBlob(result: result, flags: 0, data: [])
        default: ControlReply.result(result)
        }
    }

    func replyControl(_ bytes: [UInt8]) {
        guard self.controlConnection >= 0 else { return }
        do {
            try Socket.sendAll(self.controlConnection, bytes)
        } catch {
            self.logger.debug("control: reply failed: \(error)")
            self.closeControlConnection()
        }
    }

    /// Executes a fixed-size control command and returns the reply.
    func handle(_ request: ControlRequest, passedDescriptor: Int32?) -> [UInt8] {
        let running = self.engine.isRunning
        switch request {
        case .getCapability:
            return ControlReply.capabilities(.vtpmd)
        case .initialize(let flags):
            return ControlReply.result(self.initializeTPM(flags: flags))
        case .shutdown:
            self.shutdownTPM()
            return ControlReply.result(0)
        case .getTPMEstablished:
            guard running else { return self.errorReply(.getTPMEstablished, ControlResult.badOrdinal) }
            do {
                return ControlReply.established(result: 0, bit: try self.engine.established())
            } catch {
                return self.errorReply(.getTPMEstablished, error.result)
            }
        case .setLocality(let locality):
            guard locality <= 4, !(locality == 4 && self.configuration.rejectLocality4) else {
                return ControlReply.result(ControlResult.badLocality)
            }
            self.engine.locality = locality
            return ControlReply.result(0)
        case .hashStart:
            guard running else { return ControlReply.result(ControlResult.badOrdinal) }
            self.identity?.stateWillChange()
            return ControlReply.result(self.engine.hashStart())
        case .hashEnd:
            guard running else { return ControlReply.result(ControlResult.badOrdinal) }
            self.identity?.stateWillChange()
            return ControlReply.result(self.engine.hashEnd())
        case .cancelTPMCommand:
            guard running else { return ControlReply.result(ControlResult.badOrdinal) }
            self.engine.cancel()
            return ControlReply.result(0)
        case .storeVolatile:
            guard running, let store = self.store else { return ControlReply.result(ControlResult.badOrdinal) }
            do {
                try store.store("volatilestate", try self.engine.volatileState())
                return ControlReply.result(0)
            } catch let error as EngineError {
                return ControlReply.result(error.result)
            } catch {
                self.logger.error("STORE_VOLATILE: \(error)")
                return ControlReply.result(ControlResult.fail)
            }
        case .resetTPMEstablished(let locality):
            guard running else { return ControlReply.result(ControlResult.badOrdinal) }
            self.identity?.stateWillChange()
            guard locality <= 4 else { return ControlReply.result(ControlResult.badLocality) }
            return ControlReply.result(self.engine.resetEstablished(locality: locality))
        case .getStateBlob(let flags, let type, let offset):
            return self.getStateBlob(flags: flags, type: type, offset: offset)
        case .stop:
            self.shutdownTPM()
            return ControlReply.result(0)
        case .getConfig:
            return ControlReply.config(
                stateKey: self.configuration.stateOptions.stateKey != nil,
                migrationKey: self.configuration.migrationKey != nil
            )
        case .setDataFD:
            guard self.dataConnection < 0, self.dataListener < 0 else {
                if let passedDescriptor { closeDescriptor(passedDescriptor) }
                return ControlReply.result(ControlResult.ioError)
            }
            guard let passedDescriptor else { return ControlReply.result(ControlResult.badParameter) }
            self.dataConnection = passedDescriptor
            self.dataFromControl = true
            self.connectionEpoch += 1
            return ControlReply.result(0)
        case .setBufferSize(let wanted):
            if wanted != 0 {
                guard !running else { return ControlReply.result(ControlResult.badOrdinal) }
            }
            let sizes = Engine.setBufferSize(wanted)
            self.bufferSize = sizes.size
            return ControlReply.bufferSize(size: sizes.size, minimum: sizes.minimum, maximum: sizes.maximum)
        case .getInfo(let flags, let offset):
            guard flags <= UInt64(UInt32.max), let info = Engine.info(flags: UInt32(flags)) else {
                return ControlReply.result(ControlResult.badParameter)
            }
            var bytes = Array(info.utf8)
            bytes.append(0)
            guard Int(offset) < bytes.count - 1 || (offset == 0 && bytes.count == 1) else {
                return ControlReply.result(ControlResult.badParameter)
            }
            let chunk = bytes[Int(offset)...].prefix(3072)
            return ControlReply.info(total: UInt32(bytes.count), chunk: chunk)
        case .vtpmGetIdentity:
            return self.vendorIdentityReply()
        }
    }

    /// GET_STATEBLOB: the blob in swtpm's migration format; the TPM keeps running.
    func getStateBlob(flags: UInt32, type: UInt32, offset: UInt32) -> [UInt8] {
        guard self.engine.isRunning else { return self.errorReply(.getStateBlob, ControlResult.badOrdinal) }
        guard let blobType = StateBlobType(rawValue: type) else {
            return self.errorReply(.getStateBlob, ControlResult.badParameter)
        }
        var blob: [UInt8]
        let replyFlags: UInt32
        if offset > 0, let cached = self.blobCache[type] {
            (blob, replyFlags) = cached
        } else {
            let plain: [UInt8]
            do {
                switch blobType {
                case .permanent:
                    plain = try self.store?.permanentState ?? self.engine.state(.permanent)
                case .volatile:
                    plain = try self.engine.volatileState()
                case .savestate:
                    // A TPM 2 never has a savestate blob; QEMU tolerates TPM_RETRY with no data.
                    return self.errorReply(.getStateBlob, ControlResult.retry)
                }
            } catch {
                self.logger.error("GET_STATEBLOB \(blobType.name): \(error)")
                return self.errorReply(.getStateBlob, error.result)
            }
            let stateKey = self.configuration.stateOptions.stateKey
            let keepLayer = flags & StateBlobFlags.decrypted == 0 && stateKey != nil
            do {
                blob = try MigrationBlob.encode(
                    plain,
                    stateKey: stateKey,
                    keepStateKeyLayer: keepLayer,
                    migrationKey: self.configuration.migrationKey
                )
            } catch {
                self.logger.error("GET_STATEBLOB \(blobType.name): \(error)")
                return self.errorReply(.getStateBlob, ControlResult.encryptError)
            }
            replyFlags = keepLayer ? StateBlobFlags.encrypted : 0
            if let identity = self.identity {
                do {
                    blob = try identity.claim(blob, type: type)
                } catch {
                    self.logger.error("GET_STATEBLOB \(blobType.name): cannot add the source claim: \(error)")
                    return self.errorReply(.getStateBlob, ControlResult.fail)
                }
            }
            self.blobCache[type] = (blob, replyFlags)
        }
        guard Int(offset) <= blob.count else { return self.errorReply(.getStateBlob, ControlResult.badParameter) }
        return ControlReply.stateBlob(result: 0, flags: replyFlags, data: blob[Int(offset)...])
    }

    /// SET_STATEBLOB: validate and hand the blob to libtpms, which keeps it in memory until the
    /// next CMD_INIT; nothing touches the disk here.
    func setStateBlob(flags: UInt32, type: UInt32, blob: [UInt8]) -> UInt32 {
        guard !self.engine.isRunning else { return ControlResult.badOrdinal }
        guard let blobType = StateBlobType(rawValue: type) else {
            self.logger.warning("SET_STATEBLOB: unknown blob type \(type)")
            return ControlResult.badParameter
        }
        let kind: Engine.StateKind =
            switch blobType {
            case .permanent: .permanent
            case .volatile: .volatile
            case .savestate: .savestate
            }
        if let store = self.store {
            do { try store.lock() } catch {
                self.logger.error("SET_STATEBLOB: \(error.message)")
                return ControlResult.fail
            }
        }
        if blob.isEmpty {
            if let identity = self.identity {
                identity.incoming[type] = nil
                return 0
            }
            do { try self.engine.setState(kind, []) } catch { return error.result }
            return 0
        }
        let plain: [UInt8]
        var claim: SourceClaim? = nil
        var unclaimed = blob
        do {
            if let identity = self.identity {
                (unclaimed, claim) = try SourceClaim.detach(from: blob, blobType: type, hostKey: identity.hostKey) {
                    id throws(StateStoreError) in try identity.publicKey(ofHost: id)
                }
            }
            plain = try MigrationBlob.decode(
                unclaimed,
                stateFlagEncrypted: flags & StateBlobFlags.encrypted != 0,
                stateKey: self.configuration.stateOptions.stateKey,
                migrationKey: self.configuration.migrationKey,
                policy: self.configuration.migrationPolicy
            )
        } catch {
            self.logger.warning("SET_STATEBLOB \(blobType.name) rejected: \(error.message)")
            switch error.code {
            case .keyMissing: return ControlResult.keyNotFound
            case .keyMismatch: return ControlResult.badKeyProperty
            case .decryption, .integrity: return ControlResult.decryptError
            case .untrustedSigner: return ControlResult.fail
            case .unsupportedVersion: return ControlResult.badVersion
            default: return ControlResult.badParameter
            }
        }
        if let identity = self.identity {
            // Kept here, not in libtpms' cache, until CMD_INIT has decided what to do with it.
            identity.incoming[type] = IncomingBlob(plain: plain, claim: claim)
            return 0
        }
        do {
            try self.engine.setState(kind, plain)
        } catch {
            self.logger.warning("SET_STATEBLOB \(blobType.name) rejected by libtpms: \(error)")
            return error.result
        }
        return 0
    }

    /// HASH_DATA: feeds the announced bytes to libtpms in chunks of at most 4096 as they arrive.
    /// Returns the result code, or nil when the connection must be closed.
    func streamHashData(firstBytes: [UInt8], length: Int) -> UInt32? {
        let fd = self.controlConnection
        let running = self.engine.isRunning
        var result: UInt32 = running ? 0 : ControlResult.badOrdinal
        if running { self.identity?.stateWillChange() }
        var pending = firstBytes
        var received = firstBytes.count
        let deadline = ProcessControl.monotonicNanoseconds() + Self.bodyDeadlineNanoseconds
        while true {
            while pending.count >= 4096 || (!pending.isEmpty && received == length) {
                let chunk = Array(pending.prefix(4096))
                pending.removeFirst(chunk.count)
                if running && result == 0 { result = self.engine.hashData(chunk) }
            }
            if received >= length { break }
            var more: [UInt8] = []
            guard readUntilFilled(&more, from: fd, to: min(length - received, 65536), deadline: deadline) else {
                return nil
            }
            received += more.count
            pending.append(contentsOf: more)
        }
        return result
    }
}

extension Error {
    /// The TPM_RESULT carried by an engine error, else TPM_FAIL.
    var result: UInt32 { (self as? EngineError)?.result ?? ControlResult.fail }
}
