public import EndorsementCA
public import Registry
public import StateStore
public import TPMEngine
public import VMIdentity
import _VTPMPosix

/// The one place where clone-rekey is orchestrated, for vtpmd (incoming blobs at CMD_INIT, a state
/// found at start-up, a new TPM) and for `vtpm-state` (create, clone, rekey): it asks the decision
/// table with the registry's facts, runs the rekey procedure with this VM's certificates and history
/// event, stages and commits the rekeyed state, and records the outcome in the registry — the disk
/// first, then the registry, so that the registry is never ahead of the disk.
public final class CloneRekeyCoordinator {
    /// Why a new endorsement identity is made: names the registry's generation reason, the lineage
    /// event and the history-index event.
    public enum RekeyKind: String, Sendable, Hashable {
        /// A new TPM (or a re-manufacture).
        case manufacture
        /// Another VM's state.
        case clone
        /// An older state of this VM.
        case rollback
        /// An operator's rekey (`vtpm-state rekey`).
        case rekey
        /// State without an identity, rekeyed (`foreign-state = rekey`): recorded as a rekey, named
        /// `rekey-foreign` in the history event as the decision is.
        case rekeyForeign = "rekey-foreign"

        /// The decision's kind; nil for decisions that do not rekey.
        public init?(_ decision: Decision) {
            switch decision {
            case .clone: self = .clone
            case .rollback(rekey: true): self = .rollback
            case .rekeyForeign: self = .rekeyForeign
            default: return nil
            }
        }

        var reason: Generation.Reason { self == .rekeyForeign ? .rekey : Generation.Reason(rawValue: self.rawValue) }
        var eventKind: LineageEvent.Kind {
            self == .rekeyForeign ? .rekey : LineageEvent.Kind(rawValue: self.rawValue)
        }
    }

