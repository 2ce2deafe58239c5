import Crypto
import TPMEngine
import TPMWire
import Testing

@testable import CloneRekey

/// A running source TPM's blobs and what the guest had in it.
struct SourceTPM {
    var permanent: [UInt8]
    var volatile: [UInt8]
    var ekPublic: [UInt8]
    var srkPublic: [UInt8]
    var sealed: TPM2Responses.CreatedObject
    var pcr16: [UInt8]
    /// A context saved from the storage hierarchy (the SRK) before the blobs were taken.
    var srkContext: [UInt8]
    /// A context saved from the endorsement hierarchy (the EK).
    var ekContext: [UInt8]
    /// clockInfo.resetCount when the blobs were taken.
    var resetCount: UInt32

    static let secret: [UInt8] = Array("clone-rekey sealed secret".utf8)
    static let persistentEK: UInt32 = 0x8101_0001
    static let persistentSRK: UInt32 = 0x8100_0001
    static let ownerPassword: [UInt8] = Array("guest owner".utf8)
    static let swtpmCertificate = [UInt8](repeating: 0x30, count: 700)

    /// Manufactures a TPM, starts it, and does what a guest does: SRK + sealed object (loaded), an
    /// RSA EK (loaded), PCR 16 extended. `provisioned` adds what swtpm_setup and a guest leave
    /// behind: a platform-created EK certificate index at 0x01C00002, an owner-created one at
    /// 0x01C0000A, the EK persisted at 0x81010001, the SRK at 0x81000001, and an owner password.
    static func make(on engine: Engine, provisioned: Bool) throws -> SourceTPM {
        try engine.initialize()
        let tpm = TestTPM(engine: engine)
        try tpm.expectSuccess(TPM2Commands.startup(.clear))
        let srk = try tpm.run(
            TPM2Commands.createPrimary(hierarchy: TPM2Handle.owner, publicArea: TestTemplates.srk),
            TPM2Responses.parseCreatePrimary
        )
        let sealed = try tpm.run(
            TPM2Commands.create(parent: srk.handle, publicArea: TestTemplates.sealed, sensitiveData: Self.secret),
            TPM2Responses.parseCreate
        )
        _ = try tpm.run(
            TPM2Commands.load(parent: srk.handle, privateArea: sealed.privateArea, publicArea: sealed.publicArea),
            TPM2Responses.parseLoad
        )
        let srkContext = try tpm.contextSave(srk.handle)
        let ek = try tpm.run(
            TPM2Commands.createPrimary(hierarchy: TPM2Handle.endorsement, publicArea: EKTemplate.rsa2048.publicArea),
            TPM2Responses.parseCreatePrimary
        )
        let ekContext = try tpm.contextSave(ek.handle)
        if provisioned {
            let certificateIndex = NVPublic(
                index: TPM2Handle.rsaEKCertificate,
                attributes: RekeyProcedure.certificateIndexAttributes,
                dataSize: UInt16(Self.swtpmCertificate.count)
            )
            try tpm.expectSuccess(TPM2Commands.nvDefineSpace(nvPublic: certificateIndex))
            try tpm.expectSuccess(
                TPM2Commands.nvWrite(index: TPM2Handle.rsaEKCertificate, data: Self.swtpmCertificate, offset: 0)
            )
            let ownerIndex = NVPublic(
                index: TPM2Handle.eccEKCertificate,
                attributes: [.ownerWrite, .ownerRead, .authRead, .authWrite, .noDA],
                dataSize: 16
            )
            try tpm.expectSuccess(TPM2Commands.nvDefineSpace(authHandle: TPM2Handle.owner, nvPublic: ownerIndex))
            try tpm.expectSuccess(
                TPM2Commands.evictControl(object: ek.handle, persistentHandle: Self.persistentEK)
            )
            try tpm.expectSuccess(TPM2Commands.evictControl(object: srk.handle, persistentHandle: Self.persistentSRK))
            try tpm.expectSuccess(
                TPM2Commands.hierarchyChangeAuth(hierarchy: TPM2Handle.owner, newAuth: Self.ownerPassword)
            )
        }
        try tpm.expectSuccess(
            TPM2Commands.pcrExtend(pcr: 16, sha256Digest: [UInt8](repeating: 0x11, count: 32))
        )
        let pcr16 = try tpm.pcr16()
        let resetCount = try tpm.resetCount()
        let volatile = try engine.volatileState()
        let permanent = try engine.state(.permanent)
        engine.terminate()
        return SourceTPM(
            permanent: permanent,
            volatile: volatile,
            ekPublic: ek.publicArea,
            srkPublic: srk.publicArea,
            sealed: sealed,
            pcr16: pcr16,
            srkContext: srkContext,
            ekContext: ekContext,
            resetCount: resetCount
        )
    }
}

