public import VMIdentity

/// A checkpoint of one generation: a TPM state handed out by GET_STATEBLOB (savevm, migration source).
public struct Checkpoint: Hashable, Sendable, Codable {
    /// The VM identity.
    public var vmID: VMID
    /// The generation.
    public var generation: UInt64
    /// The checkpoint number, 1 for the first of a generation, then increasing.
    public var checkpoint: UInt64
    /// When the checkpoint was taken.
    public var createdAt: Timestamp
    /// Whether the TPM changed state (executed a command) after this checkpoint was taken.
    public var ranAfter: Bool

    /// Creates a checkpoint record.
    /// - Parameters:
    ///   - vmID: The VM identity.
    ///   - generation: The generation.
    ///   - checkpoint: The checkpoint number.
    ///   - createdAt: When it was taken.
    ///   - ranAfter: Whether the TPM ran after it.
    public init(vmID: VMID, generation: UInt64, checkpoint: UInt64, createdAt: Timestamp, ranAfter: Bool) {
        self.vmID = vmID
        self.generation = generation
        self.checkpoint = checkpoint
        self.createdAt = createdAt
        self.ranAfter = ranAfter
    }
}
