public import TPMEngine
public import TPMWire

/// The clone-rekey procedure (ARCHITECTURE.md, "The clone-rekey procedure", steps 1-3): gives a
/// copied TPM state a new endorsement identity while it keeps its storage hierarchy, PCRs and
/// running state.
///
/// 1. **Cold phase**, on the permanent blob alone (no volatile state, so platform authorization is
///    the empty one of a fresh TPM2_Startup): TPM2_Startup(CLEAR), TPM2_ChangeEPS, the RSA 2048 and
///    ECC P-256 EKs from the TCG default templates, their certificates from the caller's closure
///    written to 0x01C00002 / 0x01C0000A (replacing whatever index was there), the identity counter
///    incremented and the history index extended. The new permanent blob is taken without
///    TPM2_Shutdown, so it records a running (non-orderly) TPM as the source's blob does.
/// 2. **Seed patch** of the volatile blob (``SeedPatch``); by default the cold phase's TPM Reset is
///    also undone in the new permanent blob's reset counters, so the guest sees no reset and its
///    saved storage-hierarchy contexts and sessions keep loading.
/// 3. **Warm phase**: libtpms is initialized with the new permanent and the patched volatile
///    blob, and every transient object is flushed (an old endorsement key may be loaded).
///
/// On success the engine is left running in the warm state, ready to serve the guest. The engine's
/// storage receives libtpms' NVRAM writes of both phases (the warm phase's init writes P1 as
/// "permall" last); the caller keeps it in staging mode and commits only when this returns. The
/// cold phase loads no volatile state, not even one the storage holds. On any failure the engine
/// is terminated and the error is thrown; the caller discards the staged writes, so nothing on
/// disk changes.
public struct RekeyProcedure: Sendable {
    /// Issues the EK certificates for the two new EKs, given as marshalled TPM2B_PUBLIC (the
    /// `outPublic` of TPM2_CreatePrimary, as `EKPublicKey(tpm2bPublic:)` takes it). Returns the DER certificates (at most 2048 bytes each, libtpms'
    /// MAX_NV_INDEX_SIZE).
    public typealias CertificateIssuer = (_ rsaEKPublic: [UInt8], _ eccEKPublic: [UInt8]) throws -> (
        rsaCertDER: [UInt8], eccCertDER: [UInt8]
    )

    /// The identity NV indices. Both are platform-created, readable with owner, platform or their
    /// own (empty) authorization, writable only with platform authorization, and exempt from
    /// dictionary-attack protection.
    public struct IdentityIndices: Sendable, Hashable {
        /// The TPM_NT_COUNTER index incremented at every rekey.
        public var counter: UInt32
        /// The TPM_NT_EXTEND (SHA-256) index extended with a digest of every clone/rollback event.
        public var history: UInt32

        public init(counter: UInt32 = 0x0140_0001, history: UInt32 = 0x0140_0002) {
            self.counter = counter
            self.history = history
        }

        /// PLATFORMCREATE | PPWRITE | PPREAD | OWNERREAD | AUTHREAD | NO_DA (plus the index type).
        public static let attributes: NVAttributes = [.platformCreate, .ppWrite, .ppRead, .ownerRead, .authRead, .noDA]

        /// The counter's definition: 8 bytes, SHA-256 name, no policy.
        public var counterPublic: NVPublic {
            NVPublic(index: self.counter, attributes: Self.attributes.union(.counter), dataSize: 8)
        }

        /// The history index's definition: a SHA-256 extend index of 32 bytes, no policy.
        public var historyPublic: NVPublic {
            NVPublic(index: self.history, attributes: Self.attributes.union(.extend), dataSize: 32)
        }
    }

    /// The attributes of the EK certificate indices, as swtpm_setup defines them:
    /// PLATFORMCREATE | AUTHREAD | OWNERREAD | PPREAD | PPWRITE | NO_DA | WRITEDEFINE (not locked).
    public static let certificateIndexAttributes: NVAttributes = [
        .platformCreate, .authRead, .ownerRead, .ppRead, .ppWrite, .noDA, .writeDefine,
    ]

    /// libtpms' MAX_NV_INDEX_SIZE.
    public static let maximumCertificateSize = 2048

