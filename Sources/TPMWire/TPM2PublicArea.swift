/// The parts of a TPMT_PUBLIC of an RSA or ECC key that a certificate needs: the public key, the
/// algorithms and the policy. Other object types are rejected.
public struct TPM2PublicArea: Sendable, Hashable {
    /// The public key.
    public enum Key: Sendable, Hashable {
        /// RSA: key size in bits, exponent (0 means 65537) and the modulus.
        case rsa(keyBits: UInt16, exponent: UInt32, modulus: [UInt8])
        /// ECC: TPM_ECC_CURVE and the point's coordinates.
        case ecc(curve: UInt16, x: [UInt8], y: [UInt8])
    }

    public var type: UInt16
    public var nameAlgorithm: UInt16
    public var attributes: UInt32
    public var authPolicy: [UInt8]
    public var key: Key

    /// Decodes a TPMT_PUBLIC (the contents of a TPM2B_PUBLIC) and rejects trailing bytes.
    public init(decoding bytes: [UInt8]) throws(WireError) {
        var reader = ByteReader(bytes)
        self.type = try reader.readUInt16()
        self.nameAlgorithm = try reader.readUInt16()
        self.attributes = try reader.readUInt32()
        self.authPolicy = try reader.readSized16(max: 64)
        // TPMT_SYM_DEF_OBJECT
        if try reader.readUInt16() != TPM2Algorithm.null {
            try reader.skip(4)  // keyBits, mode
        }
        switch self.type {
        case TPM2Algorithm.rsa:
            if try reader.readUInt16() != TPM2Algorithm.null { try reader.skip(2) }  // scheme + hashAlg
            let keyBits = try reader.readUInt16()
            let exponent = try reader.readUInt32()
            let modulus = try reader.readSized16(max: 512)
            self.key = .rsa(keyBits: keyBits, exponent: exponent, modulus: modulus)
        case TPM2Algorithm.ecc:
            let scheme = try reader.readUInt16()
            if scheme == 0x001A {
                try reader.skip(4)  // ECDAA: hashAlg + count
            } else if scheme != TPM2Algorithm.null {
                try reader.skip(2)
            }
            let curve = try reader.readUInt16()
            if try reader.readUInt16() != TPM2Algorithm.null { try reader.skip(2) }  // kdf + hashAlg
            let x = try reader.readSized16(max: 128)
            let y = try reader.readSized16(max: 128)
            self.key = .ecc(curve: curve, x: x, y: y)
        default:
            throw WireError(.invalidValue, "TPMT_PUBLIC: unsupported object type 0x\(String(self.type, radix: 16))")
        }
        try reader.finish()
    }
}
