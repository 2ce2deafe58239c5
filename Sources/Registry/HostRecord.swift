import TPMWire
import VMIdentity

/// A host of a cluster, as it registered itself: the public half of the key it signs state-blob claims with.
///
/// Hosts share nothing but the registry. Each vtpmd registers its host on start (``RegistryStore/registerHost(id:name:publicKey:)``);
/// a claim signed by a host the registry does not know, or by a revoked one, is refused.
public struct HostRecord: Hashable, Sendable {
    /// The host's id: the first 16 bytes of SHA-256 over its public key, in lower-case hexadecimal.
    public var hostID: String
    /// A name for people (the host name, or `host-name` of the host configuration).
    public var name: String
    /// The raw public key (Ed25519, 32 bytes).
    public var publicKey: [UInt8]
    public var registeredAt: Timestamp
    /// When an operator revoked the host, nil while it is trusted.
    public var revokedAt: Timestamp?
    public var revokedReason: String?

    public init(
        hostID: String,
        name: String,
        publicKey: [UInt8],
        registeredAt: Timestamp,
        revokedAt: Timestamp? = nil,
        revokedReason: String? = nil
    ) {
        self.hostID = hostID
        self.name = name
        self.publicKey = publicKey
        self.registeredAt = registeredAt
        self.revokedAt = revokedAt
        self.revokedReason = revokedReason
    }

    /// Whether the host's claims are trusted.
    public var isRevoked: Bool { self.revokedAt != nil }

    /// The id of a host with `publicKey`: the first 16 bytes of its SHA-256, in hexadecimal. The registry
    /// records a host only under this id, so no host can register a key under another host's id.
    public static func hostID(ofPublicKey publicKey: [UInt8]) -> String {
        HostID.of(publicKey: publicKey).hexString
    }
}
