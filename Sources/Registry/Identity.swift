public import VMIdentity

/// A VM identity known to the registry.
public struct Identity: Hashable, Sendable, Codable {
    /// The VM identity, a UUID in lower-case 8-4-4-4-12 form.
    public var vmID: VMID
    /// When the registry first saw this identity.
    public var createdAt: Timestamp

    /// Creates an identity record.
    /// - Parameters:
    ///   - vmID: The VM identity.
    ///   - createdAt: When the registry first saw it.
    public init(vmID: VMID, createdAt: Timestamp) {
        self.vmID = vmID
        self.createdAt = createdAt
    }
}
