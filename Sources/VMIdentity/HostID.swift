import Crypto

/// A host of a cluster is named by the key it signs state-blob claims with: its id is the first 16 bytes of
/// SHA-256 over the raw public key. The registry records a host only under that id, and a claim's key must hash
/// to the id the claim names, so no host can speak for another.
public enum HostID {
    /// The length of an id in bytes.
    public static let byteCount = 16

    /// The id of the host whose public key is `publicKey`.
    public static func of(publicKey: [UInt8]) -> [UInt8] {
        Array(SHA256.hash(data: publicKey).prefix(Self.byteCount))
    }
}
