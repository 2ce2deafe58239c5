import CloneRekey
import Foundation
public import StateStore
import TPMEngine
import TPMWire

extension StateProvisioner {
    /// A PCR bank `create --pcr-banks` can activate.
    public enum PCRBankName: String, CaseIterable, Sendable {
        case sha1, sha256, sha384, sha512

        /// Its TPM_ALG_ID.
        public var algorithm: UInt16 {
            switch self {
            case .sha1: TPM2Algorithm.sha1
            case .sha256: TPM2Algorithm.sha256
            case .sha384: TPM2Algorithm.sha384
            case .sha512: TPM2Algorithm.sha512
            }
        }

        /// Parses "sha256,sha384" (swtpm_setup's `--pcr-banks` syntax; order and repeats do not matter).
        /// - Throws: ``StateToolError`` (`invalidArgument`) for an empty list or an unknown bank.
        public static func parseList(_ text: String) throws -> Set<PCRBankName> {
            try parseNames(text, option: "--pcr-banks")
        }
    }

    /// An endorsement key `create --ek` can certify.
    public enum EndorsementKeyName: String, CaseIterable, Sendable {
        case rsa, ecc

        /// Parses "rsa,ecc".
        /// - Throws: ``StateToolError`` (`invalidArgument`) for an empty list or an unknown key type.
        public static func parseList(_ text: String) throws -> Set<EndorsementKeyName> {
            try parseNames(text, option: "--ek")
        }
    }

    /// What `create` makes beyond a blank TPM.
    public struct CreateOptions: Sendable {
        /// The PCR banks to activate (all PCRs of each; the others off), or nil for libtpms' default
        /// (sha1, sha256, sha384 and sha512 all active in libtpms 0.9, as vtpmd manufactures a TPM).
        public var pcrBanks: Set<PCRBankName>?
        /// The EKs that get a certificate (with a CA); both EKs exist either way (they are derived from
        /// the endorsement seed, not stored).
        public var endorsementKeys: Set<EndorsementKeyName>

        public init(pcrBanks: Set<PCRBankName>? = nil, endorsementKeys: Set<EndorsementKeyName> = [.rsa, .ecc]) {
            self.pcrBanks = pcrBanks
            self.endorsementKeys = endorsementKeys
        }
    }

    /// A fresh TPM from libtpms (TPM manufacture), with `pcrBanks` allocated when given: TPM2_Startup(CLEAR),
    /// TPM2_PCR_Allocate (platform authorization, empty on a new TPM), TPM2_Shutdown(CLEAR), then a power
    /// cycle (terminate, initialize, TPM2_Startup(CLEAR): the TPM Reset that makes the allocation take
    /// effect), a check that exactly those banks are active, and TPM2_Shutdown(CLEAR) again.
    /// - Returns: The permanent state; the engine is terminated.
    /// - Throws: ``StateToolError``; the engine is then terminated.
    static func manufacture(_ engine: Engine, pcrBanks: Set<PCRBankName>?) throws -> [UInt8] {
        do {
            return try self.manufactureSteps(engine, pcrBanks: pcrBanks)
        } catch let error as StateToolError {
            engine.terminate()
            throw error
        } catch {
            engine.terminate()
            throw StateToolError(.engine, "libtpms could not manufacture a TPM: \(error)")
        }
    }

    private static func manufactureSteps(_ engine: Engine, pcrBanks: Set<PCRBankName>?) throws -> [UInt8] {
        try engine.initialize()
        guard let pcrBanks else {
            let fresh = try engine.state(.permanent)
            engine.terminate()
            return fresh
        }
        let tpm = EngineCommandRunner(engine: engine)
        try self.startup(tpm)
        let implemented = try tpm.run(TPM2Commands.getPCRAllocation(), TPM2Responses.parsePCRAllocation)
        let wanted = Set(pcrBanks.map(\.algorithm))
        try self.allocate(tpm, pcrBanks, implemented: implemented)
        try tpm.run(TPM2Commands.shutdown(.clear))
        let allocated = try engine.state(.permanent)
        engine.terminate()

        // The power cycle: the allocation applies at this TPM Reset.
        try engine.setState(.permanent, allocated)
        try engine.setState(.volatile, [])
        try engine.initialize()
        try self.startup(tpm)
        let active = try tpm.run(TPM2Commands.getPCRAllocation(), TPM2Responses.parsePCRAllocation)
            .filter { !$0.pcrs.isEmpty }
        guard Set(active.map(\.hashAlgorithm)) == wanted,
            active.allSatisfy({ $0.pcrs.count == TPM2Commands.implementedPCRCount })
        else {
            throw StateToolError(
                .engine,
                "after TPM2_PCR_Allocate and a TPM Reset the active PCR banks are "
                    + "\(active.map(\.algorithmName).joined(separator: ", ")), not \(self.names(wanted))"
            )
        }
        try tpm.run(TPM2Commands.shutdown(.clear))
        let permanent = try engine.state(.permanent)
        engine.terminate()
        return permanent
    }

