import Foundation
import TestSupport
import Testing
import VMIdentity

@testable import EndorsementCA

@Suite
struct EKPublicKeyTests {
    /// A TPM2B_PUBLIC as the TCG default RSA EK template gives it (policy, AES-128-CFB, no scheme), with `modulus`.
    static func rsaPublic(exponent: UInt32 = 0, modulus: [UInt8] = [UInt8](repeating: 0xA5, count: 256)) -> [UInt8] {
        var body: [UInt8] = [0x00, 0x01, 0x00, 0x0B, 0x00, 0x03, 0x00, 0xB2]  // RSA, SHA-256, attributes
        body += [0x00, 0x20] + [UInt8](repeating: 0x83, count: 32)  // authPolicy
        body += [0x00, 0x06, 0x00, 0x80, 0x00, 0x43]  // AES 128 CFB
        body += [0x00, 0x10]  // scheme NULL
        body += [0x08, 0x00]  // keyBits 2048
        body += EKPublicKey.bigEndian(exponent)
        body += [UInt8(modulus.count >> 8), UInt8(modulus.count & 0xFF)] + modulus
        return [UInt8(body.count >> 8), UInt8(body.count & 0xFF)] + body
    }

    static func eccPublic(curve: UInt16 = 0x0003, x: [UInt8], y: [UInt8]) -> [UInt8] {
        var body: [UInt8] = [0x00, 0x23, 0x00, 0x0B, 0x00, 0x03, 0x00, 0xB2]
        body += [0x00, 0x20] + [UInt8](repeating: 0x83, count: 32)
        body += [0x00, 0x06, 0x00, 0x80, 0x00, 0x43]
        body += [0x00, 0x10]  // scheme NULL
        body += [UInt8(curve >> 8), UInt8(curve & 0xFF)]
        body += [0x00, 0x10]  // kdf NULL
        body += [0x00, UInt8(x.count)] + x + [0x00, UInt8(y.count)] + y
        return [UInt8(body.count >> 8), UInt8(body.count & 0xFF)] + body
    }