    /// Which EKs get a certificate (both EKs always exist: they are derived from the seed).
    public struct CertifiedKeys: OptionSet, Sendable, Hashable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let rsa = CertifiedKeys(rawValue: 1)
        public static let ecc = CertifiedKeys(rawValue: 2)
        public static let both: CertifiedKeys = [.rsa, .ecc]
    }

    /// A decision and the row of the table that gave it.
    public struct DecisionOutcome: Sendable, Hashable {
        public var decision: Decision
        public var rule: DecisionTable.Rule
        /// Where the state came from (its claim, or the identity it records at rest).
        public var origin: StateOrigin?
        /// The registry's record of the newest permanent-state write of the VM's current generation.
        public var recordedStateWrite: UInt64?

        /// Creates an outcome.
        public init(
            decision: Decision,
            rule: DecisionTable.Rule,
            origin: StateOrigin?,
            recordedStateWrite: UInt64? = nil
        ) {
            self.decision = decision
            self.rule = rule
            self.origin = origin
            self.recordedStateWrite = recordedStateWrite
        }
    }

    /// What a rekey produced and committed.
    public struct RekeyOutcome: Sendable {
        /// The generation the new EKs and certificates name (and the state records).
        public var generation: UInt64
        /// The identity the state now records.
        public var identity: InstanceIdentity
        /// The procedure's result (new permanent state, EKs, counter, timings).
        public var result: RekeyResult
        /// Set when the state was committed but the registry could not record the generation.
        public var registryError: String?
    }

    /// The VM this process (or tool run) works for.
    public let vmID: VMID
    /// The registry; nil for a `vtpm-state` run without one.
    public let registry: (any RegistryStore)?
    /// Where the host CA comes from; none: EKs are not certified (a rekey removes the old certificates).
    public enum CertificateAuthority {
        /// No CA.
        case none
        /// A CA already loaded (vtpm-state).
        case loaded(HostCA)
        /// A CA loaded (or created) when a certificate is first needed (vtpmd: most starts issue none, and
        /// loading the P-384 key is a measurable part of a start).
        case deferred(() throws -> HostCA)
        /// A separated signer that holds the CA key: each EK is recorded in the registry before its
        /// certificate is asked for, and the signer checks the request against that record.
        case remote(any EKCertificateIssuer)
    }

    private var authority: CertificateAuthority
    /// Whether EKs get certificates.
    public var certifies: Bool {
        if case .none = self.authority { return false }
        return true
    }
    /// `on-rollback` and `foreign-state`.
    public let policy: DecisionPolicy
    /// Who writes the identity (`vtpmd`, `vtpm-state`).
    public let creator: String

    /// Creates a coordinator.
    /// - Parameters:
    ///   - vmID: The VM.
    ///   - registry: The registry, or nil.
    ///   - ca: The host CA.
    ///   - policy: The decision policies.
    ///   - creator: Recorded in the identity.
    public init(
        vmID: VMID,
        registry: (any RegistryStore)?,
        ca: CertificateAuthority,
        policy: DecisionPolicy = DecisionPolicy(),
        creator: String = "vtpmd"
    ) {
        self.vmID = vmID
        self.registry = registry
        self.authority = ca
        self.policy = policy
        self.creator = creator
    }

    // MARK: - Decisions

    /// Decides on incoming state blobs or a state found at rest, with the registry's facts.
    /// - Parameter incoming: What arrived.
    /// - Returns: The decision, the rule and the origin.
    /// - Throws: ``RegistryError`` from the look-ups.
    public func decide(_ incoming: IncomingState) throws -> DecisionOutcome {
        let current = try self.registry?.currentGeneration(vmID: self.vmID)
        var latest: Checkpoint? = nil
        if case .claimed(let claim) = incoming {
            latest = try self.registry?.latestCheckpoint(vmID: claim.vmID, generation: claim.generation)
        }
        let rule = DecisionTable.rule(
            ownVMID: self.vmID,
            ownGeneration: current?.generation,
            incoming: incoming,
            latestCheckpoint: latest,
            recordedStateWrite: current?.stateWrite
        )
        return DecisionOutcome(
            decision: rule.decision(policy: self.policy, claim: incoming.origin),
            rule: rule,
            origin: incoming.origin,
            recordedStateWrite: current?.stateWrite
        )
    }

    /// The identity a state found at rest presents to the table.
    /// - Parameters:
    ///   - identity: What the state records (nil: nothing, swtpm's state).
    ///   - stateWrite: The permanent state's write generation.
    public static func incomingAtRest(_ identity: InstanceIdentity?, stateWrite: UInt64?) -> IncomingState {
        guard let identity, let vm = identity.vmID else { return .atRestWithoutIdentity }
        return .atRest(StateOrigin(vmID: vm, generation: identity.generation, checkpoint: nil), stateWrite: stateWrite)
    }

    // MARK: - Rekey

    /// The generation a rekey gives: the registry's current + 1, never below `floor`; `floor` without
    /// a registry (or for a VM it does not know).
    /// - Throws: ``RegistryError``.
    public func nextGeneration(atLeast floor: UInt64 = 0) throws -> UInt64 {
        guard let current = try self.registry?.currentGeneration(vmID: self.vmID) else { return floor }
        return max(floor, current.generation + 1)
    }

    /// Runs the rekey procedure for this VM: certificates from the host CA naming (vmID, generation,
    /// parent), the history index extended with the event. Commits nothing.
    /// - Parameters:
    ///   - engine: A stopped engine; left running (warm) or terminated (cold) as the procedure says.
    ///   - permanentState: The permanent blob.
    ///   - volatileState: The volatile blob (warm phase), or nil (cold only).
    ///   - kind: Why.
    ///   - parent: The state it was made from, if any.
    ///   - generation: The new generation.
    ///   - certify: The EKs that get a certificate (with a CA).
    /// - Returns: The procedure's result.
    /// - Throws: ``CloneRekeyError`` or the CA's error; the engine is then terminated.
    public func runProcedure(
        on engine: Engine,
        permanentState: [UInt8],
        volatileState: [UInt8]?,
        kind: RekeyKind,
        parent: StateOrigin?,
        generation: UInt64,
        certify: CertifiedKeys = .both
    ) throws -> RekeyResult {
        let issuer = try self.issuer()
        let recordsKeys: Bool
        if case .remote = self.authority { recordsKeys = true } else { recordsKeys = false }
        let vmID = self.vmID
        let registry = self.registry
        return try RekeyProcedure().run(
            on: engine,
            permanentState: permanentState,
            volatileState: volatileState,
            historyEvent: RekeyProcedure.historyEvent(
                kind: kind.rawValue,
                source: parent?.description ?? "",
                vmID: vmID.description,
                generation: generation
            ),
            issueCertificates: { rsa, ecc in
                guard let issuer else { return ([], []) }
                let keys = (rsa: try EKPublicKey(tpm2bPublic: rsa), ecc: try EKPublicKey(tpm2bPublic: ecc))
                if recordsKeys {
                    guard let registry else {
                        throw CloneRekeyError(
                            .certificateIssuance,
                            "a separated CA signer needs the registry to record the EKs"
                        )
                    }
                    for (key, algorithm) in [(keys.rsa, EndorsementKeyRecord.Algorithm.rsa), (keys.ecc, .ecc)] {
                        try registry.recordEndorsementKey(
                            EndorsementKeyRecord(
                                vmID: vmID,
                                generation: generation,
                                algorithm: algorithm,
                                publicKeyDigest: try key.digest(),
                                parentVMID: parent?.vmID,
                                parentGeneration: parent?.generation
                            )
                        )
                    }
                }
                func issue(_ which: CertifiedKeys, _ key: EKPublicKey) throws -> [UInt8] {
                    guard certify.contains(which) else { return [] }
                    return try issuer.issueEKCertificate(
                        EKCertificateRequest(
                            publicKey: key,
                            vmID: vmID,
                            generation: generation,
                            parentVMID: parent?.vmID,
                            parentGeneration: parent?.generation
                        )
                    )
                }
                return (try issue(.rsa, keys.rsa), try issue(.ecc, keys.ecc))
            }
        )
    }

    /// The whole rekey: procedure, commit to `store`, registry record.
    ///
    /// All or nothing on disk: the writes are staged and committed only when the procedure succeeded;
    /// on any error they are discarded, the engine is terminated and the storage is unchanged. The
    /// registry is written after the disk; if that fails the state stays committed and
    /// ``RekeyOutcome/registryError`` says so (the registry learns the generation from the next claim).
    /// - Parameters:
    ///   - engine: A stopped engine whose storage is `store` (its NV writes are staged there).
    ///   - store: The state to commit to.
    ///   - permanentState: The permanent blob.
    ///   - volatileState: The volatile blob (warm: the TPM keeps running), or nil (cold: at rest; the
    ///     volatile and saved states, which hold the old seed, are removed).
    ///   - kind: Why.
    ///   - parent: The state it was made from.
    ///   - detail: Free text for the lineage event.
    ///   - startedAt: Monotonic nanoseconds when the decision began (for the event's duration).
    ///   - now: A monotonic clock in nanoseconds.
    /// - Returns: The outcome.
    /// - Throws: The first error; nothing changed.
    public func rekey(
        engine: Engine,
        store: StateDirectory,
        permanentState: [UInt8],
        volatileState: [UInt8]?,
        kind: RekeyKind,
        parent: StateOrigin?,
        detail: String,
        startedAt: UInt64,
        now: () -> UInt64
    ) throws -> RekeyOutcome {
        let generation = try self.nextGeneration(atLeast: self.floor(parent))
        store.beginStaging()
        let result: RekeyResult
        let identity: InstanceIdentity
        do {
            result = try self.runProcedure(
                on: engine,
                permanentState: permanentState,
                volatileState: volatileState,
                kind: kind,
                parent: parent,
                generation: generation
            )
            identity = InstanceIdentity(
                vmID: self.vmID,
                generation: generation,
                parent: parent?.vmID,
                creator: self.creator
            )
            try store.stageRekeyedState(
                identity: identity,
                permanentState: result.permanentState,
                dropVolatileState: volatileState == nil
            )
            try store.commitStaged()
        } catch {
            store.discardStaged()
            engine.terminate()
            throw error
        }
        var outcome = RekeyOutcome(generation: generation, identity: identity, result: result, registryError: nil)
        FaultInjection.point("\(store.path)#rekey-committed")
        do {
            try self.recordGeneration(
                generation,
                kind: kind,
                parent: parent,
                durationMicros: Int64((now() &- startedAt) / 1000),
                detail: detail,
                stateWrite: store.permanentWriteGeneration
            )
        } catch {
            outcome.registryError = "\(error)"
        }
        return outcome
    }

    /// What issues this VM's EK certificates: the host CA (loaded on first use) or the separated signer;
    /// nil without either.
    /// - Throws: The CA's error when it cannot be loaded (the rekey then fails and nothing changes).
    public func issuer() throws -> (any EKCertificateIssuer)? {
        switch self.authority {
        case .none: return nil
        case .loaded(let ca): return ca
        case .remote(let signer): return signer
        case .deferred(let load):
            let ca = try load()
            self.authority = .loaded(ca)
            return ca
        }
    }

    /// A rollback's generation is never below the rolled-back state's + 1.
    private func floor(_ parent: StateOrigin?) -> UInt64 {
        guard let parent, parent.vmID == self.vmID else { return 0 }
        return parent.generation &+ 1
    }

    /// Records a new generation (and its lineage event, and the state's write generation).
    /// - Throws: ``RegistryError``; a registry that gives another number than `generation` is an error
    ///   (``RegistryError/Code/conflict``): the certificates name `generation`.
    public func recordGeneration(
        _ generation: UInt64,
        kind: RekeyKind,
        parent: StateOrigin?,
        durationMicros: Int64?,
        detail: String,
        stateWrite: UInt64?
    ) throws {
        guard let registry = self.registry else { return }
        let recorded = try registry.beginGeneration(
            vmID: self.vmID,
            reason: kind.reason,
            parent: parent,
            event: LineageEventDraft(
                kind: kind.eventKind,
                source: parent,
                durationMicros: durationMicros,
                detail: detail
            )
        )
        guard recorded.generation == generation else {
            throw RegistryError(
                .conflict,
                "registry gave \(self.vmID) generation \(recorded.generation), the state and certificates name \(generation)"
            )
        }
        if let stateWrite {
            try registry.recordStateWrite(vmID: self.vmID, generation: generation, write: stateWrite)
        }
    }

    /// Records a decision that kept the endorsement identity: a move brings the registry up to the
    /// arriving state (``RegistryStore/recordArrival(_:)``); an adopt and a kept rollback append their
    /// lineage event. Returns the generation the VM is at now.
    /// - Parameters:
    ///   - decision: `.move`, `.adopt` or `.rollback(rekey: false)`.
    ///   - origin: The state's claim or recorded identity.
    ///   - currentGeneration: The VM's generation before the decision.
    ///   - detail: Free text for the lineage event.
    /// - Throws: ``RegistryError``.
    @discardableResult
    public func recordKept(
        _ decision: Decision,
        origin: StateOrigin?,
        currentGeneration: UInt64,
        detail: String
    ) throws -> UInt64 {
        let kept = self.keptGeneration(decision, origin: origin, currentGeneration: currentGeneration)
        switch decision {
        case .move:
            guard let origin, origin.vmID == self.vmID else { return kept }
            try self.registry?.recordArrival(origin)
            return kept
        case .adopt:
            if let registry = self.registry {
                if try registry.currentGeneration(vmID: self.vmID) == nil {
                    try registry.beginGeneration(
                        vmID: self.vmID,
                        reason: .adopt,
                        parent: nil,
                        event: LineageEventDraft(kind: .adopt, detail: detail)
                    )
                } else {
                    try registry.appendEvent(
                        vmID: self.vmID,
                        generation: currentGeneration,
                        LineageEventDraft(kind: .adopt, detail: detail)
                    )
                }
            }
            return kept
        default:
            try self.registry?.appendEvent(
                vmID: self.vmID,
                generation: currentGeneration,
                LineageEventDraft(kind: .rollback, source: origin, detail: detail)
            )
            return kept
        }
    }

    /// The generation a state kept by `decision` belongs to: the one a move of this VM's state arrived
    /// with, else the VM's current one.
    public func keptGeneration(_ decision: Decision, origin: StateOrigin?, currentGeneration: UInt64) -> UInt64 {
        if case .move = decision, let origin, origin.vmID == self.vmID { return origin.generation }
        return currentGeneration
    }
}
