import TPMWire
public import VMIdentity

/// An endorsement key a rekey (or a new TPM) derived for one generation of a VM, recorded in the registry
/// before its certificate is asked for: the separated CA signer certifies a key only when the registry
/// records it for the VM and generation the request names.
///
/// One record per (VM, generation, algorithm). While the generation is not yet the VM's recorded
/// generation (the rekey has not committed), a new record replaces the old one (a rekey that failed and is
/// run again derives new keys); from then on it is fixed.
public struct EndorsementKeyRecord: Hashable, Sendable {
    /// The key's algorithm, as the record names it.
    public enum Algorithm: String, Hashable, Sendable {
        case rsa, ecc
    }

    public var vmID: VMID
    public var generation: UInt64
    public var algorithm: Algorithm
    /// SHA-256 of the key's DER SubjectPublicKeyInfo (what the certificate carries).
    public var publicKeyDigest: [UInt8]
    /// For a clone or rollback, the state's origin the certificate names.
    public var parentVMID: VMID?
    public var parentGeneration: UInt64?
    public var recordedAt: Timestamp

    public init(
        vmID: VMID,
        generation: UInt64,
        algorithm: Algorithm,
        publicKeyDigest: [UInt8],
        parentVMID: VMID? = nil,
        parentGeneration: UInt64? = nil,
        recordedAt: Timestamp = Timestamp(microsecondsSinceEpoch: 0)
    ) {
        self.vmID = vmID
        self.generation = generation
        self.algorithm = algorithm
        self.publicKeyDigest = publicKeyDigest
        self.parentVMID = parentVMID
        self.parentGeneration = parentVMID == nil ? nil : parentGeneration
        self.recordedAt = recordedAt
    }

    /// Whether two records name the same key and origin (the time aside).
    public func matches(_ other: EndorsementKeyRecord) -> Bool {
        self.vmID == other.vmID && self.generation == other.generation && self.algorithm == other.algorithm
            && self.publicKeyDigest == other.publicKeyDigest && self.parentVMID == other.parentVMID
            && self.parentGeneration == other.parentGeneration
    }
}
