import CloneRekey
import Logging
import Registry
import StateStore
import TPMEngine
import TPMWire
import VMIdentity
import _VTPMPosix

extension Server {
    /// What the identity step of CMD_INIT left to do.
    enum IdentityStep: Equatable {
        /// Go on with a plain INIT from the stored state.
        case proceed
        /// INIT is complete (the TPM runs).
        case done
        /// INIT failed with this result; nothing on disk changed.
        case failed(UInt32)
    }

    /// CMD_INIT after SET_STATEBLOB with clone-rekey on: decide (move / clone / rollback / adopt)
    /// from the blobs' source claims and the registry, rekey when the decision says so, and commit
    /// only when everything succeeded. On any failure INIT fails and the disk is unchanged.
    func initializeIncoming(identity: IdentityService, store: StateDirectory, flags: UInt32) -> UInt32 {
        let started = ProcessControl.monotonicNanoseconds()
        let incoming = identity.incoming
        identity.incoming = [:]
        identity.saveCheckpoint()
        guard identity.catchUp() else {
            // Registry unavailable: the state is refused, QEMU fails the loadvm or migration (it can retry).
            self.logger.error("clone-rekey: incoming state refused: the registry is unavailable")
            return TPMFrame.rcFailure
        }
        let outcome: CloneRekeyCoordinator.DecisionOutcome
        do {
            outcome = try identity.decide(incoming)
        } catch {
            self.logger.error("clone-rekey: cannot decide on the incoming state: \(error)")
            return TPMFrame.rcFailure
        }
        let decision = outcome.decision
        let origin = outcome.origin
        identity.lastDecision = decision.name
        self.numberWritesPastTheRegistry(outcome, store: store)
        if case .reject(let reason) = decision {
            self.logDecision(outcome, generation: identity.generation, started: started)
            self.logger.error("clone-rekey: incoming state refused: \(reason)")
            return TPMFrame.rcFailure
        }
        guard let kind = CloneRekeyCoordinator.RekeyKind(decision) else {
            // Move, adopt, kept rollback: a plain INIT with the blobs, permanent first (R10).
            store.beginStaging()
            self.storage.lastFailure = nil
            do {
                for type in [StateBlobType.permanent, .volatile] {
                    guard let blob = incoming[type.rawValue] else { continue }
                    try self.engine.setState(type == .permanent ? .permanent : .volatile, blob.plain)
                }
                try self.engine.initialize()
                try store.commitStaged()
                if flags & ControlRequest.initFlagDeleteVolatile != 0 { try store.delete("volatilestate") }
            } catch {
                store.discardStaged()
                self.engine.terminate()
                self.logger.error("CMD_INIT failed: \(self.storage.lastFailure?.message ?? "\(error)")")
                return error.result == 0 ? ControlResult.fail : error.result
            }
            do {
                try self.recordKept(outcome, identity: identity, store: store, detail: "incoming state blobs")
            } catch {
                // The TPM runs the state; the next start decides on what the disk then records.
                self.logger.error("clone-rekey: recording the kept state's identity failed: \(error)")
            }
            if case .move = decision, let origin, origin.vmID == identity.vmID {
                // Until it runs, the TPM is in exactly the state of that checkpoint.
                identity.currentCheckpoint = origin.checkpoint
            }
            self.identityChecked = true
            identity.checkpointOutstanding = true
            self.logDecision(outcome, generation: identity.generation, started: started)
            return 0
        }
        // Rekey: clone, rollback (rekey), foreign state with foreign-state = rekey.
        guard let permanent = incoming[StateBlobType.permanent.rawValue]?.plain,
            let volatile = incoming[StateBlobType.volatile.rawValue]?.plain
        else {
            self.logger.error("clone-rekey: a \(decision.name) needs both the permanent and the volatile blob")
            return TPMFrame.rcFailure
        }
        let step = self.rekey(
            identity: identity,
            store: store,
            outcome: outcome,
            kind: kind,
            permanent: permanent,
            volatile: volatile,
            started: started
        )
        guard step == .done else {
            if case .failed(let rc) = step { return rc }
            return TPMFrame.rcFailure
        }
        if flags & ControlRequest.initFlagDeleteVolatile != 0 {
            do { try store.delete("volatilestate") } catch {
                self.logger.error("CMD_INIT could not delete the volatile state: \(error.message)")
            }
        }
        return 0
    }