/// Real libtpms: one engine at a time, so the suite is serialized.
@Suite(.serialized)
struct RekeyProcedureTests {
    static let rsaCertificate = [UInt8](repeating: 0xC1, count: 1500)
    static let eccCertificate = [UInt8](repeating: 0xC2, count: 600)
    static let event = Array(SHA256.hash(data: Array("clone of A at checkpoint 1".utf8)))

    static func fixedCertificates(_ rsa: [UInt8], _ ecc: [UInt8]) -> (rsaCertDER: [UInt8], eccCertDER: [UInt8]) {
        (Self.rsaCertificate, Self.eccCertificate)
    }

    @Test(arguments: [false, true])
    func rekeysAndKeepsTheStorageHierarchy(provisioned: Bool) throws {
        let storage = MemoryStorage()
        let engine = try Engine(storage: storage)
        let source = try SourceTPM.make(on: engine, provisioned: provisioned)
        // A stale volatile state in the storage must not be loaded by the cold phase.
        storage.blobs["volatilestate"] = source.volatile
        var seen: [[UInt8]] = []
        let result = try RekeyProcedure().run(
            on: engine,
            permanentState: source.permanent,
            volatileState: source.volatile,
            historyEvent: Self.event
        ) { rsa, ecc in
            seen = [rsa, ecc]
            return (Self.rsaCertificate, Self.eccCertificate)
        }
        defer { engine.terminate() }
        #expect(engine.isRunning)
        #expect(seen == [result.rsaEKPublic, result.eccEKPublic])
        // The warm phase's init committed P1 to the (staging) storage.
        #expect(storage.blobs["permall"] == result.permanentState)
        #expect(result.flushedHandles.count == 3)  // SRK, sealed object, old EK
        let tpm = TestTPM(engine: engine)

        // The TPM runs on: the guest's Startup is refused, PCR 16 is preserved.
        #expect(try tpm.responseCode(TPM2Commands.startup(.clear)) == 0x100)
        #expect(try tpm.pcr16() == source.pcr16)
        #expect(try tpm.handles().isEmpty)

        // New endorsement identity: the EK from the default template changed and is the one certified.
        let ek = try tpm.run(
            TPM2Commands.createPrimary(hierarchy: TPM2Handle.endorsement, publicArea: EKTemplate.rsa2048.publicArea),
            TPM2Responses.parseCreatePrimary
        )
        #expect(ek.publicArea != source.ekPublic)
        #expect(ek.outPublic == result.rsaEKPublic)
        try tpm.expectSuccess(TPM2Commands.flushContext(ek.handle))
        let eccEK = try tpm.run(
            TPM2Commands.createPrimary(
                hierarchy: TPM2Handle.endorsement,
                publicArea: EKTemplate.eccNISTP256.publicArea
            ),
            TPM2Responses.parseCreatePrimary
        )
        #expect(eccEK.outPublic == result.eccEKPublic)
        try tpm.expectSuccess(TPM2Commands.flushContext(eccEK.handle))
        let rsaKey = try TPM2PublicArea(decoding: Array(result.rsaEKPublic.dropFirst(2)))
        guard case .rsa(2048, 0, let modulus) = rsaKey.key else {
            Issue.record("not an RSA 2048 key")
            return
        }
        #expect(modulus.count == 256)

        // The storage hierarchy is untouched: same SRK, the sealed object loads and unseals.
        let ownerAuth = TPM2PasswordAuthorization(password: provisioned ? SourceTPM.ownerPassword : [])
        let srk = try tpm.run(
            TPM2Commands.createPrimary(hierarchy: TPM2Handle.owner, publicArea: TestTemplates.srk, auth: ownerAuth),
            TPM2Responses.parseCreatePrimary
        )
        #expect(srk.publicArea == source.srkPublic)
        let sealed = try tpm.run(
            TPM2Commands.load(
                parent: srk.handle,
                privateArea: source.sealed.privateArea,
                publicArea: source.sealed.publicArea
            ),
            TPM2Responses.parseLoad
        )
        #expect(try tpm.run(TPM2Commands.unseal(item: sealed), TPM2Responses.parseUnseal) == SourceTPM.secret)

        // Identity indices and certificates.
        #expect(result.previousCounter == nil)
        #expect(
            try tpm.readIndex(0x0140_0001) == (0..<8).map { UInt8(truncatingIfNeeded: result.counter >> (56 - 8 * $0)) }
        )
        let expectedHistory = Array(SHA256.hash(data: [UInt8](repeating: 0, count: 32) + Self.event))
        #expect(result.history == expectedHistory)
        #expect(try tpm.readIndex(0x0140_0002) == expectedHistory)
        #expect(try tpm.readIndex(TPM2Handle.rsaEKCertificate) == Self.rsaCertificate)
        #expect(try tpm.readIndex(TPM2Handle.eccEKCertificate) == Self.eccCertificate)
        let certificateIndex = try tpm.run(
            TPM2Commands.nvReadPublic(index: TPM2Handle.rsaEKCertificate),
            TPM2Responses.parseNVReadPublic
        )
        #expect(certificateIndex.attributes == RekeyProcedure.certificateIndexAttributes.union(.written))
        #expect(
            result.replacedIndices == (provisioned ? [TPM2Handle.rsaEKCertificate, TPM2Handle.eccEKCertificate] : [])
        )
        // The guest cannot write them (platform authorization only).
        #expect(
            try tpm.responseCode(
                TPM2Commands.nvWrite(
                    authHandle: TPM2Handle.owner,
                    index: 0x0140_0002,
                    data: [1],
                    offset: 0,
                    auth: ownerAuth
                )
            ) != 0
        )

        // The persistent EK is gone with the old EPS; the persistent SRK stays.
        let persistent = try tpm.handles(first: TPM2Handle.firstPersistent)
        #expect(!persistent.contains(SourceTPM.persistentEK))
        #expect(persistent == (provisioned ? [SourceTPM.persistentSRK] : []))
        #expect(try tpm.responseCode(TPM2Commands.readPublic(SourceTPM.persistentEK)) == 0x18B)
    }

    @Test func rekeyingARekeyedStateCountsOnAndReplacesTheCertificates() throws {
        let engine = try Engine(storage: MemoryStorage())
        let source = try SourceTPM.make(on: engine, provisioned: false)
        let first = try RekeyProcedure().run(
            on: engine,
            permanentState: source.permanent,
            volatileState: source.volatile,
            historyEvent: Self.event,
            issueCertificates: Self.fixedCertificates
        )
        let volatile = try engine.volatileState()
        engine.terminate()
        let otherEvent = [UInt8](repeating: 0x42, count: 32)
        let second = try RekeyProcedure().run(
            on: engine,
            permanentState: first.permanentState,
            volatileState: volatile,
            historyEvent: otherEvent
        ) { _, _ in ([0x30, 0x01], [0x30, 0x02, 0x03]) }
        defer { engine.terminate() }
        #expect(second.previousCounter == first.counter)
        #expect(second.counter == first.counter + 1)
        #expect(second.history == Array(SHA256.hash(data: first.history + otherEvent)))
        #expect(second.rsaEKPublic != first.rsaEKPublic)
        #expect(second.eccEKPublic != first.eccEKPublic)
        #expect(second.replacedIndices == [TPM2Handle.rsaEKCertificate, TPM2Handle.eccEKCertificate])
        let tpm = TestTPM(engine: engine)
        #expect(try tpm.readIndex(TPM2Handle.rsaEKCertificate) == [0x30, 0x01])
        #expect(try tpm.readIndex(TPM2Handle.eccEKCertificate) == [0x30, 0x02, 0x03])
        #expect(try tpm.pcr16() == source.pcr16)
    }

    @Test func replacesAnIdentityIndexWithAnotherDefinition() throws {
        let engine = try Engine(storage: MemoryStorage())
        try engine.initialize()
        let tpm = TestTPM(engine: engine)
        try tpm.expectSuccess(TPM2Commands.startup(.clear))
        // A guest squats the counter's handle with an owner index it can write.
        let squatter = NVPublic(
            index: 0x0140_0001,
            attributes: [.ownerWrite, .ownerRead, .authRead, .counter],
            dataSize: 8
        )
        try tpm.expectSuccess(TPM2Commands.nvDefineSpace(authHandle: TPM2Handle.owner, nvPublic: squatter))
        try tpm.expectSuccess(TPM2Commands.nvIncrement(authHandle: TPM2Handle.owner, index: 0x0140_0001))
        let volatile = try engine.volatileState()
        let permanent = try engine.state(.permanent)
        engine.terminate()
        let result = try RekeyProcedure().run(
            on: engine,
            permanentState: permanent,
            volatileState: volatile,
            historyEvent: Self.event,
            issueCertificates: Self.fixedCertificates
        )
        defer { engine.terminate() }
        #expect(result.replacedIndices == [0x0140_0001])
        #expect(result.previousCounter == nil)
        let counter = try tpm.run(TPM2Commands.nvReadPublic(index: 0x0140_0001), TPM2Responses.parseNVReadPublic)
        #expect(counter.hasSameDefinition(as: RekeyProcedure.IdentityIndices().counterPublic))
    }

    @Test func aFailedIssuanceLeavesTheEngineStoppedAndARetryWorks() throws {
        struct IssuerDown: Error {}
        let engine = try Engine(storage: MemoryStorage())
        let source = try SourceTPM.make(on: engine, provisioned: true)
        #expect(throws: CloneRekeyError(.certificateIssuance, "")) {
            try RekeyProcedure().run(
                on: engine,
                permanentState: source.permanent,
                volatileState: source.volatile,
                historyEvent: Self.event
            ) { _, _ in throw IssuerDown() }
        }
        #expect(!engine.isRunning)
        #expect(throws: CloneRekeyError(.certificateTooLarge, "")) {
            try RekeyProcedure().run(
                on: engine,
                permanentState: source.permanent,
                volatileState: source.volatile,
                historyEvent: Self.event
            ) { _, _ in ([UInt8](repeating: 1, count: 2049), [1]) }
        }
        #expect(!engine.isRunning)
        let result = try RekeyProcedure().run(
            on: engine,
            permanentState: source.permanent,
            volatileState: source.volatile,
            historyEvent: Self.event,
            issueCertificates: Self.fixedCertificates
        )
        defer { engine.terminate() }
        #expect(result.previousCounter == nil)
        #expect(try TestTPM(engine: engine).pcr16() == source.pcr16)
    }

    @Test func refusesBlobsItCannotPatchBeforeTouchingTheEngine() throws {
        // Another TPM's blobs, from an engine released before the next one exists.
        let other = try { () throws -> SourceTPM in
            let engine = try Engine(storage: MemoryStorage())
            return try SourceTPM.make(on: engine, provisioned: false)
        }()
        let storage = MemoryStorage()
        let engine = try Engine(storage: storage)
        let source = try SourceTPM.make(on: engine, provisioned: false)
        let stores = storage.stores
        var tampered = source.volatile
        tampered[tampered.count / 2] ^= 0x01
        for volatile in [tampered, other.volatile] {
            #expect(throws: CloneRekeyError(.seedPatch, "")) {
                try RekeyProcedure().run(
                    on: engine,
                    permanentState: source.permanent,
                    volatileState: volatile,
                    historyEvent: Self.event,
                    issueCertificates: Self.fixedCertificates
                )
            }
        }
        #expect(storage.stores == stores)
        #expect(!engine.isRunning)
    }

    @Test func refusesARunningEngine() throws {
        let engine = try Engine(storage: MemoryStorage())
        let source = try SourceTPM.make(on: engine, provisioned: false)
        try engine.initialize()
        defer { engine.terminate() }
        #expect(throws: CloneRekeyError(.engineRunning, "")) {
            try RekeyProcedure().run(
                on: engine,
                permanentState: source.permanent,
                volatileState: source.volatile,
                historyEvent: Self.event,
                issueCertificates: Self.fixedCertificates
            )
        }
    }

    @Test func libtpmsRefusesTheUnpatchedVolatileStateAndAcceptsThePatchedOne() throws {
        let engine = try Engine(storage: MemoryStorage())
        let source = try SourceTPM.make(on: engine, provisioned: false)
        let result = try RekeyProcedure().run(
            on: engine,
            permanentState: source.permanent,
            volatileState: source.volatile,
            historyEvent: Self.event,
            issueCertificates: Self.fixedCertificates
        )
        engine.terminate()
        #expect(
            try SeedPatch.patchVolatile(
                source.volatile,
                oldPermanent: source.permanent,
                newPermanent: result.permanentState
            )
                == result.volatileState
        )
        #expect(throws: CloneRekeyError(.seedPatch, "")) {
            try SeedPatch.patchVolatile(source.volatile, oldPermanent: source.permanent, newPermanent: source.permanent)
        }
        try engine.setState(.permanent, result.permanentState)
        #expect(throws: EngineError.self) { try engine.setState(.volatile, source.volatile) }
        try engine.setState(.permanent, result.permanentState)
        try engine.setState(.volatile, result.volatileState)
        try engine.initialize()
        defer { engine.terminate() }
        #expect(try TestTPM(engine: engine).pcr16() == source.pcr16)
    }

    /// The cold phase's Startup(CLEAR) is a TPM Reset: libtpms increments totalResetCount, which is
    /// in the HMAC of every saved context. With the counters restored (the default), a context the
    /// guest saved in the storage hierarchy loads after the rekey; an endorsement context does not
    /// (ehProof changed); without the restore, neither does.
    @Test(arguments: [true, false])
    func contextsSavedBeforeTheRekey(preserveResetCounters: Bool) throws {
        let engine = try Engine(storage: MemoryStorage())
        let source = try SourceTPM.make(on: engine, provisioned: false)
        let tpm = TestTPM(engine: engine)
        _ = try RekeyProcedure(preserveResetCounters: preserveResetCounters).run(
            on: engine,
            permanentState: source.permanent,
            volatileState: source.volatile,
            historyEvent: Self.event,
            issueCertificates: Self.fixedCertificates
        )
        defer { engine.terminate() }
        // TPM_RC_INTEGRITY for parameter 1.
        let integrity: UInt32 = 0x1DF
        #expect(try tpm.contextLoad(source.srkContext) == (preserveResetCounters ? 0 : integrity))
        #expect(try tpm.contextLoad(source.ekContext) == integrity)
        #expect(try tpm.resetCount() == source.resetCount + (preserveResetCounters ? 0 : 1))
    }

    @Test func timing() throws {
        let engine = try Engine(storage: MemoryStorage())
        let source = try SourceTPM.make(on: engine, provisioned: true)
        var runs: [RekeyTimings] = []
        for _ in 0..<21 {
            let result = try RekeyProcedure().run(
                on: engine,
                permanentState: source.permanent,
                volatileState: source.volatile,
                historyEvent: Self.event,
                issueCertificates: Self.fixedCertificates
            )
            engine.terminate()
            runs.append(result.timings)
        }
        func percentile(_ p: Double, _ key: KeyPath<RekeyTimings, Duration>) -> Double {
            let sorted = runs.map {
                Double($0[keyPath: key].components.attoseconds) / 1e15 + Double($0[keyPath: key].components.seconds)
                    * 1e3
            }.sorted()
            return sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
        }
        let parts: [(String, KeyPath<RekeyTimings, Duration>)] = [
            ("total", \.total), ("cold", \.cold), ("changeEPS", \.changeEPS), ("rsaEK", \.rsaEK), ("eccEK", \.eccEK),
            ("nvWrites", \.nvWrites), ("seedPatch", \.seedPatch), ("warm", \.warm),
        ]
        for (name, key) in parts {
            print(
                "rekey \(name): p50 \(percentile(0.5, key)) ms, p95 \(percentile(0.95, key)) ms, max \(percentile(1, key)) ms"
            )
        }
        print("blob sizes: permanent \(source.permanent.count), volatile \(source.volatile.count)")
        #expect(percentile(0.5, \.total) < 1000)
    }
}
