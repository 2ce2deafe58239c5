public import VMIdentity

/// One generation of a VM identity: the endorsement hierarchy is based on (vmID, generation).
public struct Generation: Hashable, Sendable, Codable {
    /// Why a generation began. Stored as TEXT; new reasons may be added.
    public struct Reason: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
        public var rawValue: String
        /// Creates a reason from its stored text.
        /// - Parameter rawValue: The text stored in the `reason` column.
        public init(rawValue: String) { self.rawValue = rawValue }

        /// A TPM manufactured for this vmID (generation 0, or a re-manufacture).
        public static let manufacture = Reason(rawValue: "manufacture")
        /// State of another VM (the parent) arrived and was rekeyed for this vmID.
        public static let clone = Reason(rawValue: "clone")
        /// An older state of this vmID arrived and was rekeyed.
        public static let rollback = Reason(rawValue: "rollback")
        /// State without a claim (from swtpm), or a generation created elsewhere, taken over as it is.
        public static let adopt = Reason(rawValue: "adopt")
        /// An operator-requested rekey, or foreign state rekeyed by `--foreign-state rekey`.
        public static let rekey = Reason(rawValue: "rekey")

        public var description: String { self.rawValue }
    }

    /// The VM identity.
    public var vmID: VMID
    /// The generation number: 0 for the first, then increasing.
    public var generation: UInt64
    /// When the generation began.
    public var createdAt: Timestamp
    /// Why it began.
    public var reason: Reason
    /// The state it was made from (another VM for a clone, this VM for a rollback), if any.
    public var parent: StateOrigin?
    /// The newest write generation of the permanent state seen committed in this generation
    /// (``RegistryStore/recordStateWrite(vmID:generation:write:)``), nil before the first.
    public var stateWrite: UInt64?

    /// Creates a generation record.
    /// - Parameters:
    ///   - vmID: The VM identity.
    ///   - generation: The generation number.
    ///   - createdAt: When it began.
    ///   - reason: Why it began.
    ///   - parent: The state it was made from, if any.
    ///   - stateWrite: The newest permanent-state write generation seen, if any.
    public init(
        vmID: VMID,
        generation: UInt64,
        createdAt: Timestamp,
        reason: Reason,
        parent: StateOrigin?,
        stateWrite: UInt64? = nil
    ) {
        self.vmID = vmID
        self.generation = generation
        self.createdAt = createdAt
        self.reason = reason
        self.parent = parent
        self.stateWrite = stateWrite
    }
}
