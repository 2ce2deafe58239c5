import TPMWire

extension EKPublicKey {
    /// Parses a marshalled TPM2B_PUBLIC holding an RSA or ECC P-256 key, such as the `outPublic` of
    /// TPM2_CreatePrimary or TPM2_ReadPublic, or the file `tpm2_createek -u` writes.
    ///
    /// Every size is bounds-checked; the TPM2B size must cover the TPMT_PUBLIC exactly and nothing may follow it.
    /// An RSA exponent of 0 is returned as 65537 (the TPM's encoding of the default exponent); an RSA modulus must
    /// be exactly `keyBits / 8` bytes; ECC coordinates shorter than the curve's size are left-padded with zeros.
    /// - Parameter tpm2bPublic: The marshalled TPM2B_PUBLIC (big-endian, as on the TPM wire).
    /// - Throws: ``EndorsementCAError`` with code `malformedPublicArea` for truncated, overlong or inconsistent
    ///   input, or `unsupportedKey` for another key type or curve.
    public init(tpm2bPublic: [UInt8]) throws {
        do {
            self = try Self.parse(tpm2bPublic)
        } catch let error as WireError {
            throw EndorsementCAError(.malformedPublicArea, "TPM2B_PUBLIC (\(tpm2bPublic.count) bytes): \(error)")
        }
    }

    private enum Algorithm {
        static let rsa: UInt16 = 0x0001
        static let null: UInt16 = 0x0010
        static let rsaes: UInt16 = 0x0015
        static let ecdaa: UInt16 = 0x001A
        static let ecc: UInt16 = 0x0023
        static let eccNISTP256: UInt16 = 0x0003
    }

    private static func parse(_ bytes: [UInt8]) throws -> EKPublicKey {
        var outer = ByteReader(bytes)
        let area = try outer.readSized16()
        try outer.finish()
        guard !area.isEmpty else {
            throw EndorsementCAError(.malformedPublicArea, "TPM2B_PUBLIC is empty")
        }
        var reader = ByteReader(area)
        let type = try reader.readUInt16()
        _ = try reader.readUInt16()  // nameAlg
        _ = try reader.readUInt32()  // objectAttributes
        _ = try reader.readSized16(max: 128)  // authPolicy (a digest)
        let key: EKPublicKey
        switch type {
        case Algorithm.rsa:
            try Self.skipSymmetric(&reader)
            let scheme = try reader.readUInt16()
            if scheme != Algorithm.null && scheme != Algorithm.rsaes { _ = try reader.readUInt16() }  // hashAlg
            let keyBits = try reader.readUInt16()
            let exponent = try reader.readUInt32()
            let modulus = try reader.readSized16(max: 1024)
            guard keyBits > 0, keyBits % 8 == 0, modulus.count == Int(keyBits) / 8 else {
                throw EndorsementCAError(
                    .malformedPublicArea,
                    "TPM2B_PUBLIC: RSA keyBits \(keyBits) but a modulus of \(modulus.count) bytes"
                )
            }
            key = .rsa(modulus: modulus, exponent: exponent == 0 ? 65537 : exponent)
        case Algorithm.ecc:
            try Self.skipSymmetric(&reader)
            let scheme = try reader.readUInt16()
            if scheme != Algorithm.null {
                _ = try reader.readUInt16()  // hashAlg
                if scheme == Algorithm.ecdaa { _ = try reader.readUInt16() }  // count
            }
            let curveID = try reader.readUInt16()
            let kdf = try reader.readUInt16()
            if kdf != Algorithm.null { _ = try reader.readUInt16() }  // hashAlg
            let x = try reader.readSized16(max: 128)
            let y = try reader.readSized16(max: 128)
            guard curveID == Algorithm.eccNISTP256 else {
                throw EndorsementCAError(
                    .unsupportedKey,
                    "TPM2B_PUBLIC: ECC curve 0x\(String(curveID, radix: 16)) (only NIST P-256 is supported)"
                )
            }
            let size = ECCCurve.p256.coordinateSize
            guard x.count <= size, y.count <= size else {
                throw EndorsementCAError(
                    .malformedPublicArea,
                    "TPM2B_PUBLIC: P-256 point with coordinates of \(x.count) and \(y.count) bytes"
                )
            }
            key = .ecc(
                curve: .p256,
                x: [UInt8](repeating: 0, count: size - x.count) + x,
                y: [UInt8](repeating: 0, count: size - y.count) + y
            )
        default:
            throw EndorsementCAError(
                .unsupportedKey,
                "TPM2B_PUBLIC: object type 0x\(String(type, radix: 16)) is neither RSA nor ECC"
            )
        }
        try reader.finish()
        return key
    }

    /// Skips a TPMT_SYM_DEF_OBJECT: an algorithm, then keyBits and mode unless the algorithm is TPM_ALG_NULL.
    private static func skipSymmetric(_ reader: inout ByteReader) throws(WireError) {
        if try reader.readUInt16() != Algorithm.null {
            _ = try reader.readUInt16()  // keyBits
            _ = try reader.readUInt16()  // mode
        }
    }
}