    public var identityIndices: IdentityIndices
    /// Bytes per TPM2_NV_Write (the TPM's MAX_NV_BUFFER_SIZE; 1024 in libtpms).
    public var nvBufferSize: Int
    /// Undo the cold phase's TPM Reset in totalResetCount/resetCount, so that contexts the guest
    /// saved in the storage hierarchy and sessions keep loading (see
    /// ``SeedPatch/restoreResetCounters(_:oldPermanent:seeds:)``). On by default.
    public var preserveResetCounters: Bool

    public init(
        identityIndices: IdentityIndices = IdentityIndices(),
        nvBufferSize: Int = 1024,
        preserveResetCounters: Bool = true
    ) {
        precondition(nvBufferSize > 0 && nvBufferSize <= 1024)
        self.identityIndices = identityIndices
        self.nvBufferSize = nvBufferSize
        self.preserveResetCounters = preserveResetCounters
    }

    /// Runs the procedure on `engine`, which must be stopped.
    /// - Parameters:
    ///   - engine: the process's engine; its storage must be in staging mode.
    ///   - permanentState: the plain libtpms permanent blob P0 (as SET_STATEBLOB delivers it).
    ///   - volatileState: the plain libtpms volatile blob V0 taken from the running TPM with P0; nil
    ///     for a state at rest (cold phase only, ending with TPM2_Shutdown(CLEAR); the engine is left
    ///     terminated and ``RekeyResult/volatileState`` is empty).
    ///   - historyEvent: the data extended into the history index (a digest of the event, at most 1024 bytes).
    ///   - issueCertificates: called once in the cold phase with the new EK public areas.
    /// - Returns: the new blobs, the EK public areas, the counter and history values, and timings.
    /// - Throws: ``CloneRekeyError``; the engine is then terminated.
    public func run(
        on engine: Engine,
        permanentState: [UInt8],
        volatileState: [UInt8]?,
        historyEvent: [UInt8],
        issueCertificates: CertificateIssuer
    ) throws -> RekeyResult {
        precondition(historyEvent.count <= 1024, "history event larger than MAX_NV_BUFFER_SIZE")
        guard !engine.isRunning else {
            throw CloneRekeyError(.engineRunning, "the TPM must be stopped (CMD_STOP or before CMD_INIT)")
        }
        do {
            return try self.perform(
                on: engine,
                permanentState: permanentState,
                volatileState: volatileState,
                historyEvent: historyEvent,
                issueCertificates: issueCertificates
            )
        } catch {
            engine.terminate()
            throw error
        }
    }

