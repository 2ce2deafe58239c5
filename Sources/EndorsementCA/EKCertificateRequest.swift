public import Foundation
public import VMIdentity

/// Everything ``HostCA/issueEKCertificate(_:)`` puts into an EK certificate.
///
/// The TPM attributes use the strings libtpms reports through `TPMLIB_GetInfo` (and swtpm_setup passes to
/// swtpm_localca): manufacturer and version in the TCG form `id:` followed by eight hex digits, the model as text.
public struct EKCertificateRequest: Hashable, Sendable {
    /// The endorsement key being certified.
    public var publicKey: EKPublicKey
    /// The VM whose endorsement hierarchy this EK belongs to.
    public var vmID: VMID
    /// The VM's generation: 0 at manufacture, +1 at each clone or rollback it receives.
    public var generation: UInt64
    /// For a clone or rollback: the VM the state came from. Set together with ``parentGeneration``.
    public var parentVMID: VMID?
    /// For a clone or rollback: the generation of ``parentVMID`` the state came from.
    public var parentGeneration: UInt64?
    /// TPM manufacturer, `id:XXXXXXXX` (libtpms: `id:00001014`).
    public var tpmManufacturer: String
    /// TPM model (libtpms: `swtpm`).
    public var tpmModel: String
    /// TPM firmware version, `id:XXXXXXXX` (libtpms 0.9: `id:20191023`).
    public var tpmVersion: String
    /// The TPM specification the TPM implements, put into subjectDirectoryAttributes; nil leaves it out.
    public var tpmSpecification: TPMSpecification?
    /// Start of the validity period.
    public var notValidBefore: Date
    /// End of the validity period. The default, 9999-12-31 23:59:59 UTC, is RFC 5280's "no well-defined
    /// expiration date", which is what an EK certificate (valid as long as the TPM exists) should say.
    public var notValidAfter: Date
    /// The certificate serial number: big-endian, positive, at most 20 bytes. Defaults to 16 random bytes.
    public var serialNumber: [UInt8]

    /// The TPM specification version a TPM implements (TCG TPMSpecification: family, level, revision).
    public struct TPMSpecification: Hashable, Sendable {
        /// The family, e.g. `"2.0"`.
        public var family: String
        /// The level, e.g. 0.
        public var level: Int
        /// The revision times 100, e.g. 164 for revision 1.64.
        public var revision: Int

        /// Creates a specification version.
        /// - Parameters:
        ///   - family: The family, e.g. `"2.0"`.
        ///   - level: The level.
        ///   - revision: The revision, e.g. 164.
        public init(family: String, level: Int, revision: Int) {
            self.family = family
            self.level = level
            self.revision = revision
        }

        /// What libtpms 0.9 implements: TPM 2.0, level 0, revision 1.64.
        public static let libtpms09 = TPMSpecification(family: "2.0", level: 0, revision: 164)
    }

    /// Creates a request.
    /// - Parameters:
    ///   - publicKey: The endorsement key to certify.
    ///   - vmID: The VM the endorsement hierarchy belongs to.
    ///   - generation: The VM's generation.
    ///   - parentVMID: For a clone or rollback, the source VM; nil otherwise.
    ///   - parentGeneration: For a clone or rollback, the source's generation; nil otherwise.
    ///   - tpmManufacturer: `id:XXXXXXXX`.
    ///   - tpmModel: The model string.
    ///   - tpmVersion: `id:XXXXXXXX`.
    ///   - tpmSpecification: The specification version, or nil to leave subjectDirectoryAttributes out.
    ///   - notValidBefore: Start of validity; defaults to now minus one hour (tolerates guest clock skew).
    ///   - notValidAfter: End of validity; defaults to 9999-12-31 23:59:59 UTC.
    ///   - serialNumber: The serial; defaults to ``randomSerialNumber()``.
    public init(
        publicKey: EKPublicKey,
        vmID: VMID,
        generation: UInt64,
        parentVMID: VMID? = nil,
        parentGeneration: UInt64? = nil,
        tpmManufacturer: String = "id:00001014",
        tpmModel: String = "swtpm",
        tpmVersion: String = "id:20191023",
        tpmSpecification: TPMSpecification? = .libtpms09,
        notValidBefore: Date = Date(timeIntervalSinceNow: -3600),
        notValidAfter: Date = EKCertificateRequest.noWellDefinedExpiration,
        serialNumber: [UInt8] = EKCertificateRequest.randomSerialNumber()
    ) {
        self.publicKey = publicKey
        self.vmID = vmID
        self.generation = generation
        self.parentVMID = parentVMID
        self.parentGeneration = parentGeneration
        self.tpmManufacturer = tpmManufacturer
        self.tpmModel = tpmModel
        self.tpmVersion = tpmVersion
        self.tpmSpecification = tpmSpecification
        self.notValidBefore = notValidBefore
        self.notValidAfter = notValidAfter
        self.serialNumber = serialNumber
    }

    /// 9999-12-31 23:59:59 UTC (GeneralizedTime 99991231235959Z), RFC 5280 §4.1.2.5's "no well-defined
    /// expiration date".
    public static let noWellDefinedExpiration = Date(timeIntervalSince1970: 253_402_300_799)

    /// 16 random bytes from the system generator, as a positive DER INTEGER of exactly 16 bytes
    /// (top bit clear, second-highest bit set), so 126 bits of randomness.
    /// - Returns: The serial number bytes.
    public static func randomSerialNumber() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        var bytes = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
        bytes[0] = (bytes[0] & 0x7F) | 0x40
        return bytes
    }

    /// Checks every field that ends up in the certificate.
    func validate() throws {
        guard (self.parentVMID == nil) == (self.parentGeneration == nil) else {
            throw EndorsementCAError(.invalidRequest, "parentVMID and parentGeneration must be given together")
        }
        for (name, value) in [("tpmManufacturer", self.tpmManufacturer), ("tpmVersion", self.tpmVersion)] {
            guard Self.isTCGID(value) else {
                throw EndorsementCAError(.invalidRequest, "\(name) '\(value)' is not of the form id:XXXXXXXX")
            }
        }
        guard !self.tpmModel.isEmpty, self.tpmModel.utf8.count <= 64 else {
            throw EndorsementCAError(.invalidRequest, "tpmModel must have 1 to 64 bytes")
        }
        if let spec = self.tpmSpecification {
            guard !spec.family.isEmpty, spec.family.utf8.count <= 64, spec.level >= 0, spec.revision >= 0 else {
                throw EndorsementCAError(.invalidRequest, "tpmSpecification \(spec) is out of range")
            }
        }
        let serial = EKPublicKey.stripLeadingZeros(self.serialNumber)
        guard !serial.isEmpty, self.serialNumber.count <= 20, let first = self.serialNumber.first, first & 0x80 == 0
        else {
            throw EndorsementCAError(.invalidRequest, "serialNumber must be positive and at most 20 bytes")
        }
        guard self.notValidBefore < self.notValidAfter else {
            throw EndorsementCAError(.invalidRequest, "notValidBefore must precede notValidAfter")
        }
    }

    static func isTCGID(_ value: String) -> Bool {
        guard value.hasPrefix("id:") else { return false }
        let digits = value.utf8.dropFirst(3)
        return digits.count == 8
            && digits.allSatisfy { byte in
                (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                    || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
                    || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains(byte)
            }
    }
}
