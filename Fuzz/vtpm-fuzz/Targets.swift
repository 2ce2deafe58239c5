import CASigner
import CloneRekey
import EndorsementCA
import Glibc
import StateStore
import TPMEngine
import TPMWire

/// The parsers that take outside bytes, one fuzz target each. A target must never crash, whatever the bytes:
/// a parser answers with a value or a thrown error. Shared by the fuzzing build and the replay build.
enum Targets {
    static let all: [String: @Sendable ([UInt8]) -> Void] = [
        "control": control,
        "tpm-frame": tpmFrame,
        "identity": identity,
        "libtpms-state": libtpmsState,
        "tpm-response": tpmResponse,
        "blob-container": blobContainer,
        "source-claim": sourceClaim,
        "state-file": stateFile,
        "migration-blob": migrationBlob,
        "linear-file": linearFile,
        "host-config": hostConfiguration,
        "certificate": certificate,
        "signer-message": signerMessage,
    ]

    /// A fixed 256-bit key, so that the encrypted paths are reached (a fuzzer rarely finds a valid MAC; the
    /// corpus seeds hold files encrypted with this key).
    static let key: StateKey? = try? StateKey(bytes: Array(0..<32))

    /// A control connection's byte stream, cut into reads by the first byte (1 to 256 bytes each), through the
    /// incremental decoder; and the fixed-size request decoder on its own.
    static func control(_ bytes: [UInt8]) {
        guard let first = bytes.first else { return }
        let stream = bytes.dropFirst()
        var decoder = ControlDecoder(maximumBlobSize: 1 << 16)
        var offset = stream.startIndex
        while offset < stream.endIndex {
            let end = min(offset + Int(first) + 1, stream.endIndex)
            decoder.receive(stream[offset..<end])
            offset = end
            while decoder.next() != nil {}
            _ = decoder.phase
        }
        guard stream.count >= 4 else { return }
        let raw = stream.prefix(4).reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        _ = try? ControlRequest(code: ControlCode(rawValue: raw), payload: Array(stream.dropFirst(4)))
    }

    /// The data channel's framing: the stream cut into reads by the first byte, each read limited as the server
    /// limits it, into a 4 KiB buffer.
    static func tpmFrame(_ bytes: [UInt8]) {
        guard let first = bytes.first else { return }
        var buffer = [UInt8](repeating: 0, count: 4096 + 16)
        var framer = TPMCommandFramer(capacity: buffer.count)
        var rest = bytes.dropFirst()
        while !rest.isEmpty {
            let n = min(rest.count, Int(first) + 1, framer.readLimit(in: buffer))
            guard n > 0 else { return }
            let at = framer.filled
            buffer.replaceSubrange(at..<(at + n), with: rest.prefix(n))
            rest = rest.dropFirst(n)
            if case .frame(let frame) = framer.received(
                n,
                in: buffer,
                maximumCommand: 4096,
                allowSendCommand: first & 1 != 0
            ) {
                precondition(frame.command.upperBound <= buffer.count && frame.command.count >= 10)
            }
        }
        _ = framer.expire(in: buffer)
    }

    /// The identity a state directory records: the instance marker file and the record in the permanent state.
    static func identity(_ bytes: [UInt8]) {
        _ = try? InstanceMarker.decode(bytes)
        _ = try? IdentityRecord.decode(bytes)
    }

    /// A TPM response as the rekey procedure and the tools read it.
    static func tpmResponse(_ bytes: [UInt8]) {
        _ = TPMFrame.declaredSize(bytes)
        _ = TPMFrame.responseCode(bytes)
        _ = TPMFrame.isWellFormedResponse(bytes, maximum: 4096)
        _ = try? TPM2Responses.parseCreatePrimary(bytes)
        _ = try? TPM2Responses.parseCreate(bytes)
        _ = try? TPM2Responses.parseLoad(bytes)
        _ = try? TPM2Responses.parseUnseal(bytes)
        _ = try? TPM2Responses.parseReadPublic(bytes)
        _ = try? TPM2Responses.parseHandles(bytes)
        _ = try? TPM2Responses.parsePCRRead(bytes)
        _ = try? TPM2Responses.parseNVReadPublic(bytes)
        _ = try? TPM2Responses.parseNVRead(bytes)
        _ = try? TPM2Responses.parsePCRAllocation(bytes)
        _ = try? TPM2Responses.parsePCRAllocate(bytes)
        _ = try? TPM2PublicArea(decoding: bytes)
        _ = try? NVPublic(decoding: bytes)
    }

    static func blobContainer(_ bytes: [UInt8]) {
        _ = BlobContainer.shape(of: bytes)
        _ = try? BlobContainer(decoding: bytes)
        _ = try? BlobContainer.decodeRecords(bytes)
    }

    static let hostKey: HostKey? = try? HostKey(bytes: Array(repeating: 7, count: 32))

    /// A SET_STATEBLOB blob with a source claim: detached and verified with a fixed host key, any other host
    /// "trusted" with a fixed public key (the parse paths; a fuzzer does not forge signatures).
    static func sourceClaim(_ bytes: [UInt8]) {
        guard let hostKey = self.hostKey else { return }
        _ = try? SourceClaim.detach(from: bytes, blobType: 1, hostKey: hostKey) { _ in Array(repeating: 9, count: 32) }
    }

