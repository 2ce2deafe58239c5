/// The TCG EK Credential Profile (2.0, rev. 14+) default EK templates, as TPMT_PUBLIC bytes for
/// TPM2_CreatePrimary in the endorsement hierarchy: RSA 2048 ("L-1", certificate at 0x01C00002)
/// and ECC NIST P-256 ("L-2", certificate at 0x01C0000A).
public enum EKTemplate: Sendable, CaseIterable {
    case rsa2048
    case eccNISTP256

    /// PolicySecret(TPM_RH_ENDORSEMENT) with SHA-256: the profile's authPolicy for the low-range EKs.
    public static let policySecretEndorsement: [UInt8] = [
        0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xB3, 0xF8, 0x1A, 0x90, 0xCC, 0x8D, 0x46, 0xA5, 0xD7, 0x24,
        0xFD, 0x52, 0xD7, 0x6E, 0x06, 0x52, 0x0B, 0x64, 0xF2, 0xA1, 0xDA, 0x1B, 0x33, 0x14, 0x69, 0xAA,
    ]

    /// fixedTPM | fixedParent | sensitiveDataOrigin | adminWithPolicy | restricted | decrypt.
    public static let objectAttributes: UInt32 = 0x0003_00B2

    /// The NV index the profile assigns to this EK's certificate.
    public var certificateIndex: UInt32 {
        switch self {
        case .rsa2048: TPM2Handle.rsaEKCertificate
        case .eccNISTP256: TPM2Handle.eccEKCertificate
        }
    }

    /// The template: nameAlg SHA-256, the attributes and policy above, AES-128-CFB symmetric, no
    /// scheme; RSA 2048 with exponent 0 and a 256-byte zero unique, or NIST P-256 with no KDF and a
    /// unique of two 32-byte zero coordinates.
    public var publicArea: [UInt8] {
        var writer = ByteWriter(capacity: 360)
        switch self {
        case .rsa2048: writer.write(TPM2Algorithm.rsa)
        case .eccNISTP256: writer.write(TPM2Algorithm.ecc)
        }
        writer.write(TPM2Algorithm.sha256)
        writer.write(Self.objectAttributes)
        writer.writeSized16(Self.policySecretEndorsement)
        writer.write(TPM2Algorithm.aes)
        writer.write(UInt16(128))
        writer.write(TPM2Algorithm.cfb)
        writer.write(TPM2Algorithm.null)  // scheme
        switch self {
        case .rsa2048:
            writer.write(UInt16(2048))
            writer.write(UInt32(0))  // exponent: the default 65537
            writer.writeSized16([UInt8](repeating: 0, count: 256))
        case .eccNISTP256:
            writer.write(TPM2Algorithm.eccNISTP256)
            writer.write(TPM2Algorithm.null)  // kdf
            writer.writeSized16([UInt8](repeating: 0, count: 32))
            writer.writeSized16([UInt8](repeating: 0, count: 32))
        }
        return writer.bytes
    }
}
