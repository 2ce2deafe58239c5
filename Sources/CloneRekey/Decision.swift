public import VMIdentity

/// What vtpmd does with an incoming state (SET_STATEBLOB, or a state directory at startup).
public enum Decision: Hashable, Sendable, CustomStringConvertible {
    /// The VM's own latest state, unchanged since it was handed out (migration, resume): no change.
    /// Call ``RegistryStore/recordArrival(_:)`` with the claim afterwards.
    case move
    /// Another VM's state: rekey, begin a generation with reason ``Generation/Reason/clone``, lineage parent = `parent`.
    case clone(parent: StateOrigin)
    /// An older state of this VM: with `rekey`, rekey and begin a generation with reason
    /// ``Generation/Reason/rollback`` (parent = the claim); without, keep the identity and only record the event.
    case rollback(rekey: Bool)
    /// State without a claim (from swtpm), taken over as it is (`--foreign-state adopt`).
    case adopt
    /// State without a claim, rekeyed (`--foreign-state rekey`).
    case rekeyForeign
    /// Refused: the state is not used and nothing on disk changes.
    case reject(reason: String)

    /// Whether the decision changes the endorsement hierarchy.
    public var rekeys: Bool {
        switch self {
        case .clone, .rekeyForeign: return true
        case .rollback(let rekey): return rekey
        case .move, .adopt, .reject: return false
        }
    }

    /// A short name for logs: move, clone, rollback, adopt, rekey-foreign, reject.
    public var name: String {
        switch self {
        case .move: return "move"
        case .clone: return "clone"
        case .rollback: return "rollback"
        case .adopt: return "adopt"
        case .rekeyForeign: return "rekey-foreign"
        case .reject: return "reject"
        }
    }

    public var description: String {
        switch self {
        case .move, .adopt, .rekeyForeign: return self.name
        case .clone(let parent): return "clone of \(parent)"
        case .rollback(let rekey): return rekey ? "rollback (rekey)" : "rollback (keep)"
        case .reject(let reason): return "reject: \(reason)"
        }
    }
}

/// What arrived: state blobs (as far as the blob wrapper could tell), or a state found at rest.
public enum IncomingState: Hashable, Sendable {
    /// A wrapper whose MAC verified, naming the source.
    case claimed(StateOrigin)
    /// No wrapper: state written by swtpm, or by a vtpmd before wrappers.
    case unwrapped
    /// A wrapper that failed: bad MAC, truncated, unknown version.
    case invalid(reason: String)
    /// A state found at start-up with the identity it records (checkpoint nil) and the write generation
    /// of its permanent state (nil for a file written by swtpm).
    case atRest(StateOrigin, stateWrite: UInt64?)
    /// A state found at start-up that records no identity (swtpm's).
    case atRestWithoutIdentity

    /// The state's origin, where it names one.
    public var origin: StateOrigin? {
        switch self {
        case .claimed(let origin), .atRest(let origin, _): return origin
        case .unwrapped, .invalid, .atRestWithoutIdentity: return nil
        }
    }
}

/// `--on-rollback rekey|keep`.
public enum RollbackPolicy: String, Hashable, Sendable, CaseIterable {
    /// Rekey an older state (the default, as in the patent).
    case rekey
    /// Keep the identity of an older state.
    case keep
}

/// `--foreign-state adopt|rekey`.
public enum ForeignStatePolicy: String, Hashable, Sendable, CaseIterable {
    /// Take state without a claim over as it is (the default: most likely a migration from swtpm).
    case adopt
    /// Rekey state without a claim.
    case rekey
}

/// The two policies of the decision table.
public struct DecisionPolicy: Hashable, Sendable {
    /// `--on-rollback`.
    public var onRollback: RollbackPolicy
    /// `--foreign-state`.
    public var foreignState: ForeignStatePolicy

    /// Creates a policy; the defaults are vtpmd's.
    /// - Parameters:
    ///   - onRollback: `--on-rollback`, default ``RollbackPolicy/rekey``.
    ///   - foreignState: `--foreign-state`, default ``ForeignStatePolicy/adopt``.
    public init(onRollback: RollbackPolicy = .rekey, foreignState: ForeignStatePolicy = .adopt) {
        self.onRollback = onRollback
        self.foreignState = foreignState
    }
}