    /// The coordinator's rekey on `permanent` (+ `volatile`: warm, the TPM keeps running → `.done`;
    /// nil: cold, at rest → `.proceed` with a plain INIT from the rekeyed state).
    func rekey(
        identity: IdentityService,
        store: StateDirectory,
        outcome: CloneRekeyCoordinator.DecisionOutcome,
        kind: CloneRekeyCoordinator.RekeyKind,
        permanent: [UInt8],
        volatile: [UInt8]?,
        started: UInt64
    ) -> IdentityStep {
        self.storage.lastFailure = nil
        let result: CloneRekeyCoordinator.RekeyOutcome
        do {
            result = try identity.coordinator.rekey(
                engine: self.engine,
                store: store,
                permanentState: permanent,
                volatileState: volatile,
                kind: kind,
                parent: outcome.origin,
                detail: "\(outcome.decision) (\(outcome.rule))",
                startedAt: started,
                now: { ProcessControl.monotonicNanoseconds() }
            )
        } catch {
            let cause = self.storage.lastFailure?.message ?? "\(error)"
            self.logger.error("clone-rekey: \(outcome.decision.name) failed, nothing changed: \(cause)")
            return .failed(TPMFrame.rcFailure)
        }
        if let problem = result.registryError {
            // The state is committed; the registry learns the generation from the next claim.
            self.logger.error("registry: the new generation \(result.generation) was not recorded: \(problem)")
        }
        identity.enterGeneration(result.generation, registryRecorded: result.registryError == nil)
        identity.checkpointOutstanding = true
        store.identityForNewTPM = nil
        self.identityChecked = true
        self.logDecision(outcome, generation: result.generation, started: started)
        return volatile == nil ? .proceed : .done
    }

    /// Records a decision that kept the endorsement identity. The disk first: the state records this VM at
    /// the generation it is kept under (a move: the generation it arrived with; adopt and kept rollback: the
    /// current one), whatever the directory's earlier file or marker said, or the next start would take it
    /// for another VM's or an older state. Then the registry (its errors are logged).
    /// - Throws: The storage's error when the identity cannot be recorded; the registry is then not touched.
    func recordKept(
        _ outcome: CloneRekeyCoordinator.DecisionOutcome,
        identity: IdentityService,
        store: StateDirectory,
        detail: String
    ) throws(StateStoreError) {
        let generation = identity.coordinator.keptGeneration(
            outcome.decision,
            origin: outcome.origin,
            currentGeneration: identity.generation
        )
        let stored = try store.identity()
        if stored?.vmID != identity.vmID || stored?.generation != generation {
            try store.recordIdentity(
                InstanceIdentity(
                    vmID: identity.vmID,
                    generation: generation,
                    parent: stored?.vmID == identity.vmID ? stored?.parent : nil
                )
            )
        }
        do {
            try identity.coordinator.recordKept(
                outcome.decision,
                origin: outcome.origin,
                currentGeneration: identity.generation,
                detail: detail
            )
        } catch {
            self.logger.error("registry: \(error)")
        }
        identity.generation = generation
        identity.refreshCheckpoint()
        identity.recordStateWrite()
    }

    /// Numbers the state's next writes past the newest the registry saw committed for this VM's current
    /// generation, whatever the decision: a state kept in a fresh or reused directory, or one swtpm
    /// rewrote, has a lower numbering of its own, and would otherwise look older at the next start.
    func numberWritesPastTheRegistry(_ outcome: CloneRekeyCoordinator.DecisionOutcome, store: StateDirectory) {
        if let recorded = outcome.recordedStateWrite { store.advanceWriteGeneration(past: recorded) }
    }

    /// First CMD_INIT (or start with not-need-init) with clone-rekey on: the state found at rest goes
    /// through the decision table like incoming blobs do.
    /// - no TPM yet: manufacture, then provision it (EKs, their certificates, the identity indices);
    /// - another VM's state (a copied or renamed directory, a copied file volume, a permall copied
    ///   alone): clone — rekey the state at rest (cold; its volatile state goes), the source untouched;
    /// - an older generation of this VM, or its current generation with a permanent state older than
    ///   the registry saw committed (a restored backup): rollback — rekey, or keep with `on-rollback`;
    /// - no recorded identity (swtpm's state): `foreign-state adopt` records ours, `rekey` rekeys;
    /// - this VM's current state (a restart, also after a crash, which leaves the disk ahead): nothing.
    func initializeFromDisk(identity: IdentityService, store: StateDirectory) -> IdentityStep {
        let started = ProcessControl.monotonicNanoseconds()
        let stored: StateDirectory.StoredState
        do {
            stored = try store.storedState()
        } catch {
            self.logger.error("CMD_INIT failed: \(error.message)")
            return .failed(error.code == .locked ? ControlResult.fail : TPMFrame.rcFailure)
        }
        guard identity.catchUp() else {
            self.logger.error("CMD_INIT refused: the registry is unavailable, the stored state cannot be checked")
            return .failed(TPMFrame.rcFailure)
        }
        guard stored.hasPermanentState else {
            // Manufacture (refused by the storage if there are traces of an earlier TPM), then provision.
            return self.provisionNewTPM(identity: identity, store: store, started: started)
        }
        let outcome: CloneRekeyCoordinator.DecisionOutcome
        do {
            outcome = try identity.coordinator.decide(
                CloneRekeyCoordinator.incomingAtRest(stored.identity, stateWrite: stored.permanentWriteGeneration)
            )
        } catch {
            self.logger.error("clone-rekey: cannot decide on the stored state: \(error)")
            return .failed(TPMFrame.rcFailure)
        }
        self.numberWritesPastTheRegistry(outcome, store: store)
        if outcome.rule == .currentAtRest {
            // Our own current state: nothing to decide (the registry learns its write after the INIT, if
            // it moved: a start after a clean stop writes nothing).
            identity.recordedStateWrite = outcome.recordedStateWrite
            self.identityChecked = true
            return .proceed
        }
        identity.lastDecision = outcome.decision.name
        guard let kind = CloneRekeyCoordinator.RekeyKind(outcome.decision) else {
            // Move, adopt, kept rollback: taken over as this VM's current state.
            do {
                try self.recordKept(
                    outcome,
                    identity: identity,
                    store: store,
                    detail: "state at rest (\(outcome.rule))"
                )
            } catch {
                self.logger.error("clone-rekey: taking over the stored state failed: \(error)")
                return .failed(TPMFrame.rcFailure)
            }
            self.identityChecked = true
            self.logDecision(outcome, generation: identity.generation, started: started)
            return .proceed
        }
        let permanent: [UInt8]
        do {
            guard let loaded = try store.load("permall") else { return .failed(TPMFrame.rcFailure) }
            permanent = loaded
        } catch {
            self.logger.error("CMD_INIT failed: \(error.message)")
            return .failed(TPMFrame.rcFailure)
        }
        // A stored volatile state belongs to the old seeds and may be older than the permanent state:
        // a state at rest is rekeyed cold, and its volatile/save state files go.
        return self.rekey(
            identity: identity,
            store: store,
            outcome: outcome,
            kind: kind,
            permanent: permanent,
            volatile: nil,
            started: started
        )
    }

