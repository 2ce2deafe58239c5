public import Registry
public import VMIdentity

/// The decision table of ARCHITECTURE.md ("Decision: move, clone or rollback") as a pure function.
///
/// | incoming state | registry facts | rule | decision |
/// |---|---|---|---|
/// | wrapper invalid (MAC, truncated, version) | - | ``Rule/invalidClaim`` | reject |
/// | no wrapper | - | ``Rule/foreign`` | adopt, or rekeyForeign with `--foreign-state rekey` |
/// | source vmID ≠ own vmID | - | ``Rule/otherVM`` | clone (parent = claim) |
/// | own vmID, generation < own current generation | - | ``Rule/olderGeneration`` | rollback |
/// | own vmID, same generation, checkpoint < latest | - | ``Rule/olderCheckpoint`` | rollback |
/// | own vmID, same generation, checkpoint = latest | ran after | ``Rule/ranAfterCheckpoint`` | rollback |
/// | own vmID, same generation, checkpoint = latest | not run after | ``Rule/latestCheckpoint`` | move |
/// | own vmID, generation > own current, or none recorded | - | ``Rule/generationUnknown`` | move |
/// | own vmID, generation known, checkpoint > latest, or none recorded | - | ``Rule/checkpointUnknown`` | move |
/// | own vmID, generation known, claim without checkpoint | - | ``Rule/noCheckpointClaimed`` | move |
/// | **at rest** (state found at start-up): another vmID | - | ``Rule/otherVM`` | clone (parent = recorded identity) |
/// | at rest, own vmID, generation < own current | - | ``Rule/olderGeneration`` | rollback |
/// | at rest, own vmID, current generation, write generation < the newest seen committed | - | ``Rule/olderWrite`` | rollback |
/// | at rest, own vmID, current generation, not behind | - | ``Rule/currentAtRest`` | move (nothing to do) |
/// | at rest, own vmID, generation > own current, or none recorded | - | ``Rule/generationUnknown`` | move |
/// | at rest, no recorded identity (swtpm's state) | - | ``Rule/foreign`` | adopt / rekeyForeign |
///
/// Rollback is ``Decision/rollback(rekey:)`` with `rekey` from `--on-rollback` (default rekey).
///
/// The choices for what the registry does not know follow one principle: **rekey on evidence only**. The
/// registry is the record of freshness; a state is a rollback when the registry has seen a newer one
/// (a newer generation, a newer checkpoint, or the TPM running after that checkpoint), and a clone
/// when it names another VM. A valid claim newer than anything recorded, with the own vmID, is proven
/// authentic by the host-key MAC but has history the registry did not see: a migration from a host with
/// its own registry (the embedded default is one SQLite file per host), or a registry restored from a
/// backup. Rejecting it would make such VMs fail to start, and rekeying it would change the identity on
/// every cross-host migration, which the design promises never to do. So it is a move, and
/// ``RegistryStore/recordArrival(_:)`` records the claim so that any older state is caught from then on.
/// The cost, documented in ARCHITECTURE.md "Beyond one machine": a rollback across hosts is detected only
/// when the hosts share one registry.
public enum DecisionTable {
    /// Which row of the table applied (for the decision log line and for tests).
    public enum Rule: Hashable, Sendable, CustomStringConvertible {
        /// The wrapper failed verification.
        case invalidClaim(reason: String)
        /// No wrapper.
        case foreign
        /// The claim names another vmID.
        case otherVM
        /// Own vmID, a generation older than the current one.
        case olderGeneration
        /// Own vmID, current generation, a checkpoint older than the latest.
        case olderCheckpoint
        /// Own vmID, current generation, the latest checkpoint, and the TPM ran after it.
        case ranAfterCheckpoint
        /// Own vmID, current generation, the latest checkpoint, nothing ran since.
        case latestCheckpoint
        /// Own vmID, a generation newer than the registry's current one, or the registry has none.
        case generationUnknown
        /// Own vmID, current generation, a checkpoint newer than the latest, or the registry has none.
        case checkpointUnknown
        /// Own vmID, current generation, the claim names no checkpoint.
        case noCheckpointClaimed
        /// At rest: own vmID, current generation, a permanent state older than the newest the registry saw
        /// committed (a restored backup, a storage snapshot rolled back, a copy put back).
        case olderWrite
        /// At rest: own vmID, current generation, not behind what the registry saw (a restart, a crash).
        case currentAtRest