    private func perform(
        on engine: Engine,
        permanentState p0: [UInt8],
        volatileState v0: [UInt8]?,
        historyEvent: [UInt8],
        issueCertificates: CertificateIssuer
    ) throws -> RekeyResult {
        let clock = ContinuousClock()
        let start = clock.now
        var timings = RekeyTimings()
        let tpm = EngineCommandRunner(engine: engine)

        // Refuse a volatile blob we could not patch before doing any work.
        let seeds = try v0.map { try SeedPatch.locateSeeds(inVolatile: $0, oldPermanent: p0) }

        // 1. Cold phase.
        do {
            try engine.setState(.permanent, p0)
            // An empty volatile blob: libtpms must not load one from the storage either.
            try engine.setState(.volatile, [])
            try engine.initialize()
        } catch {
            throw CloneRekeyError.engine(error, during: "cold phase initialization")
        }
        let startup = try tpm.responseCode(TPM2Commands.startup(.clear))
        guard startup == 0 else {
            throw CloneRekeyError(
                .unexpectedState,
                "TPM2_Startup(CLEAR) in the cold phase returned 0x\(String(startup, radix: 16))",
                responseCode: startup
            )
        }
        var mark = clock.now
        try tpm.run(TPM2Commands.changeEPS())
        timings.changeEPS = clock.now - mark

        mark = clock.now
        let rsaEK = try tpm.run(
            TPM2Commands.createPrimary(hierarchy: TPM2Handle.endorsement, publicArea: EKTemplate.rsa2048.publicArea),
            TPM2Responses.parseCreatePrimary
        )
        try tpm.run(TPM2Commands.flushContext(rsaEK.handle))
        timings.rsaEK = clock.now - mark
        mark = clock.now
        let eccEK = try tpm.run(
            TPM2Commands.createPrimary(
                hierarchy: TPM2Handle.endorsement,
                publicArea: EKTemplate.eccNISTP256.publicArea
            ),
            TPM2Responses.parseCreatePrimary
        )
        try tpm.run(TPM2Commands.flushContext(eccEK.handle))
        timings.eccEK = clock.now - mark

        mark = clock.now
        let certificates: (rsaCertDER: [UInt8], eccCertDER: [UInt8])
        do {
            certificates = try issueCertificates(rsaEK.outPublic, eccEK.outPublic)
        } catch {
            throw CloneRekeyError(.certificateIssuance, "issuing the EK certificates failed: \(error)")
        }
        timings.certificates = clock.now - mark

        mark = clock.now
        var replaced: [UInt32] = []
        if try self.writeCertificate(certificates.rsaCertDER, at: TPM2Handle.rsaEKCertificate, tpm: tpm) {
            replaced.append(TPM2Handle.rsaEKCertificate)
        }
        if try self.writeCertificate(certificates.eccCertDER, at: TPM2Handle.eccEKCertificate, tpm: tpm) {
            replaced.append(TPM2Handle.eccEKCertificate)
        }

        let counterPublic = self.identityIndices.counterPublic
        let counterWritten = try self.ensureIndex(counterPublic, tpm: tpm, replaced: &replaced)
        let previousCounter = counterWritten ? try self.readCounter(counterPublic.index, tpm: tpm) : nil
        try tpm.run(TPM2Commands.nvIncrement(index: counterPublic.index))
        let counter = try self.readCounter(counterPublic.index, tpm: tpm)

        let historyPublic = self.identityIndices.historyPublic
        _ = try self.ensureIndex(historyPublic, tpm: tpm, replaced: &replaced)
        try tpm.run(TPM2Commands.nvExtend(index: historyPublic.index, data: historyEvent))
        let history = try tpm.run(
            TPM2Commands.nvRead(index: historyPublic.index, size: historyPublic.dataSize, offset: 0),
            TPM2Responses.parseNVRead
        )
        timings.nvWrites = clock.now - mark

        guard let v0, let seeds else {
            // Cold phase only (a state at rest: a copied directory at startup, or a TPM just
            // manufactured): an orderly TPM2_Shutdown(CLEAR), P1, and the TPM stays off.
            try tpm.run(TPM2Commands.shutdown(.clear))
            let p1: [UInt8]
            do {
                p1 = try engine.state(.permanent)
            } catch {
                throw CloneRekeyError.engine(error, during: "cold phase")
            }
            engine.terminate()
            timings.cold = clock.now - start
            timings.total = timings.cold
            return RekeyResult(
                permanentState: p1,
                volatileState: [],
                rsaEKPublic: rsaEK.outPublic,
                eccEKPublic: eccEK.outPublic,
                previousCounter: previousCounter,
                counter: counter,
                history: history,
                replacedIndices: replaced,
                flushedHandles: [],
                timings: timings
            )
        }

        // No TPM2_Shutdown: P1 must record a running TPM, as P0 does.
        let coldPermanent: [UInt8]
        do {
            coldPermanent = try engine.state(.permanent)
        } catch {
            throw CloneRekeyError.engine(error, during: "cold phase")
        }
        engine.terminate()
        timings.cold = clock.now - start

        // 2. Seed patch, and the TPM Reset of the cold phase undone in the counters.
        mark = clock.now
        let p1 =
            self.preserveResetCounters
            ? try SeedPatch.restoreResetCounters(coldPermanent, oldPermanent: p0, seeds: seeds) : coldPermanent
        let v1 = try SeedPatch.patchVolatile(v0, oldPermanent: p0, newPermanent: p1)
        timings.seedPatch = clock.now - mark

        // 3. Warm phase.
        mark = clock.now
        do {
            try engine.setState(.permanent, p1)
            try engine.setState(.volatile, v1)
            try engine.initialize()
        } catch {
            throw CloneRekeyError.engine(error, during: "warm phase initialization")
        }
        let flushed = try self.flushTransientObjects(tpm: tpm)
        timings.warm = clock.now - mark
        timings.total = clock.now - start

        return RekeyResult(
            permanentState: p1,
            volatileState: v1,
            rsaEKPublic: rsaEK.outPublic,
            eccEKPublic: eccEK.outPublic,
            previousCounter: previousCounter,
            counter: counter,
            history: history,
            replacedIndices: replaced,
            flushedHandles: flushed,
            timings: timings
        )
    }

