import CloneRekey
import Logging
import Registry
import StateStore
import TPMEngine
import TPMWire
import _VTPMPosix

extension Server {
    /// CMD_INIT after SET_STATEBLOB with clone-rekey on: decide (move / clone / rollback / adopt)
    /// from the blobs' source claims and the registry, rekey when the decision says so, and commit
    /// only when everything succeeded. On any failure INIT fails and the disk is unchanged.
    func initializeIncoming(identity: IdentityService, store: StateDirectory, flags: UInt32) -> UInt32 {
        let started = ProcessControl.monotonicNanoseconds()
        let incoming = identity.incoming
        identity.incoming = [:]
        identity.saveCheckpoint()
        let decision: Decision
        let origin: StateOrigin?
        do {
            (decision, origin) = try identity.decide(incoming)
        } catch {
            self.logger.error("clone-rekey: cannot decide on the incoming state: \(error)")
            return self.refuseIncoming()
        }
        identity.lastDecision = decision.name
        switch decision {
        case .reject(let reason):
            self.logDecision(decision, origin: origin, generation: identity.generation, started: started)
            self.logger.error("clone-rekey: incoming state refused: \(reason)")
            return self.refuseIncoming()
        case .move, .adopt, .rollback(rekey: false):
            // A plain INIT with the blobs, permanent first (R10).
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
                switch decision {
                case .move:
                    if let origin {
                        _ = try identity.registry.recordArrival(origin)
                        // The arriving state is this VM's: its generation is now ours, and a directory
                        // that recorded another identity (migration into a reused directory) records ours.
                        identity.generation = origin.generation
                        identity.refreshCheckpoint()
                        // Until it runs, the TPM is in exactly the state of that checkpoint.
                        if origin.vmID == identity.vmID { identity.currentCheckpoint = origin.checkpoint }
                        if try store.identity()?.vmID != identity.configuration.vmID {
                            try store.recordIdentity(
                                InstanceIdentity(vmID: identity.configuration.vmID, generation: origin.generation)
                            )
                        }
                    }
                case .adopt:
                    _ = try identity.registry.appendEvent(
                        vmID: identity.vmID,
                        generation: identity.generation,
                        LineageEventDraft(kind: .adopt, detail: "state without a source claim")
                    )
                default:
                    _ = try identity.registry.appendEvent(
                        vmID: identity.vmID,
                        generation: identity.generation,
                        LineageEventDraft(kind: .rollback, source: origin, detail: "--on-rollback keep")
                    )
                }
                if case .move = decision {} else { identity.refreshCheckpoint() }
            } catch {
                self.logger.error("registry: \(error)")
            }
            self.identityChecked = true
            identity.checkpointOutstanding = true
            self.logDecision(decision, origin: origin, generation: identity.generation, started: started)
            return 0
        default:
            break
        }
        // Rekey: clone, rollback (rekey), foreign state with --foreign-state rekey.
        guard let permanent = incoming[StateBlobType.permanent.rawValue]?.plain,
            let volatile = incoming[StateBlobType.volatile.rawValue]?.plain
        else {
            self.logger.error("clone-rekey: a \(decision.name) needs both the permanent and the volatile blob")
            return self.refuseIncoming()
        }
        return self.rekey(
            identity: identity,
            store: store,
            decision: decision,
            origin: origin,
            permanent: permanent,
            volatile: volatile,
            flags: flags,
            started: started
        )
    }

    /// Runs the rekey procedure on `permanent` (+ `volatile`: warm phase, the TPM keeps running;
    /// nil: cold phase only, the TPM is left off) and commits state, identity and registry only when
    /// all of it succeeded.
    func rekey(
        identity: IdentityService,
        store: StateDirectory,
        decision: Decision,
        origin: StateOrigin?,
        permanent: [UInt8],
        volatile: [UInt8]?,
        flags: UInt32,
        started: UInt64
    ) -> UInt32 {
        let nextGeneration: UInt64
        do {
            nextGeneration = (try identity.registry.currentGeneration(vmID: identity.vmID)?.generation ?? 0) + 1
        } catch {
            self.logger.error("registry: \(error)")
            return self.refuseIncoming()
        }
        store.beginStaging()
        self.storage.lastFailure = nil
        do {
            let result = try RekeyProcedure().run(
                on: self.engine,
                permanentState: permanent,
                volatileState: volatile,
                historyEvent: identity.historyEvent(decision, source: origin, newGeneration: nextGeneration),
                issueCertificates: { rsa, ecc in
                    try identity.certificates(
                        rsaEKPublic: rsa,
                        eccEKPublic: ecc,
                        generation: nextGeneration,
                        parent: origin
                    )
                }
            )
            let reason: Generation.Reason
            let kind: LineageEvent.Kind
            switch decision {
            case .clone:
                (reason, kind) = (.clone, .clone)
            case .rollback:
                (reason, kind) = (.rollback, .rollback)
            default:
                (reason, kind) = (.rekey, .rekey)
            }
            try store.stageRekeyedState(
                identity: InstanceIdentity(
                    vmID: identity.configuration.vmID,
                    generation: nextGeneration,
                    parent: origin.flatMap { VMID($0.vmID) }
                ),
                permanentState: result.permanentState,
                dropVolatileState: volatile == nil
            )
            try store.commitStaged()
            if volatile != nil, flags & ControlRequest.initFlagDeleteVolatile != 0 { try store.delete("volatilestate") }
            // The disk first, then the registry: a state is never newer in the registry than on disk.
            let micros = Int64((ProcessControl.monotonicNanoseconds() - started) / 1000)
            do {
                let generation = try identity.registry.beginGeneration(
                    vmID: identity.vmID,
                    reason: reason,
                    parent: origin,
                    event: LineageEventDraft(
                        kind: kind,
                        source: origin,
                        durationMicros: micros,
                        detail: decision.description
                    )
                )
                if generation.generation != nextGeneration {
                    self.logger.warning(
                        "registry: generation \(generation.generation) recorded, \(nextGeneration) certified and stored"
                    )
                }
            } catch {
                // The state is committed; the registry learns the generation from the next claim.
                self.logger.error("registry: the new generation \(nextGeneration) was not recorded: \(error)")
            }
            identity.generation = nextGeneration
            identity.refreshCheckpoint()
            identity.checkpointOutstanding = true
            store.identityForNewTPM = nil
            self.logDecision(decision, origin: origin, generation: nextGeneration, started: started)
            return 0
        } catch {
            store.discardStaged()
            self.engine.terminate()
            self.logger.error("clone-rekey: \(decision.name) failed, nothing changed: \(error)")
            return TPMFrame.rcFailure
        }
    }

    /// Returned by `initializeFromDisk` when nothing special is needed.
    static let continueNormalInit: UInt32 = 0xFFFF_FFFF

    /// First CMD_INIT (or start with not-need-init) with clone-rekey on: compares the identity the
    /// state directory records with `--vm-id`.
    /// - no TPM yet: manufacture, then provision it (EKs, their certificates, the identity indices);
    /// - another VM's directory (a copy): clone — rekey the state at rest (and a stored volatile
    ///   state, if any), the source directory is not touched;
    /// - no recorded identity (swtpm's directory): `--foreign-state adopt` records ours, `rekey` rekeys;
    /// - our own: nothing to do.
    func initializeFromDisk(identity: IdentityService, store: StateDirectory, flags: UInt32) -> UInt32 {
        let started = ProcessControl.monotonicNanoseconds()
        let recorded: InstanceIdentity?
        let present: [String]
        do {
            recorded = try store.identity()
            present = try store.presentStates().map(\.name)
        } catch {
            self.logger.error("CMD_INIT failed: \(error.message)")
            return error.code == .locked ? ControlResult.fail : TPMFrame.rcFailure
        }
        if !present.contains("permall") {
            // Manufacture (refused by the storage if there are traces of an earlier TPM), then provision.
            return self.provisionNewTPM(identity: identity, store: store, started: started)
        }
        let origin: StateOrigin?
        let decision: Decision
        if let recorded, let recordedVM = recorded.vmID {
            if recordedVM == identity.configuration.vmID {
                self.identityChecked = true
                return Self.continueNormalInit
            }
            origin = StateOrigin(vmID: recordedVM.description, generation: recorded.generation, checkpoint: nil)
            decision = .clone(parent: origin!)
        } else {
            origin = nil
            decision = identity.configuration.foreignState == .rekey ? .rekeyForeign : .adopt
        }
        identity.lastDecision = decision.name
        if decision == .adopt {
            store.beginStaging()
            do {
                try store.recordIdentity(
                    InstanceIdentity(vmID: identity.configuration.vmID, generation: identity.generation)
                )
                try store.commitStaged()
                _ = try identity.registry.appendEvent(
                    vmID: identity.vmID,
                    generation: identity.generation,
                    LineageEventDraft(kind: .adopt, detail: "state directory without an identity")
                )
            } catch {
                store.discardStaged()
                self.logger.error("clone-rekey: adopting the state directory failed: \(error)")
                return TPMFrame.rcFailure
            }
            self.identityChecked = true
            self.logDecision(decision, origin: nil, generation: identity.generation, started: started)
            return Self.continueNormalInit
        }
        let permanent: [UInt8]
        let volatile: [UInt8]?
        do {
            guard let p = try store.load("permall") else { return TPMFrame.rcFailure }
            permanent = p
            // A stored volatile state belongs to the old seeds and may be older than the permanent
            // state: a state at rest is rekeyed cold, and its volatile/save state files go.
            volatile = nil
        } catch {
            self.logger.error("CMD_INIT failed: \(error.message)")
            return TPMFrame.rcFailure
        }
        let rc = self.rekey(
            identity: identity,
            store: store,
            decision: decision,
            origin: origin,
            permanent: permanent,
            volatile: volatile,
            flags: flags,
            started: started
        )
        if rc == 0 { self.identityChecked = true }
        if rc == 0 && volatile == nil { return Self.continueNormalInit }
        return rc
    }

    /// A new TPM for this VM: libtpms manufactures it (staged), then the cold phase gives it EKs,
    /// certificates and the identity indices; generation as the registry says (0 for a new VM).
    func provisionNewTPM(identity: IdentityService, store: StateDirectory, started: UInt64) -> UInt32 {
        store.identityForNewTPM = InstanceIdentity(vmID: identity.configuration.vmID, generation: identity.generation)
        guard identity.ca != nil else {
            // No CA: a blank TPM, as swtpm makes one; the marker still records the identity.
            self.identityChecked = true
            return Self.continueNormalInit
        }
        store.beginStaging()
        self.storage.lastFailure = nil
        do {
            try self.engine.initialize()
            let fresh = try self.engine.state(.permanent)
            self.engine.terminate()
            let result = try RekeyProcedure().run(
                on: self.engine,
                permanentState: fresh,
                volatileState: nil,
                historyEvent: identity.historyEvent(.adopt, source: nil, newGeneration: identity.generation),
                issueCertificates: { rsa, ecc in
                    try identity.certificates(
                        rsaEKPublic: rsa,
                        eccEKPublic: ecc,
                        generation: identity.generation,
                        parent: nil
                    )
                }
            )
            try store.store("permall", result.permanentState)
            try store.commitStaged()
        } catch {
            store.discardStaged()
            self.engine.terminate()
            self.logger.error(
                "CMD_INIT: manufacturing a provisioned TPM failed: \(self.storage.lastFailure?.message ?? "\(error)")"
            )
            return TPMFrame.rcFailure
        }
        self.identityChecked = true
        let micros = (ProcessControl.monotonicNanoseconds() - started) / 1000
        self.logger.notice(
            "clone-rekey decision",
            metadata: [
                "decision": "manufacture", "target_vm": "\(identity.vmID)",
                "target_generation": "\(identity.generation)", "duration_ms": "\(Double(micros) / 1000)",
            ]
        )
        return Self.continueNormalInit
    }

    /// A refused INIT: the blobs were never handed to libtpms, the TPM stays stopped.
    func refuseIncoming() -> UInt32 {
        TPMFrame.rcFailure
    }

    /// One structured line per decision.
    func logDecision(_ decision: Decision, origin: StateOrigin?, generation: UInt64, started: UInt64) {
        guard let identity = self.identity else { return }
        let micros = (ProcessControl.monotonicNanoseconds() - started) / 1000
        self.logger.notice(
            "clone-rekey decision",
            metadata: [
                "decision": "\(decision.name)",
                "source_vm": "\(origin?.vmID ?? "none")",
                "source_generation": "\(origin.map { String($0.generation) } ?? "-")",
                "source_checkpoint": "\(origin?.checkpoint.map { String($0) } ?? "-")",
                "target_vm": "\(identity.vmID)",
                "target_generation": "\(generation)",
                "duration_ms": "\(Double(micros) / 1000)",
            ]
        )
    }
}
