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
                    if let origin { _ = try identity.registry.recordArrival(origin) }
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
            } catch {
                self.logger.error("registry: \(error)")
            }
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
            let micros = Int64((ProcessControl.monotonicNanoseconds() - started) / 1000)
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
            try store.recordIdentity(
                InstanceIdentity(
                    vmID: identity.configuration.vmID,
                    generation: generation.generation,
                    parent: origin.flatMap { VMID($0.vmID) }
                )
            )
            try store.store("permall", result.permanentState)
            try store.commitStaged()
            if flags & ControlRequest.initFlagDeleteVolatile != 0 { try store.delete("volatilestate") }
            identity.generation = generation.generation
            store.identityForNewTPM = nil
            self.logDecision(decision, origin: origin, generation: generation.generation, started: started)
            return 0
        } catch {
            store.discardStaged()
            self.engine.terminate()
            self.logger.error("clone-rekey: \(decision.name) failed, nothing changed: \(error)")
            return TPMFrame.rcFailure
        }
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
