import Crypto
import SwiftASN1
import TPMWire
import X509
import _CryptoExtras

/// The public part of a TPM endorsement key, as certified by an EK certificate.
///
/// Build it from a marshalled TPM2B_PUBLIC with ``init(tpm2bPublic:)`` (the `outPublic` of TPM2_CreatePrimary or
/// TPM2_ReadPublic), or from its numbers directly.
public enum EKPublicKey: Hashable, Sendable {
    /// An RSA key: the big-endian modulus without leading zero bytes' significance, and the public exponent.
    /// An exponent of 0 means 65537, as in a TPM2B_PUBLIC; ``init(tpm2bPublic:)`` already normalizes it.
    case rsa(modulus: [UInt8], exponent: UInt32)
    /// An elliptic-curve key: big-endian affine coordinates, each as long as the curve's field size.
    case ecc(curve: ECCCurve, x: [UInt8], y: [UInt8])

    /// An elliptic curve an EK may use.
    public struct ECCCurve: Hashable, Sendable, CustomStringConvertible {
        enum Base: Hashable, Sendable { case p256 }
        let base: Base
        /// NIST P-256 (TPM_ECC_NIST_P256, secp256r1): the curve of the TCG default ECC EK templates.
        public static let p256 = ECCCurve(base: .p256)
        /// The size of one coordinate in bytes.
        public var coordinateSize: Int { 32 }
        public var description: String { "P-256" }
    }

    /// The DER SubjectPublicKeyInfo of this key, as it appears in the certificate (for fingerprints).
    /// - Returns: The DER bytes (rsaEncryption or id-ecPublicKey with the named curve).
    /// - Throws: ``EndorsementCAError`` with code `unsupportedKey` when the numbers do not form a usable key.
    public func subjectPublicKeyInfoDER() throws -> [UInt8] {
        var serializer = DER.Serializer()
        do {
            try serializer.serialize(try self.certificatePublicKey())
        } catch let error as EndorsementCAError {
            throw error
        } catch {
            throw EndorsementCAError(.unsupportedKey, "cannot encode the EK public key: \(error)")
        }
        return serializer.serializedBytes
    }

    /// The swift-certificates form of this key.
    func certificatePublicKey() throws -> Certificate.PublicKey {
        switch self {
        case .rsa(let modulus, let exponent):
            let n = Self.stripLeadingZeros(modulus)
            guard n.count >= 256 else {
                throw EndorsementCAError(
                    .unsupportedKey,
                    "RSA EK modulus has \(n.count * 8) bits; at least 2048 are required"
                )
            }
            var serializer = DER.Serializer()
            serializer.appendConstructedNode(identifier: .sequence) { coder in
                coder.appendPrimitiveNode(identifier: .integer) { $0.append(contentsOf: Self.derUnsigned(n)) }
                let e = exponent == 0 ? 65537 : exponent
                coder.appendPrimitiveNode(identifier: .integer) { bytes in
                    bytes.append(contentsOf: Self.derUnsigned(Self.bigEndian(e)))
                }
            }
            do {
                return Certificate.PublicKey(try _RSA.Signing.PublicKey(derRepresentation: serializer.serializedBytes))
            } catch {
                throw EndorsementCAError(.unsupportedKey, "RSA EK public key rejected: \(error)")
            }
        case .ecc(let curve, let x, let y):
            let size = curve.coordinateSize
            guard x.count == size, y.count == size else {
                throw EndorsementCAError(
                    .unsupportedKey,
                    "\(curve) EK point has coordinates of \(x.count) and \(y.count) bytes; expected \(size)"
                )
            }
            do {
                return Certificate.PublicKey(try P256.Signing.PublicKey(x963Representation: [0x04] + x + y))
            } catch {
                throw EndorsementCAError(.unsupportedKey, "\(curve) EK point is not on the curve")
            }
        }
    }

    /// Recovers the numbers from a certificate's public key.
    init(_ key: Certificate.PublicKey) throws {
        if let p256 = P256.Signing.PublicKey(key) {
            let raw = [UInt8](p256.rawRepresentation)
            self = .ecc(curve: .p256, x: Array(raw[0..<32]), y: Array(raw[32..<64]))
            return
        }
        guard let rsa = _RSA.Signing.PublicKey(key) else {
            throw EndorsementCAError(.unsupportedKey, "certificate key is neither RSA nor ECC P-256: \(key)")
        }
        do {
            let root = try DER.parse([UInt8](rsa.pkcs1DERRepresentation))
            guard case .constructed(let children) = root.content, root.identifier == .sequence else {
                throw EndorsementCAError(.malformedCertificate, "RSA public key is not a SEQUENCE")
            }
            var integers: [[UInt8]] = []
            for child in children {
                guard child.identifier == .integer, case .primitive(let bytes) = child.content else {
                    throw EndorsementCAError(.malformedCertificate, "RSA public key holds a non-INTEGER")
                }
                integers.append(Self.stripLeadingZeros(Array(bytes)))
            }
            guard integers.count == 2, integers[1].count <= 4 else {
                throw EndorsementCAError(.malformedCertificate, "RSA public key is not (modulus, exponent)")
            }
            let exponent = integers[1].reduce(UInt32(0)) { ($0 << 8) | UInt32($1) }
            self = .rsa(modulus: integers[0], exponent: exponent)
        } catch let error as EndorsementCAError {
            throw error
        } catch {
            throw EndorsementCAError(.malformedCertificate, "RSA public key: \(error)")
        }
    }

    static func stripLeadingZeros(_ bytes: [UInt8]) -> [UInt8] {
        Array(bytes.drop(while: { $0 == 0 }))
    }

    /// The content octets of a DER INTEGER holding the unsigned big-endian `bytes`.
    static func derUnsigned(_ bytes: [UInt8]) -> [UInt8] {
        let trimmed = stripLeadingZeros(bytes)
        guard let first = trimmed.first else { return [0] }
        return first & 0x80 != 0 ? [0] + trimmed : trimmed
    }

    static func bigEndian(_ value: UInt32) -> [UInt8] {
        [
            UInt8(truncatingIfNeeded: value >> 24), UInt8(truncatingIfNeeded: value >> 16),
            UInt8(truncatingIfNeeded: value >> 8), UInt8(truncatingIfNeeded: value),
        ]
    }
}

extension EKPublicKey: CustomStringConvertible {
    /// A short description: the algorithm and size, never the numbers themselves.
    public var description: String {
        switch self {
        case .rsa(let modulus, _): return "RSA-\(Self.stripLeadingZeros(modulus).count * 8)"
        case .ecc(let curve, _, _): return "ECC \(curve)"
        }
    }
}
