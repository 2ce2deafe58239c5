import Logging
import StateStore
import TPMEngine
import TPMWire
import _VTPMPosix

/// One control connection: the decoder of what it sent, the descriptors that came with it, the replies
/// it has not read yet. A reference, so the loop and the protocol core can both hold it while a message
/// is executed.
final class ControlConnection {
    let fd: Int32
    var decoder: ControlDecoder
    /// Descriptors received with its bytes (SCM_RIGHTS), in order; SET_DATAFD takes the first.
    var descriptors: [Int32] = []
    /// When the first byte of the message being received arrived (its deadline runs from there).
    var messageStarted: UInt64 = 0
    /// Replies not yet written.
    var outbox = Outbox()
    /// The HASH_DATA being received: its result so far (nil: none).
    var hashResult: UInt32? = nil
    /// A peer waiting for its turn: the next command is not read-only (``Server/isReadOnly(_:)``).
    var parked = false

    init(fd: Int32, maximumBlobSize: Int) {
        self.fd = fd
        self.decoder = ControlDecoder(maximumBlobSize: maximumBlobSize)
    }

    /// Closes the connection and the descriptors it was sent and did not use.
    func close() {
        closeDescriptor(self.fd)
        self.releaseDescriptors()
    }

    func releaseDescriptors() {
        for fd in self.descriptors { closeDescriptor(fd) }
        self.descriptors = []
    }
}

/// What the protocol core asks the poll loop to do with a connection; the core itself never reads,
/// writes or closes a socket.
enum ConnectionAction: Hashable {
    /// Send these bytes (after any not yet sent).
    case reply([UInt8])
    /// Serve this descriptor as the data channel (SET_DATAFD).
    case adoptDataDescriptor(Int32)
    /// Close the connection once the replies before are out.
    case close(reason: String)
    /// End the process once the replies before are out (SHUTDOWN).
    case exit
}

extension Server {
    /// How long a control command may take to arrive completely (swtpm uses 500 ms).
    static let controlDeadlineNanoseconds: UInt64 = 500_000_000
    /// SET_STATEBLOB and HASH_DATA bodies may be large: they get a longer total deadline.
    static let bodyDeadlineNanoseconds: UInt64 = 10_000_000_000
    /// swtpm's first read size: 4 + sizeof(hash-data struct).
    static let firstControlRead = 4104

    /// At most this many received descriptors are held for a connection (SET_DATAFD takes one); others are
    /// closed at once, so a peer cannot pile them up while a long message arrives.
    static let maximumHeldDescriptors = 4

    /// Takes bytes (and descriptors) received on a control connection.
    func receiveControl(_ bytes: [UInt8], descriptors: [Int32], on connection: ControlConnection, now: UInt64) {
        if connection.decoder.phase == .idle { connection.messageStarted = now }
        connection.decoder.receive(bytes)
        for fd in descriptors {
            if connection.descriptors.count < Self.maximumHeldDescriptors {
                connection.descriptors.append(fd)
            } else {
                closeDescriptor(fd)
            }
        }
    }

    /// Decodes and executes the next complete message of the served control connection.
    /// - Returns: what to do, or nil when no complete message is buffered.
    func stepControl(_ connection: ControlConnection, now: UInt64) -> [ConnectionAction]? {
        guard let message = connection.decoder.next() else { return nil }
        let actions = self.execute(message, on: connection)
        // A message ended: the bytes of the next one arrived no later than now, its deadline runs from here.
        if case .hashData = message {} else { connection.messageStarted = now }
        if connection.decoder.phase == .idle { connection.releaseDescriptors() }
        return actions
    }