        public var description: String {
            switch self {
            case .invalidClaim: return "invalid-claim"
            case .foreign: return "foreign"
            case .otherVM: return "other-vm"
            case .olderGeneration: return "older-generation"
            case .olderCheckpoint: return "older-checkpoint"
            case .ranAfterCheckpoint: return "ran-after-checkpoint"
            case .latestCheckpoint: return "latest-checkpoint"
            case .generationUnknown: return "generation-unknown"
            case .checkpointUnknown: return "checkpoint-unknown"
            case .noCheckpointClaimed: return "no-checkpoint-claimed"
            case .olderWrite: return "older-write"
            case .currentAtRest: return "current-at-rest"
            }
        }

        /// The decision this row gives under `policy`.
        /// - Parameters:
        ///   - policy: The `--on-rollback` and `--foreign-state` policies.
        ///   - claim: The incoming claim (the parent of a clone).
        /// - Returns: The decision.
        public func decision(policy: DecisionPolicy, claim: StateOrigin?) -> Decision {
            switch self {
            case .invalidClaim(let reason):
                return .reject(reason: reason)
            case .foreign:
                return policy.foreignState == .adopt ? .adopt : .rekeyForeign
            case .otherVM:
                guard let claim else { return .reject(reason: "a clone needs the claim of its source") }
                return .clone(parent: claim)
            case .olderGeneration, .olderCheckpoint, .ranAfterCheckpoint, .olderWrite:
                return .rollback(rekey: policy.onRollback == .rekey)
            case .latestCheckpoint, .generationUnknown, .checkpointUnknown, .noCheckpointClaimed, .currentAtRest:
                return .move
            }
        }
    }

    /// Finds the row of the table that applies.
    /// - Parameters:
    ///   - ownVMID: This vtpmd's vmID.
    ///   - ownGeneration: The registry's current generation of `ownVMID`, nil if it has none.
    ///   - incoming: What arrived.
    ///   - latestCheckpoint: The registry's latest checkpoint of the claim's (vmID, generation), nil if none.
    ///     A checkpoint of another (vmID, generation) is ignored.
    ///   - recordedStateWrite: The newest permanent-state write generation the registry saw committed for
    ///     (ownVMID, ownGeneration), nil if none (used for states at rest).
    /// - Returns: The rule.
    public static func rule(
        ownVMID: VMID,
        ownGeneration: UInt64?,
        incoming: IncomingState,
        latestCheckpoint: Checkpoint?,
        recordedStateWrite: UInt64? = nil
    ) -> Rule {
        let claim: StateOrigin
        var atRest = false
        var stateWrite: UInt64? = nil
        switch incoming {
        case .invalid(let reason): return .invalidClaim(reason: reason)
        case .unwrapped, .atRestWithoutIdentity: return .foreign
        case .claimed(let c): claim = c
        case .atRest(let recorded, let write): (claim, atRest, stateWrite) = (recorded, true, write)
        }
        // The rows blobs and states at rest share: whose state, and which generation of it.
        guard claim.vmID == ownVMID else { return .otherVM }
        guard let ownGeneration, claim.generation <= ownGeneration else { return .generationUnknown }
        guard claim.generation == ownGeneration else { return .olderGeneration }
        if atRest {
            if let recordedStateWrite, let stateWrite, stateWrite < recordedStateWrite { return .olderWrite }
            return .currentAtRest
        }
        guard let checkpoint = claim.checkpoint else { return .noCheckpointClaimed }
        guard let latest = latestCheckpoint, latest.vmID == claim.vmID, latest.generation == claim.generation
        else { return .checkpointUnknown }
        if checkpoint < latest.checkpoint { return .olderCheckpoint }
        if checkpoint > latest.checkpoint { return .checkpointUnknown }
        return latest.ranAfter ? .ranAfterCheckpoint : .latestCheckpoint
    }

    /// Decides what to do with an incoming state, per the table above.
    /// - Parameters:
    ///   - ownVMID: This vtpmd's vmID.
    ///   - ownGeneration: The registry's current generation of `ownVMID`, nil if it has none.
    ///   - incoming: What arrived.
    ///   - latestCheckpoint: The registry's latest checkpoint of the claim's (vmID, generation), nil if none.
    ///   - recordedStateWrite: See ``rule(ownVMID:ownGeneration:incoming:latestCheckpoint:recordedStateWrite:)``.
    ///   - policy: The `--on-rollback` and `--foreign-state` policies.
    /// - Returns: The decision.
    public static func decide(
        ownVMID: VMID,
        ownGeneration: UInt64?,
        incoming: IncomingState,
        latestCheckpoint: Checkpoint?,
        recordedStateWrite: UInt64? = nil,
        policy: DecisionPolicy
    ) -> Decision {
        self.rule(
            ownVMID: ownVMID,
            ownGeneration: ownGeneration,
            incoming: incoming,
            latestCheckpoint: latestCheckpoint,
            recordedStateWrite: recordedStateWrite
        ).decision(policy: policy, claim: incoming.origin)
    }
}
