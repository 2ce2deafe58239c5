import Crypto

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
        Array(SHA256.hash(data: publicKey).prefix(16)).hex
    }
}

extension [UInt8] {
    /// Lower-case hexadecimal.
    var hex: String {
        let digits: [Character] = "0123456789abcdef".map { $0 }
        var text = ""
        text.reserveCapacity(self.count * 2)
        for byte in self {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0x0f)])
        }
        return text
    }

    /// Bytes from lower- or upper-case hexadecimal, nil for anything else.
    init?(hex text: String) {
        let characters = Array(text.utf8)
        guard characters.count % 2 == 0 else { return nil }
        func value(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(characters.count / 2)
        var index = 0
        while index < characters.count {
            guard let high = value(characters[index]), let low = value(characters[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        self = bytes
    }
}