    /// A new TPM for this VM: libtpms manufactures it (staged), then the cold phase gives it EKs,
    /// certificates and the identity indices. Its generation is the registry's next (0 for a new VM).
    func provisionNewTPM(identity: IdentityService, store: StateDirectory, started: UInt64) -> IdentityStep {
        let coordinator = identity.coordinator
        let generation: UInt64
        do {
            generation = try coordinator.nextGeneration()
        } catch {
            self.logger.error("registry: \(error)")
            return .failed(TPMFrame.rcFailure)
        }
        let newIdentity = InstanceIdentity(vmID: identity.vmID, generation: generation)
        store.identityForNewTPM = newIdentity
        store.beginStaging()
        self.storage.lastFailure = nil
        do {
            if coordinator.certifies {
                try self.engine.initialize()
                let fresh = try self.engine.state(.permanent)
                self.engine.terminate()
                let result = try coordinator.runProcedure(
                    on: self.engine,
                    permanentState: fresh,
                    volatileState: nil,
                    kind: .manufacture,
                    parent: nil,
                    generation: generation
                )
                try store.store("permall", result.permanentState)
            } else {
                // No CA: a blank TPM, as swtpm makes one; the state still records the identity.
                try self.engine.initialize()
                self.engine.terminate()
            }
            try store.commitStaged()
        } catch {
            store.discardStaged()
            self.engine.terminate()
            self.logger.error(
                "CMD_INIT: manufacturing a provisioned TPM failed: \(self.storage.lastFailure?.message ?? "\(error)")"
            )
            return .failed(TPMFrame.rcFailure)
        }
        var registryRecorded = true
        do {
            try coordinator.recordGeneration(
                generation,
                kind: .manufacture,
                parent: nil,
                durationMicros: Int64((ProcessControl.monotonicNanoseconds() - started) / 1000),
                detail: coordinator.certifies ? "provisioned" : "blank TPM (no CA)",
                stateWrite: store.permanentWriteGeneration
            )
        } catch {
            registryRecorded = false
            self.logger.error("registry: the new TPM's generation \(generation) was not recorded: \(error)")
        }
        identity.enterGeneration(generation, registryRecorded: registryRecorded)
        self.identityChecked = true
        let micros = (ProcessControl.monotonicNanoseconds() - started) / 1000
        self.logger.notice(
            "clone-rekey decision",
            metadata: [
                "decision": "manufacture", "target_vm": "\(identity.vmID)",
                "target_generation": "\(generation)", "duration_ms": "\(Double(micros) / 1000)",
            ]
        )
        return .proceed
    }

    /// One structured line per decision.
    func logDecision(_ outcome: CloneRekeyCoordinator.DecisionOutcome, generation: UInt64, started: UInt64) {
        guard let identity = self.identity else { return }
        let micros = (ProcessControl.monotonicNanoseconds() - started) / 1000
        let origin = outcome.origin
        self.logger.notice(
            "clone-rekey decision",
            metadata: [
                "decision": "\(outcome.decision.name)",
                "rule": "\(outcome.rule)",
                "source_vm": "\(origin.map { "\($0.vmID)" } ?? "none")",
                "source_generation": "\(origin.map { String($0.generation) } ?? "-")",
                "source_checkpoint": "\(origin?.checkpoint.map { String($0) } ?? "-")",
                "target_vm": "\(identity.vmID)",
                "target_generation": "\(generation)",
                "duration_ms": "\(Double(micros) / 1000)",
            ]
        )
    }
}
