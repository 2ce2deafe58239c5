import Foundation
import SwiftASN1
import VMIdentity
import X509

extension HostCA {
    /// Issues an EK certificate following the TCG EK Credential Profile for TPM 2.0, naming the VM identity.
    ///
    /// Layout (X.509 v3, signed ecdsa-with-SHA384 by the CA's P-384 key):
    /// - subject `O=swift-vtpm, CN=<vmID> gen <generation>`, plus `description=parent <vmID> gen <n>` for a
    ///   clone or rollback (the CN stays within the 64-character bound; `description` has room for the parent);
    /// - subjectAltName (non-critical, as the subject is not empty): a directoryName with the TCG attributes
    ///   tpmManufacturer 2.23.133.2.1, tpmModel 2.23.133.2.2 and tpmVersion 2.23.133.2.3 (one RDN each,
    ///   UTF8String, as swtpm_cert writes them), then, for a UUID vm-id, the URI `urn:uuid:<vmID>` (RFC 4122);
    /// - keyUsage (critical): keyEncipherment for an RSA EK, keyAgreement for an ECC EK;
    /// - basicConstraints (critical): CA:FALSE;
    /// - extendedKeyUsage (non-critical): tcg-kp-EKCertificate 2.23.133.8.1;
    /// - authorityKeyIdentifier: the CA certificate's subjectKeyIdentifier;
    /// - subjectDirectoryAttributes (non-critical, when the request has a specification): tcg-at-tpmSpecification
    ///   2.23.133.2.16 = (family, level, revision);
    /// - the private VM-identity extension 1.3.6.1.4.1.32473.1.1 (non-critical; placeholder arc): DER
    ///   SEQUENCE { vmID UTF8String, generation INTEGER, parent SEQUENCE { vmID, generation } OPTIONAL }.
    ///
    /// The subject and URI are for people and for name-based matching; the extension is the machine-readable
    /// record that ``EKCertificateInfo`` reads. No certificatePolicies: this CA has no published CPS to point at.
    /// - Parameter request: The EK public key, identity, TPM attributes, validity and serial.
    /// - Returns: The certificate, DER (what goes into NV index 0x01C00002 or 0x01C0000A).
    /// - Throws: ``EndorsementCAError`` with code `invalidRequest`, `unsupportedKey` or `signing`.
    public func issueEKCertificate(_ request: EKCertificateRequest) throws -> [UInt8] {
        try request.validate()
        let publicKey = try request.publicKey.certificatePublicKey()
        let isRSA: Bool
        if case .rsa = request.publicKey { isRSA = true } else { isRSA = false }
        let identity = VMIdentityExtension(
            vmID: request.vmID,
            generation: request.generation,
            parentVMID: request.parentVMID,
            parentGeneration: request.parentGeneration
        )
        do {
            var extensions: [Certificate.Extension] = [
                try Certificate.Extension(BasicConstraints.notCertificateAuthority, critical: true),
                try Certificate.Extension(KeyUsage(keyEncipherment: isRSA, keyAgreement: !isRSA), critical: true),
                try Certificate.Extension(
                    ExtendedKeyUsage([ExtendedKeyUsage.Usage(oid: OID.ekCertificateKeyPurpose)]),
                    critical: false
                ),
                try Certificate.Extension(
                    SubjectAlternativeNames(
                        [.directoryName(Self.tpmAttributes(request))]
                            // A UUID vm-id is also named by its RFC 4122 URN; a name (Proxmox: "101") has no
                            // registered URN form and is named by the subject CN and the identity extension.
                            + (request.vmID.isUUID ? [.uniformResourceIdentifier("urn:uuid:\(request.vmID)")] : [])
                    ),
                    critical: false
                ),
            ]
            if let ski = try self.certificate.extensions.subjectKeyIdentifier {
                extensions.append(
                    try Certificate.Extension(AuthorityKeyIdentifier(keyIdentifier: ski.keyIdentifier), critical: false)
                )
            }
            if let spec = request.tpmSpecification {
                extensions.append(
                    Certificate.Extension(
                        oid: OID.subjectDirectoryAttributes,
                        critical: false,
                        value: try Self.subjectDirectoryAttributes(spec)[...]
                    )
                )
            }
            extensions.append(
                Certificate.Extension(oid: OID.vmIdentityExtension, critical: false, value: try identity.encode()[...])
            )
            let certificate = try Certificate(
                version: .v3,
                serialNumber: Certificate.SerialNumber(bytes: request.serialNumber),
                publicKey: publicKey,
                notValidBefore: request.notValidBefore,
                notValidAfter: request.notValidAfter,
                issuer: self.certificate.subject,
                subject: Self.ekSubject(request),
                signatureAlgorithm: .ecdsaWithSHA384,
                extensions: try Certificate.Extensions(extensions),
                issuerPrivateKey: Certificate.PrivateKey(self.privateKey)
            )
            var serializer = DER.Serializer()
            try serializer.serialize(certificate)
            return serializer.serializedBytes
        } catch {
            throw EndorsementCAError(
                .signing,
                "cannot issue the EK certificate for VM \(request.vmID) generation \(request.generation): \(error)"
            )
        }
    }

    /// `O=swift-vtpm, CN=<vmID> gen <n>` and, for a clone, `description=parent <vmID> gen <n>`.
    static func ekSubject(_ request: EKCertificateRequest) -> DistinguishedName {
        var rdns = [
            RelativeDistinguishedName(.init(type: OID.organizationName, utf8String: "swift-vtpm")),
            RelativeDistinguishedName(
                .init(
                    type: OID.commonName,
                    utf8String: "\(request.vmID.description) gen \(request.generation)"
                )
            ),
        ]
        if let parentVMID = request.parentVMID, let parentGeneration = request.parentGeneration {
            rdns.append(
                RelativeDistinguishedName(
                    .init(
                        type: OID.description,
                        utf8String: "parent \(parentVMID.description) gen \(parentGeneration)"
                    )
                )
            )
        }
        return DistinguishedName(rdns)
    }

    /// The SAN directoryName: tpmManufacturer, tpmModel, tpmVersion, one RDN each.
    static func tpmAttributes(_ request: EKCertificateRequest) -> DistinguishedName {
        DistinguishedName([
            RelativeDistinguishedName(.init(type: OID.tpmManufacturer, utf8String: request.tpmManufacturer)),
            RelativeDistinguishedName(.init(type: OID.tpmModel, utf8String: request.tpmModel)),
            RelativeDistinguishedName(.init(type: OID.tpmVersion, utf8String: request.tpmVersion)),
        ])
    }

    /// SubjectDirectoryAttributes ::= SEQUENCE OF Attribute, holding one tcg-at-tpmSpecification attribute:
    /// SEQUENCE { family UTF8String, level INTEGER, revision INTEGER }.
    static func subjectDirectoryAttributes(_ spec: EKCertificateRequest.TPMSpecification) throws -> [UInt8] {
        var serializer = DER.Serializer()
        try serializer.appendConstructedNode(identifier: .sequence) { attributes in
            try attributes.appendConstructedNode(identifier: .sequence) { attribute in
                try attribute.serialize(OID.tpmSpecification)
                try attribute.appendConstructedNode(identifier: .set) { values in
                    try values.appendConstructedNode(identifier: .sequence) { value in
                        try value.serialize(ASN1UTF8String(spec.family))
                        try value.serialize(spec.level)
                        try value.serialize(spec.revision)
                    }
                }
            }
        }
        return serializer.serializedBytes
    }
}
