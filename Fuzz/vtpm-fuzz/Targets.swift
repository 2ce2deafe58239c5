import CASigner
import CloneRekey
import EndorsementCA
import StateStore
import TPMWire

/// The parsers that take outside bytes, one fuzz target each. A target must never crash, whatever the bytes:
/// a parser answers with a value or a thrown error. Shared by the fuzzing build and the replay build.
enum Targets {
    static let all: [String: @Sendable ([UInt8]) -> Void] = [
        "control": control,
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

    /// A control message: 4-byte command code, then its payload.
    static func control(_ bytes: [UInt8]) {
        guard bytes.count >= 4 else { return }
        let raw = UInt32(bytes[0]) << 24 | UInt32(bytes[1]) << 16 | UInt32(bytes[2]) << 8 | UInt32(bytes[3])
        _ = try? ControlRequest(code: ControlCode(rawValue: raw), payload: Array(bytes.dropFirst(4)))
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
}