    /// TPM2_PCR_Allocate (platform authorization, empty at rest) of all PCRs of `pcrBanks` and none of the
    /// other implemented banks (a bank left out of the selection would keep its allocation).
    private static func allocate(
        _ tpm: EngineCommandRunner,
        _ pcrBanks: Set<PCRBankName>,
        implemented: [TPM2Responses.PCRBank]
    ) throws {
        let wanted = Set(pcrBanks.map(\.algorithm))
        let missing = pcrBanks.filter { bank in !implemented.contains { $0.hashAlgorithm == bank.algorithm } }
        guard missing.isEmpty else {
            throw StateToolError(
                .invalidArgument,
                "libtpms does not implement the PCR bank(s) \(missing.map(\.rawValue).sorted().joined(separator: ", "))"
            )
        }
        let selection = implemented.map { bank in
            TPM2Responses.PCRBank(
                hashAlgorithm: bank.hashAlgorithm,
                pcrs: wanted.contains(bank.hashAlgorithm) ? Array(0..<TPM2Commands.implementedPCRCount) : []
            )
        }
        let result = try tpm.run(TPM2Commands.pcrAllocate(selection), TPM2Responses.parsePCRAllocate)
        guard result.success else {
            throw StateToolError(
                .engine,
                "TPM2_PCR_Allocate refused the banks \(self.names(wanted)) (NV needed \(result.sizeNeeded) bytes, "
                    + "available \(result.sizeAvailable))"
            )
        }
    }

    private static func startup(_ tpm: EngineCommandRunner) throws {
        let rc = try tpm.responseCode(TPM2Commands.startup(.clear))
        guard rc == 0 else {
            throw StateToolError(.engine, "TPM2_Startup(CLEAR) returned 0x\(String(rc, radix: 16))")
        }
    }

    private static func names(_ algorithms: Set<UInt16>) -> String {
        algorithms.sorted().map { TPM2Responses.PCRBank(hashAlgorithm: $0, pcrs: []).algorithmName }
            .joined(separator: ",")
    }
}

/// Parses a comma-separated list of `T`'s raw values.
private func parseNames<T: RawRepresentable & CaseIterable & Hashable>(
    _ text: String,
    option: String
) throws -> Set<T> where T.RawValue == String {
    let items = text.split(separator: ",", omittingEmptySubsequences: false).map {
        $0.trimmingCharacters(in: .whitespaces).lowercased()
    }
    let allowed = T.allCases.map(\.rawValue).joined(separator: ", ")
    guard !items.isEmpty, !items.contains(where: \.isEmpty) else {
        throw StateToolError(.invalidArgument, "\(option) needs a comma-separated list of \(allowed), not '\(text)'")
    }
    var result: Set<T> = []
    for item in items {
        guard let value = T(rawValue: item) else {
            throw StateToolError(.invalidArgument, "\(option): unknown value '\(item)' (expected \(allowed))")
        }
        result.insert(value)
    }
    return result
}

extension StateProvisioner {
    /// Sets the active PCR banks of the TPM at rest in `location` (swtpm_setup's `--reconfigure`, which
    /// libvirt runs before every start of a domain with `<active_pcr_banks>`): TPM2_Startup(CLEAR),
    /// TPM2_PCR_Allocate, TPM2_Shutdown(CLEAR) on an in-memory copy; the permanent state is written only
    /// when the allocation changed, and keeps its identity record. The new banks become active at the
    /// TPM's next reset, the VM's start.
    /// - Returns: Whether the state was changed.
    /// - Throws: ``StateToolError``; nothing is written then.
    public static func reconfigurePCRBanks(
        location: StateLocation,
        stateKey: StateKey?,
        banks: Set<PCRBankName>
    ) throws -> Bool {
        var options = StateDirectory.Options()
        options.stateKey = stateKey
        let store = StateDirectory(location: location, options: options, logger: OpenedState.silentLogger)
        let permanent: [UInt8]
        do {
            try store.lock()
            guard let loaded = try store.load("permall") else {
                throw StateToolError(.notFound, "\(location.path) holds no TPM to reconfigure")
            }
            permanent = loaded
        } catch let error as StateStoreError {
            if error.code == .locked {
                throw StateToolError(.locked, "\(location.path) is locked: a running vtpmd or swtpm is using it")
            }
            throw StateToolError(.damaged, "cannot read the TPM in \(location.path): \(error.message)")
        }
        let engine = try self.engine(InMemoryEngineStorage())
        defer { engine.terminate() }
        let tpm = EngineCommandRunner(engine: engine)
        let wanted = Set(banks.map(\.algorithm))
        do {
            try engine.setState(.permanent, permanent)
            try engine.setState(.volatile, [])
            try engine.initialize()
            try self.startup(tpm)
            let current = try tpm.run(TPM2Commands.getPCRAllocation(), TPM2Responses.parsePCRAllocation)
            let active = current.filter { !$0.pcrs.isEmpty }
            if Set(active.map(\.hashAlgorithm)) == wanted,
                active.allSatisfy({ $0.pcrs.count == TPM2Commands.implementedPCRCount })
            {
                return false
            }
            try self.allocate(tpm, banks, implemented: current)
            try tpm.run(TPM2Commands.shutdown(.clear))
            let allocated = try engine.state(.permanent)
            try store.store("permall", allocated)
            if case .directory(let path) = location { try TargetOwnership.giveFilesToDirectoryOwner(path) }
            return true
        } catch let error as StateToolError {
            throw error
        } catch {
            throw StateToolError(.engine, "reconfiguring the PCR banks of \(location.path) failed: \(error)")
        }
    }
}
