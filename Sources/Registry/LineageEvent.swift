public import VMIdentity

/// One entry of a VM's history: a manufacture, clone, rollback, move, adoption or rekey.
public struct LineageEvent: Hashable, Sendable, Codable {
    /// What happened. Stored as TEXT; new kinds may be added.
    public struct Kind: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
        public var rawValue: String
        /// Creates a kind from its stored text.
        /// - Parameter rawValue: The text stored in the `kind` column.
        public init(rawValue: String) { self.rawValue = rawValue }

        /// A TPM was manufactured.
        public static let manufacture = Kind(rawValue: "manufacture")
        /// Another VM's state was cloned into this VM and rekeyed.
        public static let clone = Kind(rawValue: "clone")
        /// An older state of this VM was loaded (rekeyed or kept, per policy).
        public static let rollback = Kind(rawValue: "rollback")
        /// This VM's latest state arrived unchanged (migration, resume).
        public static let move = Kind(rawValue: "move")
        /// State without a claim was taken over as it is.
        public static let adopt = Kind(rawValue: "adopt")
        /// The endorsement hierarchy was rekeyed for another reason (operator, foreign-state policy).
        public static let rekey = Kind(rawValue: "rekey")

        public var description: String { self.rawValue }
    }

    /// The event's number, increasing in the order events were appended.
    public var id: Int64
    /// The VM the event happened to.
    public var vmID: VMID
    /// The VM's generation after the event.
    public var generation: UInt64
    /// What happened.
    public var kind: Kind
    /// Where the incoming state came from, if it had a claim.
    public var source: StateOrigin?
    /// When it happened.
    public var at: Timestamp
    /// How long it took (a rekey, say), if measured.
    public var durationMicros: Int64?
    /// Free text for operators.
    public var detail: String

    /// Creates an event record.
    /// - Parameters:
    ///   - id: The event's number.
    ///   - vmID: The VM the event happened to.
    ///   - generation: The VM's generation after the event.
    ///   - kind: What happened.
    ///   - source: Where the incoming state came from.
    ///   - at: When it happened.
    ///   - durationMicros: How long it took.
    ///   - detail: Free text.
    public init(
        id: Int64,
        vmID: VMID,
        generation: UInt64,
        kind: Kind,
        source: StateOrigin?,
        at: Timestamp,
        durationMicros: Int64?,
        detail: String
    ) {
        self.id = id
        self.vmID = vmID
        self.generation = generation
        self.kind = kind
        self.source = source
        self.at = at
        self.durationMicros = durationMicros
        self.detail = detail
    }
}

/// The parts of a lineage event that the caller supplies; the registry adds the id and the time.
public struct LineageEventDraft: Hashable, Sendable {
    /// What happened.
    public var kind: LineageEvent.Kind
    /// Where the incoming state came from, if it had a claim.
    public var source: StateOrigin?
    /// How long it took, if measured.
    public var durationMicros: Int64?
    /// Free text for operators.
    public var detail: String

    /// Creates a draft.
    /// - Parameters:
    ///   - kind: What happened.
    ///   - source: Where the incoming state came from.
    ///   - durationMicros: How long it took.
    ///   - detail: Free text.
    public init(kind: LineageEvent.Kind, source: StateOrigin? = nil, durationMicros: Int64? = nil, detail: String = "")
    {
        self.kind = kind
        self.source = source
        self.durationMicros = durationMicros
        self.detail = detail
    }
}