    /// (Re)defines an EK certificate index for `certificate` and writes it in NV-buffer chunks.
    /// An existing index is deleted with platform authorization, which libtpms accepts for both
    /// platform- and owner-created indices (the owner's authValue belongs to the guest).
    /// - Returns: whether an index existed.
    private func writeCertificate(_ certificate: [UInt8], at index: UInt32, tpm: EngineCommandRunner) throws -> Bool {
        if certificate.isEmpty {
            // No CA: no certificate, and none left behind that names the old EK.
            return try self.undefineIfPresent(index, tpm: tpm) != nil
        }
        guard certificate.count <= Self.maximumCertificateSize else {
            throw CloneRekeyError(
                .certificateTooLarge,
                "certificate for NV index 0x\(String(index, radix: 16)) has \(certificate.count) bytes "
                    + "(1...\(Self.maximumCertificateSize))"
            )
        }
        let existed = try self.undefineIfPresent(index, tpm: tpm) != nil
        let nvPublic = NVPublic(
            index: index,
            attributes: Self.certificateIndexAttributes,
            dataSize: UInt16(certificate.count)
        )
        try tpm.run(TPM2Commands.nvDefineSpace(nvPublic: nvPublic))
        var offset = 0
        while offset < certificate.count {
            let end = min(offset + self.nvBufferSize, certificate.count)
            try tpm.run(
                TPM2Commands.nvWrite(index: index, data: Array(certificate[offset..<end]), offset: UInt16(offset))
            )
            offset = end
        }
        return existed
    }

    /// Makes sure `expected` is defined: keeps an index with the same definition, replaces one
    /// with another definition (a squatter or an older layout), defines a missing one.
    /// - Returns: whether the kept index has been written (holds a value).
    private func ensureIndex(_ expected: NVPublic, tpm: EngineCommandRunner, replaced: inout [UInt32]) throws -> Bool {
        if let existing = try tpm.nvReadPublic(expected.index) {
            if existing.hasSameDefinition(as: expected) { return existing.attributes.contains(.written) }
            _ = try self.undefineIfPresent(expected.index, tpm: tpm)
            replaced.append(expected.index)
        }
        try tpm.run(TPM2Commands.nvDefineSpace(nvPublic: expected))
        return false
    }

    /// Deletes `index` with platform authorization if it exists.
    /// - Returns: its public area, or nil when it did not exist.
    private func undefineIfPresent(_ index: UInt32, tpm: EngineCommandRunner) throws -> NVPublic? {
        guard let existing = try tpm.nvReadPublic(index) else { return nil }
        guard !existing.attributes.contains(.policyDelete) else {
            throw CloneRekeyError(
                .nvIndexNotDeletable,
                "NV index 0x\(String(index, radix: 16)) has TPMA_NV_POLICY_DELETE and cannot be replaced"
            )
        }
        try tpm.run(TPM2Commands.nvUndefineSpace(index: index))
        return existing
    }

    private func readCounter(_ index: UInt32, tpm: EngineCommandRunner) throws -> UInt64 {
        let bytes = try tpm.run(TPM2Commands.nvRead(index: index, size: 8, offset: 0), TPM2Responses.parseNVRead)
        guard bytes.count == 8 else {
            throw CloneRekeyError(.malformedResponse, "counter 0x\(String(index, radix: 16)) read \(bytes.count) bytes")
        }
        return bytes.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    }

    /// Flushes every loaded transient object. - Returns: their handles.
    private func flushTransientObjects(tpm: EngineCommandRunner) throws -> [UInt32] {
        var flushed: [UInt32] = []
        // Each round flushes what one TPM2_GetCapability lists; libtpms holds at most a few objects.
        for _ in 0..<16 {
            let (handles, _) = try tpm.run(TPM2Commands.getHandles(), TPM2Responses.parseHandles)
            if handles.isEmpty { return flushed }
            for handle in handles {
                try tpm.run(TPM2Commands.flushContext(handle))
                flushed.append(handle)
            }
        }
        throw CloneRekeyError(.unexpectedState, "transient objects remain after flushing \(flushed.count)")
    }
}
