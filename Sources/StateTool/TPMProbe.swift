import CloneRekey
import Crypto
import EndorsementCA
import TPMEngine
import TPMWire

/// Read-only questions to a TPM loaded from a state at rest: the engine runs on an
/// ``InMemoryEngineStorage`` copy, so nothing it does reaches the directory.
struct TPMProbe {
    let tpm: EngineCommandRunner

    /// Loads `permanentState` into `engine` (no volatile state: a stopped TPM powered on) and sends
    /// TPM2_Startup(CLEAR).
    static func start(_ engine: Engine, permanentState: [UInt8]) throws -> TPMProbe {
        do {
            try engine.setState(.permanent, permanentState)
            try engine.setState(.volatile, [])
            try engine.initialize()
        } catch {
            throw StateToolError(.engine, "libtpms refused the permanent state: \(error)")
        }
        let probe = TPMProbe(tpm: EngineCommandRunner(engine: engine))
        let rc = try probe.tpm.responseCode(TPM2Commands.startup(.clear))
        guard rc == 0 else {
            throw StateToolError(.engine, "TPM2_Startup(CLEAR) returned 0x\(String(rc, radix: 16))")
        }
        return probe
    }

    /// The EK of `template` (TPM2_CreatePrimary in the endorsement hierarchy, then flushed), as
    /// a marshalled TPM2B_PUBLIC.
    func endorsementKey(_ template: EKTemplate) throws -> [UInt8] {
        let created = try self.tpm.run(
            TPM2Commands.createPrimary(hierarchy: TPM2Handle.endorsement, publicArea: template.publicArea),
            TPM2Responses.parseCreatePrimary
        )
        try self.tpm.run(TPM2Commands.flushContext(created.handle))
        return created.outPublic
    }

    /// Every defined NV index's public area, in handle order.
    func nvIndices() throws -> [NVPublic] {
        var result: [NVPublic] = []
        var next: UInt32 = 0x0100_0000
        for _ in 0..<64 {
            let (handles, more) = try self.tpm.run(
                TPM2Commands.getHandles(first: next, count: 64),
                TPM2Responses.parseHandles
            )
            for handle in handles where handle >> 24 == 0x01 {
                if let nvPublic = try self.tpm.nvReadPublic(handle) { result.append(nvPublic) }
            }
            guard more, let last = handles.last, last >> 24 == 0x01, last < 0x01FF_FFFF else { break }
            next = last + 1
        }
        return result
    }

    /// The whole contents of an NV index with TPMA_NV_PPREAD (platform authorization, empty after
    /// TPM2_Startup(CLEAR)), or nil when it is not defined.
    func nvContents(_ index: UInt32) throws -> [UInt8]? {
        guard let nvPublic = try self.tpm.nvReadPublic(index) else { return nil }
        var data: [UInt8] = []
        let total = Int(nvPublic.dataSize)
        while data.count < total {
            let chunk = min(1024, total - data.count)
            data += try self.tpm.run(
                TPM2Commands.nvRead(index: index, size: UInt16(chunk), offset: UInt16(data.count)),
                TPM2Responses.parseNVRead
            )
        }
        return data
    }

    /// The PCR banks and their allocated PCRs.
    func pcrBanks() throws -> [TPM2Responses.PCRBank] {
        try self.tpm.run(TPM2Commands.getPCRAllocation(), TPM2Responses.parsePCRAllocation)
    }

    /// SHA-256 of the key's SubjectPublicKeyInfo DER, hex.
    static func fingerprint(_ key: EKPublicKey) throws -> String {
        Array(SHA256.hash(data: try key.subjectPublicKeyInfoDER())).hexString
    }
}
