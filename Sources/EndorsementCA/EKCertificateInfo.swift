public import Foundation
import SwiftASN1
public import VMIdentity
import X509

/// What an EK certificate says, read back from its DER: for `vtpm-state inspect` and `verify`.
///
/// Parsing does not check the signature; use ``HostCA/verify(_:at:)`` for that. A certificate without the
/// swift-vtpm VM-identity extension (one from swtpm_localca or a hardware vendor) parses with ``vmID`` and
/// ``generation`` nil.
public struct EKCertificateInfo: Hashable, Sendable {
    /// The certified endorsement key.
    public var publicKey: EKPublicKey
    /// The VM named by the VM-identity extension, or nil when the certificate has none.
    public var vmID: VMID?
    /// The VM's generation from the VM-identity extension, or nil.
    public var generation: UInt64?
    /// For a clone or rollback, the source VM, or nil.
    public var parentVMID: VMID?
    /// For a clone or rollback, the source's generation, or nil.
    public var parentGeneration: UInt64?
    /// The serial number, big-endian, as encoded (a leading zero byte is kept if present).
    public var serialNumber: [UInt8]
    /// Start of the validity period.
    public var notValidBefore: Date
    /// End of the validity period.
    public var notValidAfter: Date
    /// The subject in RFC 4514 form, e.g. `CN=1b4e28ba-... gen 1,O=swift-vtpm`.
    public var subject: String
    /// The issuer in RFC 4514 form.
    public var issuer: String
    /// The TCG tpmManufacturer attribute from the subjectAltName directoryName, if present.
    public var tpmManufacturer: String?
    /// The TCG tpmModel attribute, if present.
    public var tpmModel: String?
    /// The TCG tpmVersion attribute, if present.
    public var tpmVersion: String?
    /// Whether the extended key usage names tcg-kp-EKCertificate (2.23.133.8.1).
    public var hasEKCertificatePurpose: Bool

    /// Parses an EK certificate.
    /// - Parameter der: The certificate, DER (as read from NV index 0x01C00002 or 0x01C0000A).
    /// - Throws: ``EndorsementCAError`` with code `malformedCertificate` when it does not parse or its
    ///   VM-identity extension is malformed, or `unsupportedKey` for a key that is neither RSA nor ECC P-256.
    public init(der: [UInt8]) throws {
        let certificate: Certificate
        do {
            certificate = try Certificate(derEncoded: der)
        } catch {
            throw EndorsementCAError(
                .malformedCertificate,
                "EK certificate (\(der.count) bytes) does not parse: \(error)"
            )
        }
        self.publicKey = try EKPublicKey(certificate.publicKey)
        self.serialNumber = Array(certificate.serialNumber.bytes)
        self.notValidBefore = certificate.notValidBefore
        self.notValidAfter = certificate.notValidAfter
        self.subject = certificate.subject.description
        self.issuer = certificate.issuer.description
        if let ext = certificate.extensions[oid: OID.vmIdentityExtension] {
            let identity: VMIdentityExtension
            do {
                identity = try VMIdentityExtension(derEncoded: ext.value)
            } catch let error as EndorsementCAError {
                throw error
            } catch {
                throw EndorsementCAError(.malformedCertificate, "VM identity extension does not parse: \(error)")
            }
            self.vmID = identity.vmID
            self.generation = identity.generation
            self.parentVMID = identity.parentVMID
            self.parentGeneration = identity.parentGeneration
        }
        let san: SubjectAlternativeNames?
        let eku: ExtendedKeyUsage?
        do {
            san = try certificate.extensions.subjectAlternativeNames
            eku = try certificate.extensions.extendedKeyUsage
        } catch {
            throw EndorsementCAError(.malformedCertificate, "EK certificate extension does not parse: \(error)")
        }
        for name in san ?? SubjectAlternativeNames() {
            guard case .directoryName(let directoryName) = name else { continue }
            for rdn in directoryName {
                for attribute in rdn {
                    let value = String(attribute.value)
                    switch attribute.type {
                    case OID.tpmManufacturer: self.tpmManufacturer = value
                    case OID.tpmModel: self.tpmModel = value
                    case OID.tpmVersion: self.tpmVersion = value
                    default: break
                    }
                }
            }
        }
        self.hasEKCertificatePurpose = eku?.contains(ExtendedKeyUsage.Usage(oid: OID.ekCertificateKeyPurpose)) ?? false
    }
}