    /// A state file as vtpmd reads it: swtpm's headerless, legacy and versioned formats, plain and encrypted.
    static func stateFile(_ bytes: [UInt8]) {
        _ = try? StateFile.decode(bytes, key: nil)
        _ = try? StateFile.decode(bytes, key: self.key)
        _ = try? StateFile.decode(bytes, key: self.key, decrypt: false)
    }

    /// A SET_STATEBLOB blob: the first byte chooses the flags and keys, the rest is the blob.
    static func migrationBlob(_ bytes: [UInt8]) {
        guard let first = bytes.first else { return }
        let blob = Array(bytes.dropFirst())
        _ = try? MigrationBlob.decode(
            blob,
            stateFlagEncrypted: first & 1 != 0,
            stateKey: first & 2 != 0 ? self.key : nil,
            migrationKey: first & 4 != 0 ? self.key : nil,
            policy: first & 8 != 0 ? .strict : .lenient
        )
    }

    static func linearFile(_ bytes: [UInt8]) {
        _ = try? LinearStateFile(decoding: bytes)
    }

    static func hostConfiguration(_ bytes: [UInt8]) {
        _ = try? HostConfiguration.parse(bytes, source: "fuzz")
    }

    /// What vtpm-state and the signer read: EK certificates, SubjectPublicKeyInfo, TPM2B_PUBLIC.
    static func certificate(_ bytes: [UInt8]) {
        _ = try? EKCertificateInfo(der: bytes)
        _ = try? EKPublicKey(subjectPublicKeyInfoDER: bytes)
        _ = try? EKPublicKey(tpm2bPublic: bytes)
    }

    static func signerMessage(_ bytes: [UInt8]) {
        _ = try? SignerMessage.Request(decoding: bytes)
        _ = try? SignerMessage.Response(decoding: bytes)
    }

    /// libtpms' own state loading (the libtpms #614 class: crafted blocks in a state blob), through the engine as
    /// vtpmd drives it: the first byte's bit 0 says whether the rest is the permanent state, or the volatile
    /// state loaded beside a good permanent one. When libtpms takes it, a few commands run on it.
    /// libtpms is not instrumented, so this target mutates blindly: it looks for crashes, not coverage.
    static func libtpmsState(_ bytes: [UInt8]) {
        guard let first = bytes.first, let fixture = LibtpmsFixture.shared else { return }
        let blob = Array(bytes.dropFirst())
        fixture.storage.blobs =
            first & 1 != 0 ? ["permall": blob] : ["permall": fixture.permanent, "volatilestate": blob]
        defer { fixture.engine.terminate() }
        guard (try? fixture.engine.initialize()) != nil else { return }
        for command in LibtpmsFixture.commands {
            var buffer = command
            _ = fixture.engine.process(&buffer)
        }
    }

    /// Seed inputs a target cannot get from files: `vtpm-fuzz --seeds TARGET DIR` writes them.
    static let seeds: [String: @Sendable () -> [[UInt8]]] = [
        "libtpms-state": {
            guard let fixture = LibtpmsFixture.shared else { return [] }
            return [[1] + fixture.permanent, [0] + fixture.volatile]
        }
    ]
}

/// One engine for the fuzzing process (libtpms is process-global), over blobs in memory, and a TPM it
/// manufactured as the good baseline.
final class LibtpmsFixture: EngineStorage {
    nonisolated(unsafe) static let shared = LibtpmsFixture()

    /// TPM2_Startup(CLEAR), GetRandom(16), GetCapability(TPM properties), ReadClock.
    static let commands: [[UInt8]] = [
        TPMFrame.command(code: 0x144, body: [0, 0]),
        TPMFrame.command(code: 0x17b, body: [0, 16]),
        TPMFrame.command(code: 0x17a, body: [0, 0, 0, 6, 0, 0, 1, 0, 0, 0, 0, 64]),
        TPMFrame.command(code: 0x181, body: []),
    ]

    var blobs: [String: [UInt8]] = [:]
    var storage: LibtpmsFixture { self }
    private(set) var engine: Engine! = nil
    private(set) var permanent: [UInt8] = []
    private(set) var volatile: [UInt8] = []

    private init?() {
        // libtpms explains every state it refuses on stderr: thousands of lines a second under the fuzzer.
        Engine.setDebug(fd: open("/dev/null", O_WRONLY), level: 0, prefix: "")
        guard let engine = try? Engine(storage: self) else { return nil }
        self.engine = engine
        guard (try? engine.initialize()) != nil else { return nil }
        var startup = Self.commands[0]
        _ = engine.process(&startup)
        guard let permanent = try? engine.state(.permanent), let volatile = try? engine.volatileState() else {
            return nil
        }
        self.permanent = permanent
        self.volatile = volatile
        engine.terminate()
    }

    func prepare() -> Bool { true }
    func load(_ name: String) -> StorageLoadResult { self.blobs[name].map { .data($0) } ?? .notFound }
    func store(_ name: String, _ data: [UInt8]) -> Bool {
        self.blobs[name] = data
        return true
    }
    func delete(_ name: String, mustExist: Bool) -> Bool { self.blobs.removeValue(forKey: name) != nil || !mustExist }
}
