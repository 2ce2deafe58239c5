import Crypto
public import Foundation
import SwiftASN1
import X509

/// The host's certificate authority for EK certificates: our counterpart of swtpm_localca.
///
/// A CA directory holds two files: `ca-key.pem`, the ECDSA P-384 private key (PKCS#8 PEM, mode 0600, owned by
/// the user running vtpmd), and `ca.pem`, the self-signed CA certificate (mode 0644), which is what verifiers
/// pass to `openssl verify -CAfile`. The key never leaves this value: ``description``, `debugDescription` and
/// reflection (`dump`) show the directory and subject only.
///
/// EK certificates follow the TCG EK Credential Profile for TPM 2.0 and name the VM identity; the layout is
/// described at ``issueEKCertificate(_:)`` and in the module's `README.md`.
public struct HostCA: Sendable {
    /// The directory the CA was created in or loaded from.
    public let directory: String
    let privateKey: P384.Signing.PrivateKey
    let certificate: Certificate
    /// The CA certificate, DER.
    public let certificateDER: [UInt8]

    /// File name of the CA private key inside the CA directory.
    public static let keyFileName = "ca-key.pem"
    /// File name of the CA certificate inside the CA directory.
    public static let certificateFileName = "ca.pem"

    /// The subject used when ``create(at:subject:)`` is not given one: `CN=swift-vtpm host CA <hostname>`.
    public static var defaultSubject: String {
        let host = ProcessInfo.processInfo.hostName.replacingOccurrences(of: ",", with: " ")
        return "CN=swift-vtpm host CA \(host),O=swift-vtpm"
    }

    /// The CA certificate, PEM.
    public var certificatePEM: String {
        Self.pem(label: "CERTIFICATE", der: self.certificateDER)
    }

    /// The CA's subject in RFC 4514 form, e.g. `O=swift-vtpm,CN=swift-vtpm host CA h1`.
    public var subject: String { self.certificate.subject.description }

    init(directory: String, privateKey: P384.Signing.PrivateKey, certificate: Certificate) throws {
        self.directory = directory
        self.privateKey = privateKey
        self.certificate = certificate
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        self.certificateDER = serializer.serializedBytes
    }

    /// Makes a new key and self-signed CA certificate (not written anywhere).
    static func generate(directory: String, subject: String) throws -> HostCA {
        let name = try Self.distinguishedName(parsing: subject)
        let key = P384.Signing.PrivateKey()
        let publicKey = Certificate.PublicKey(key.publicKey)
        do {
            let extensions = try Certificate.Extensions([
                Certificate.Extension(BasicConstraints.isCertificateAuthority(maxPathLength: 0), critical: true),
                Certificate.Extension(KeyUsage(keyCertSign: true, cRLSign: true), critical: true),
                Certificate.Extension(SubjectKeyIdentifier(hash: publicKey), critical: false),
            ])
            let certificate = try Certificate(
                version: .v3,
                serialNumber: Certificate.SerialNumber(bytes: EKCertificateRequest.randomSerialNumber()),
                publicKey: publicKey,
                notValidBefore: Date(timeIntervalSinceNow: -3600),
                notValidAfter: EKCertificateRequest.noWellDefinedExpiration,
                issuer: name,
                subject: name,
                signatureAlgorithm: .ecdsaWithSHA384,
                extensions: extensions,
                issuerPrivateKey: Certificate.PrivateKey(key)
            )
            return try HostCA(directory: directory, privateKey: key, certificate: certificate)
        } catch {
            throw EndorsementCAError(.signing, "cannot build the CA certificate for '\(subject)': \(error)")
        }
    }

    /// Checks that `der` is a certificate issued by this CA: the issuer name matches, the signature verifies
    /// with the CA key, and `time` lies within its validity period.
    /// - Parameters:
    ///   - der: The certificate, DER.
    ///   - time: The time to check validity at; defaults to now.
    /// - Returns: Whether all checks pass. A certificate that does not parse is not valid.
    public func verify(_ der: [UInt8], at time: Date = Date()) -> Bool {
        guard let certificate = try? Certificate(derEncoded: der) else { return false }
        guard certificate.issuer == self.certificate.subject else { return false }
        guard self.certificate.publicKey.isValidSignature(certificate.signature, for: certificate) else {
            return false
        }
        return certificate.notValidBefore <= time && time <= certificate.notValidAfter
    }

    /// Parses `CN=...,O=...` (RFC 4514 order: most specific first; `\,` escapes a comma). Accepted attribute
    /// types: CN, O, OU, C, ST, L. A string without `=` is taken as the common name.
    static func distinguishedName(parsing text: String) throws -> DistinguishedName {
        guard text.contains("=") else {
            guard !text.isEmpty else { throw EndorsementCAError(.invalidRequest, "the CA subject is empty") }
            return DistinguishedName([RelativeDistinguishedName(.init(type: OID.commonName, utf8String: text))])
        }
        var parts: [String] = []
        var current = ""
        var escaped = false
        for character in text {
            if escaped {
                current.append(character)
                escaped = false
            } else if character == "\\" {
                escaped = true
            } else if character == "," {
                parts.append(current)
                current = ""
            } else {
                current.append(character)
            }
        }
        parts.append(current)
        let types: [String: ASN1ObjectIdentifier] = [
            "CN": OID.commonName, "O": OID.organizationName, "OU": OID.organizationalUnitName,
            "C": [2, 5, 4, 6], "ST": [2, 5, 4, 8], "L": [2, 5, 4, 7],
        ]
        var rdns: [RelativeDistinguishedName] = []
        for part in parts {
            let pieces = part.split(separator: "=", maxSplits: 1)
            let key = pieces.first.map { $0.trimmingCharacters(in: .whitespaces).uppercased() } ?? ""
            guard pieces.count == 2, let oid = types[key] else {
                throw EndorsementCAError(.invalidRequest, "CA subject '\(text)': cannot parse '\(part)'")
            }
            let value = pieces[1].trimmingCharacters(in: .whitespaces)
            guard !value.isEmpty else {
                throw EndorsementCAError(.invalidRequest, "CA subject '\(text)': \(key) is empty")
            }
            if key == "C" {
                rdns.append(RelativeDistinguishedName(try .init(type: oid, printableString: value)))
            } else {
                rdns.append(RelativeDistinguishedName(.init(type: oid, utf8String: value)))
            }
        }
        return DistinguishedName(rdns.reversed())
    }

    static func pem(label: String, der: [UInt8]) -> String {
        let base64 = Data(der).base64EncodedString(options: [.lineLength64Characters, .endLineWithLineFeed])
        return "-----BEGIN \(label)-----\n\(base64)\n-----END \(label)-----\n"
    }
}

extension HostCA: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// The directory and subject; never key material.
    public var description: String { "HostCA(directory: \(self.directory), subject: \(self.subject))" }
    /// Same as ``description``.
    public var debugDescription: String { self.description }
    /// Hides the private key from `dump` and debuggers' reflection.
    public var customMirror: Mirror {
        Mirror(self, children: ["directory": self.directory, "subject": self.subject], displayStyle: .struct)
    }
}
