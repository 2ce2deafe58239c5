/// A point in some VM's TPM history: (vmID, generation, checkpoint).
///
/// Used for the claim an incoming state blob carries, for a generation's parent and for a lineage
/// event's source. `checkpoint` is nil where it is not known (a state found at rest records its vmID
/// and generation but no checkpoint).
public struct StateOrigin: Hashable, Sendable, Codable, CustomStringConvertible {
    /// The VM identity.
    public var vmID: VMID
    /// The generation of that identity.
    public var generation: UInt64
    /// The checkpoint within that generation, if known.
    public var checkpoint: UInt64?

    /// Creates an origin.
    /// - Parameters:
    ///   - vmID: The VM identity.
    ///   - generation: The generation.
    ///   - checkpoint: The checkpoint within the generation, if known.
    public init(vmID: VMID, generation: UInt64, checkpoint: UInt64?) {
        self.vmID = vmID
        self.generation = generation
        self.checkpoint = checkpoint
    }

    public var description: String {
        let base = "\(self.vmID) generation \(self.generation)"
        guard let checkpoint = self.checkpoint else { return base }
        return base + " checkpoint \(checkpoint)"
    }
}