    @Test func parsesRSAWithDefaultExponent() throws {
        let key = try EKPublicKey(tpm2bPublic: Self.rsaPublic())
        #expect(key == .rsa(modulus: [UInt8](repeating: 0xA5, count: 256), exponent: 65537))
        #expect(
            try EKPublicKey(tpm2bPublic: Self.rsaPublic(exponent: 3))
                == .rsa(modulus: [UInt8](repeating: 0xA5, count: 256), exponent: 3)
        )
    }

    @Test func leftPadsShortECCCoordinates() throws {
        let key = try EKPublicKey(tpm2bPublic: Self.eccPublic(x: [1, 2], y: [UInt8](repeating: 9, count: 32)))
        #expect(
            key
                == .ecc(
                    curve: .p256,
                    x: [UInt8](repeating: 0, count: 30) + [1, 2],
                    y: [UInt8](repeating: 9, count: 32)
                )
        )
    }

    @Test func rejectsEveryTruncation() throws {
        for input in [
            Self.rsaPublic(), Self.eccPublic(x: [UInt8](repeating: 1, count: 32), y: [UInt8](repeating: 2, count: 32)),
        ] {
            for length in 0..<input.count {
                var cut = Array(input[0..<length])
                #expect(throws: EndorsementCAError.self) { try EKPublicKey(tpm2bPublic: cut) }
                // Also with a size field that matches the truncated body: then the TPMT_PUBLIC itself is short.
                if length >= 2 {
                    cut[0] = UInt8((length - 2) >> 8)
                    cut[1] = UInt8((length - 2) & 0xFF)
                    #expect(throws: EndorsementCAError.self) { try EKPublicKey(tpm2bPublic: cut) }
                }
            }
        }
    }

    enum Mutation: String, CaseIterable, Sendable {
        case trailingByteAfterTheTPM2B, sizeLargerThanTheBody, modulusShorterThanKeyBits, unknownObjectType

        func apply(_ b: [UInt8]) -> [UInt8] {
            switch self {
            case .trailingByteAfterTheTPM2B: return b + [0]
            case .sizeLargerThanTheBody: return [b[0], b[1] &+ 1] + b[2...]
            case .modulusShorterThanKeyBits:
                return EKPublicKeyTests.rsaPublic(modulus: [UInt8](repeating: 1, count: 255))
            case .unknownObjectType: return [b[0], b[1], 0x00, 0x08] + b[4...]
            }
        }
    }

    @Test(arguments: Mutation.allCases)
    func rejectsMalformedRSAAreas(_ mutation: Mutation) {
        #expect(throws: EndorsementCAError.self, "\(mutation)") {
            try EKPublicKey(tpm2bPublic: mutation.apply(Self.rsaPublic()))
        }
    }

    @Test func rejectsOtherCurves() {
        let input = Self.eccPublic(
            curve: 0x0004,
            x: [UInt8](repeating: 1, count: 48),
            y: [UInt8](repeating: 2, count: 48)
        )
        #expect(throws: EndorsementCAError(.unsupportedKey, "")) { try EKPublicKey(tpm2bPublic: input) }
    }

    /// Real EKs from swtpm via tpm2_createek; then a certificate for each that openssl verifies.
    @Test func parsesEKsCreatedBySwtpmAndCertifiesThem() throws {
        try withTemporaryDirectory { tmp in
            let state = "\(tmp)/state"
            try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
            let port = try freePortPair()
            let swtpm = try Daemon(
                "swtpm",
                [
                    "socket", "--tpm2", "--tpmstate", "dir=\(state)",
                    "--server", "type=tcp,port=\(port),bindaddr=127.0.0.1",
                    "--ctrl", "type=tcp,port=\(port + 1),bindaddr=127.0.0.1",
                    "--flags", "not-need-init,startup-clear",
                ],
                waitForPort: port + 1
            )
            defer {
                _ = try? runCommand("swtpm_ioctl", ["--tcp", "127.0.0.1:\(port + 1)", "-s"])
                _ = swtpm.waitForExit(timeout: .seconds(5))
                swtpm.stop()
            }
            let environment = ["TPM2TOOLS_TCTI": "swtpm:host=127.0.0.1,port=\(port)"]
            let ca = try HostCA.create(at: "\(tmp)/ca")
            for (algorithm, expectedKind) in [("rsa", "rsa"), ("ecc", "ecc")] {
                let pub = "\(tmp)/ek-\(algorithm).pub"
                let result = try runCommand(
                    "tpm2_createek",
                    ["-c", "\(tmp)/ek-\(algorithm).ctx", "-G", algorithm, "-u", pub],
                    environment: environment
                )
                try #require(result.status == 0, "tpm2_createek -G \(algorithm): \(result.output)")
                let bytes = try #require(fileBytes(pub))
                let key = try EKPublicKey(tpm2bPublic: bytes)
                switch key {
                case .rsa(let modulus, let exponent):
                    #expect(expectedKind == "rsa")
                    #expect(modulus.count == 256)
                    #expect(exponent == 65537)
                case .ecc(let curve, let x, let y):
                    #expect(expectedKind == "ecc")
                    #expect(curve == .p256 && x.count == 32 && y.count == 32)
                }
                let der = try ca.issueEKCertificate(
                    EKCertificateRequest(publicKey: key, vmID: VMID.random(), generation: 0)
                )
                let pem = try Fixture.writePEM(der, in: tmp, name: "ek-\(algorithm)")
                let verify = try Fixture.opensslVerify(ca: "\(tmp)/ca/ca.pem", certificate: pem)
                #expect(verify.status == 0 && verify.stdout.contains(": OK"), "\(verify.output)")
                #expect(try EKCertificateInfo(der: der).publicKey == key)

                // The certified key is the one the TPM reports (openssl's view of tpm2_readpublic's PEM).
                // tpm2_createek leaves its key loaded and there is no resource manager: flush first.
                let flush = try runCommand("tpm2_flushcontext", ["-t"], environment: environment)
                try #require(flush.status == 0, "tpm2_flushcontext: \(flush.output)")
                let tpmPEM = "\(tmp)/ek-\(algorithm)-tpm.pem"
                let read = try runCommand(
                    "tpm2_readpublic",
                    ["-c", "\(tmp)/ek-\(algorithm).ctx", "-f", "pem", "-o", tpmPEM],
                    environment: environment
                )
                try #require(read.status == 0, "tpm2_readpublic: \(read.output)")
                let certKey = try runCommand("openssl", ["x509", "-in", pem, "-noout", "-pubkey"])
                let tpmKey = try runCommand("openssl", ["pkey", "-pubin", "-in", tpmPEM])
                #expect(certKey.stdout == tpmKey.stdout)
            }
        }
    }
}
