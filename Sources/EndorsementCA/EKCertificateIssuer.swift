import Crypto
import SwiftASN1
import X509

/// What issues EK certificates: the host CA in this process (``HostCA``), or a separated signer process that
/// holds the CA key (the `CASigner` module's client).
public protocol EKCertificateIssuer: Sendable {
    /// Issues one EK certificate.
    /// - Parameter request: What the certificate names.
    /// - Returns: The certificate, DER.
    /// - Throws: The issuer's error; nothing is issued.
    func issueEKCertificate(_ request: EKCertificateRequest) throws -> [UInt8]
}

extension HostCA: EKCertificateIssuer {}

extension EKPublicKey {
    /// SHA-256 of the key's DER SubjectPublicKeyInfo: how the registry records an EK.
    /// - Throws: ``EndorsementCAError`` when the numbers do not form a usable key.
    public func digest() throws -> [UInt8] {
        Array(SHA256.hash(data: try self.subjectPublicKeyInfoDER()))
    }

    /// Whether the key is RSA (else ECC).
    public var isRSA: Bool {
        if case .rsa = self { return true }
        return false
    }

    /// Reads a DER SubjectPublicKeyInfo (RSA, or ECC P-256).
    /// - Parameter der: The DER bytes.
    /// - Throws: ``EndorsementCAError`` (`unsupportedKey`) for anything else.
    public init(subjectPublicKeyInfoDER der: [UInt8]) throws {
        let key: Certificate.PublicKey
        do {
            key = try Certificate.PublicKey(derEncoded: der)
        } catch {
            throw EndorsementCAError(.unsupportedKey, "not a DER SubjectPublicKeyInfo: \(error)")
        }
        try self.init(key)
    }
}