    /// Executes one decoded message.
    func execute(_ message: ControlDecoder.Message, on connection: ControlConnection) -> [ConnectionAction] {
        switch message {
        case .request(let request):
            self.logger.trace("control command", metadata: ["request": "\(request)"])
            var actions: [ConnectionAction] = []
            var descriptor: Int32? = nil
            if request == .setDataFD, !connection.descriptors.isEmpty {
                descriptor = connection.descriptors.removeFirst()
            }
            let reply = self.handle(request, passedDescriptor: descriptor)
            actions.append(.reply(reply))
            if let descriptor, reply == ControlReply.result(0) { actions.append(.adoptDataDescriptor(descriptor)) }
            if request == .shutdown { actions.append(.exit) }
            return actions
        case .setStateBlob(let flags, let type, let blob):
            return [.reply(ControlReply.result(self.setStateBlob(flags: flags, type: type, blob: blob)))]
        case .hashData(let chunk):
            if connection.hashResult == nil {
                let running = self.engine.isRunning
                if running { self.identity?.stateWillChange() }
                connection.hashResult = running ? 0 : ControlResult.badOrdinal
            }
            if connection.hashResult == 0 { connection.hashResult = self.engine.hashData(chunk) }
            return []
        case .hashDataEnd:
            let result = connection.hashResult ?? (self.engine.isRunning ? 0 : ControlResult.badOrdinal)
            connection.hashResult = nil
            return [.reply(ControlReply.result(result))]
        case .unknownCommand(let code):
            self.logger.warning("control: unknown command code 0x\(String(code.rawValue, radix: 16))")
            return [.reply(ControlReply.result(ControlResult.badOrdinal))]
        case .invalid(let code, let error):
            self.logger.warning("control: \(code): \(error)")
            return [.reply(self.errorReply(code, ControlResult.badParameter))]
        case .blobTooLarge(let length):
            self.logger.warning("control: SET_STATEBLOB of \(length) bytes exceeds the limit; closing")
            return [
                .reply(ControlReply.result(ControlResult.badParameter)),
                .close(reason: "SET_STATEBLOB too large"),
            ]
        }
    }

    /// When the message being received on `connection` must be complete (nil: none is). While replies
    /// wait to be read, messages wait too, and the reply deadline applies instead.
    func controlDeadline(_ connection: ControlConnection) -> UInt64? {
        guard connection.outbox.isEmpty else { return nil }
        return switch connection.decoder.phase {
        case .idle: nil
        case .command: connection.messageStarted + Self.controlDeadlineNanoseconds
        case .body: connection.messageStarted + Self.bodyDeadlineNanoseconds
        }
    }

    /// The message being received missed its deadline: an error reply where the command is known, and
    /// the connection is closed (what follows in the stream can no longer be framed).
    func expireControl(_ connection: ControlConnection) -> [ConnectionAction] {
        let buffered = connection.decoder.bufferedCount
        switch connection.decoder.phase {
        case .idle:
            return []
        case .command(nil):
            self.logger.warning("control: short command (\(buffered) bytes), closing the connection")
            return [.close(reason: "short command")]
        case .command(let code?):
            self.logger.warning("control: \(code) incomplete (\(buffered) bytes) at the deadline; closing")
            return [.reply(self.errorReply(code, ControlResult.badParameter)), .close(reason: "incomplete command")]
        case .body(let code):
            self.logger.warning("control: \(code) body incomplete at the deadline; closing")
            connection.hashResult = nil
            // swtpm answers a short HASH_DATA with TPM_IOERROR.
            let result = code == .hashData ? ControlResult.ioError : ControlResult.badParameter
            return [.reply(ControlReply.result(result)), .close(reason: "incomplete body")]
        }
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
            // The loop adopts the descriptor (``ConnectionAction/adoptDataDescriptor(_:)``).
            guard self.dataConnection < 0, self.dataListener < 0 else {
                if let passedDescriptor { closeDescriptor(passedDescriptor) }
                return ControlReply.result(ControlResult.ioError)
            }
            guard let passedDescriptor else { return ControlReply.result(ControlResult.badParameter) }
            // QEMU passes one end of a socket pair; anything else (a pipe, a tty) could block the loop's writes.
            guard Socket.isSocket(passedDescriptor) else {
                closeDescriptor(passedDescriptor)
                return ControlReply.result(ControlResult.badParameter)
            }
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
            self.logger.warning("SET_STATEBLOB \(blobType.name) refused: \(error)")
            return error.result
        }
        return 0
    }
}

extension Error {
    /// The TPM_RESULT carried by an engine error, else TPM_FAIL.
    var result: UInt32 { (self as? EngineError)?.result ?? ControlResult.fail }
}
