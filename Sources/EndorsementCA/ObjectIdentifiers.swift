import SwiftASN1

/// Object identifiers used in EK certificates.
enum OID {
    /// tcg-at-tpmManufacturer (TCG EK Credential Profile): a SAN directoryName attribute.
    static let tpmManufacturer: ASN1ObjectIdentifier = [2, 23, 133, 2, 1]
    /// tcg-at-tpmModel.
    static let tpmModel: ASN1ObjectIdentifier = [2, 23, 133, 2, 2]
    /// tcg-at-tpmVersion.
    static let tpmVersion: ASN1ObjectIdentifier = [2, 23, 133, 2, 3]
    /// tcg-at-tpmSpecification: an attribute in the subjectDirectoryAttributes extension.
    static let tpmSpecification: ASN1ObjectIdentifier = [2, 23, 133, 2, 16]
    /// tcg-kp-EKCertificate: the extended key usage of an EK certificate.
    static let ekCertificateKeyPurpose: ASN1ObjectIdentifier = [2, 23, 133, 8, 1]
    /// id-ce-subjectDirectoryAttributes (RFC 5280).
    static let subjectDirectoryAttributes: ASN1ObjectIdentifier = [2, 5, 29, 9]
    /// id-at-commonName, organizationName, organizationalUnitName.
    static let commonName: ASN1ObjectIdentifier = [2, 5, 4, 3]
    static let organizationName: ASN1ObjectIdentifier = [2, 5, 4, 10]
    static let organizationalUnitName: ASN1ObjectIdentifier = [2, 5, 4, 11]
    /// id-at-description (X.520), which has room (1024 characters) for the parent identity.
    static let description: ASN1ObjectIdentifier = [2, 5, 4, 13]

    /// swift-vtpm's private arc. PLACEHOLDER: 1.3.6.1.4.1.32473 is the IANA enterprise number reserved for
    /// documentation (RFC 5612). Replace it with a registered Private Enterprise Number before certificates
    /// from different organizations have to be told apart; ``EKCertificateInfo`` reads exactly this OID.
    static let vtpmArc: [UInt] = [1, 3, 6, 1, 4, 1, 32473, 1]
    /// The VM-identity extension (vmID, generation, parent): `vtpmArc.1`.
    static let vmIdentityExtension: ASN1ObjectIdentifier = [1, 3, 6, 1, 4, 1, 32473, 1, 1]
}
