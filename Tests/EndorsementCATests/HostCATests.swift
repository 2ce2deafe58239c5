import Crypto
import Foundation
import TestSupport
import Testing
import VMIdentity
import _CryptoExtras

@testable import EndorsementCA

/// Test helpers shared by the EndorsementCA suites.
enum Fixture {
    static func rsaEK() throws -> EKPublicKey {
        let key = try _RSA.Encryption.PrivateKey(keySize: .bits2048)
        let primitives = try key.publicKey.getKeyPrimitives()
        let e = [UInt8](primitives.publicExponent).reduce(UInt32(0)) { ($0 << 8) | UInt32($1) }
        return .rsa(modulus: [UInt8](primitives.modulus), exponent: e)
    }

    static func eccEK() -> EKPublicKey {
        let raw = [UInt8](P256.KeyAgreement.PrivateKey().publicKey.rawRepresentation)
        return .ecc(curve: .p256, x: Array(raw[0..<32]), y: Array(raw[32..<64]))
    }

    static func mode(_ path: String) throws -> Int {
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        return try #require(attributes[.posixPermissions] as? Int)
    }

    /// Writes `der` as PEM via openssl and returns the PEM path.
    static func writePEM(_ der: [UInt8], in dir: String, name: String) throws -> String {
        let derPath = "\(dir)/\(name).der"
        let pemPath = "\(dir)/\(name).pem"
        try Data(der).write(to: URL(fileURLWithPath: derPath))
        let result = try runCommand("openssl", ["x509", "-inform", "der", "-in", derPath, "-out", pemPath])
        #expect(result.status == 0, "openssl x509 -inform der: \(result.output)")
        return pemPath
    }

    static func opensslVerify(ca: String, certificate: String) throws -> CommandResult {
        try runCommand("openssl", ["verify", "-CAfile", ca, certificate])
    }

    static func opensslText(_ pem: String) throws -> String {
        let result = try runCommand("openssl", ["x509", "-in", pem, "-noout", "-text"])
        #expect(result.status == 0, "openssl x509 -text: \(result.output)")
        return result.stdout
    }
}

@Suite
struct HostCATests {
    @Test func createsDirectoryKeyAndCertificateWithOwnerOnlyModes() throws {
        try withTemporaryDirectory { tmp in
            let dir = "\(tmp)/ca"
            let ca = try HostCA.create(at: dir, subject: "CN=test host CA,O=swift-vtpm")
            #expect(try Fixture.mode(dir) == 0o700)
            #expect(try Fixture.mode("\(dir)/ca-key.pem") == 0o600)
            #expect(try Fixture.mode("\(dir)/ca.pem") == 0o644)
            #expect(ca.subject.contains("CN=test host CA"))
            let pem = try String(contentsOfFile: "\(dir)/ca.pem", encoding: .utf8)
            #expect(pem == ca.certificatePEM)
            let text = try Fixture.opensslText("\(dir)/ca.pem")
            #expect(text.contains("CA:TRUE"))
            #expect(text.contains("Certificate Sign"))
            #expect(text.contains("ecdsa-with-SHA384"))
            let key = try runCommand("openssl", ["pkey", "-in", "\(dir)/ca-key.pem", "-noout"])
            #expect(key.status == 0, "\(key.output)")
            // No temporary or staging files are left behind.
            let names = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
            #expect(names == ["ca-key.pem", "ca.lock", "ca.pem"])
        }
    }

    @Test func neverShowsKeyMaterial() throws {
        try withTemporaryDirectory { tmp in
            let ca = try HostCA.create(at: "\(tmp)/ca")
            let keyPEM = try String(contentsOfFile: "\(tmp)/ca/ca-key.pem", encoding: .utf8)
            let keyBody = keyPEM.split(separator: "\n").dropFirst().first.map(String.init) ?? "?"
            var dumped = ""
            dump(ca, to: &dumped)
            for text in [ca.description, String(reflecting: ca), "\(ca)", dumped] {
                #expect(!text.contains("PRIVATE"))
                #expect(!text.contains(keyBody))
            }
        }
    }

    @Test func refusesToOverwriteAnExistingCA() throws {
        try withTemporaryDirectory { tmp in
            let dir = "\(tmp)/ca"
            _ = try HostCA.create(at: dir)
            let key = fileBytes("\(dir)/ca-key.pem")
            #expect(throws: EndorsementCAError(.alreadyExists, "")) { try HostCA.create(at: dir) }
            #expect(fileBytes("\(dir)/ca-key.pem") == key)
            // A key alone (an interrupted creation) is not overwritten either.
            try FileManager.default.removeItem(atPath: "\(dir)/ca.pem")
            #expect(throws: EndorsementCAError(.alreadyExists, "")) { try HostCA.create(at: dir) }
            #expect(throws: EndorsementCAError(.notFound, "")) { try HostCA.load(from: dir) }
        }
    }

    @Test func loadsWhatCreateWrote() throws {
        try withTemporaryDirectory { tmp in
            let dir = "\(tmp)/ca"
            let created = try HostCA.loadOrCreate(at: dir)
            let loaded = try HostCA.load(from: dir)
            #expect(loaded.certificateDER == created.certificateDER)
            #expect(try HostCA.loadOrCreate(at: dir).certificateDER == created.certificateDER)
            // The loaded key signs certificates the created certificate verifies.
            let der = try loaded.issueEKCertificate(
                EKCertificateRequest(publicKey: Fixture.eccEK(), vmID: VMID.random(), generation: 0)
            )
            #expect(created.verify(der))
        }
    }

    @Test func loadFailsForMissingDirectoryOrKey() throws {
        try withTemporaryDirectory { tmp in
            #expect(throws: EndorsementCAError(.notFound, "")) { try HostCA.load(from: "\(tmp)/nothing") }
            try FileManager.default.createDirectory(atPath: "\(tmp)/empty", withIntermediateDirectories: false)
            #expect(throws: EndorsementCAError(.notFound, "")) { try HostCA.load(from: "\(tmp)/empty") }
        }
    }

    @Test(arguments: [0o644, 0o640, 0o604, 0o660])
    func refusesAKeyOthersCanRead(mode: Int) throws {
        try withTemporaryDirectory { tmp in
            let dir = "\(tmp)/ca"
            _ = try HostCA.create(at: dir)
            try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: "\(dir)/ca-key.pem")
            let error = try #require(throws: EndorsementCAError.self) { try HostCA.load(from: dir) }
            #expect(error.code == .hostileFile)
            #expect(error.message.contains("ca-key.pem"))
        }
    }

    @Test func refusesASymlinkedKey() throws {
        try withTemporaryDirectory { tmp in
            let dir = "\(tmp)/ca"
            _ = try HostCA.create(at: dir)
            try FileManager.default.moveItem(atPath: "\(dir)/ca-key.pem", toPath: "\(tmp)/real-key.pem")
            try FileManager.default.createSymbolicLink(
                atPath: "\(dir)/ca-key.pem",
                withDestinationPath: "\(tmp)/real-key.pem"
            )
            let error = try #require(throws: EndorsementCAError.self) { try HostCA.load(from: dir) }
            #expect(error.code == .hostileFile)
            #expect(error.message.contains("symbolic link"))
        }
    }

    @Test func refusesAKeyOwnedBySomeoneElse() throws {
        guard geteuid() == 0 else { return }  // only root can give a file away
        try withTemporaryDirectory { tmp in
            let dir = "\(tmp)/ca"
            _ = try HostCA.create(at: dir)
            try FileManager.default.setAttributes([.ownerAccountID: 65534], ofItemAtPath: "\(dir)/ca-key.pem")
            let error = try #require(throws: EndorsementCAError.self) { try HostCA.load(from: dir) }
            #expect(error.code == .hostileFile)
        }
    }

    @Test func refusesAKeyThatDoesNotMatchTheCertificate() throws {
        try withTemporaryDirectory { tmp in
            _ = try HostCA.create(at: "\(tmp)/a")
            _ = try HostCA.create(at: "\(tmp)/b")
            try FileManager.default.removeItem(atPath: "\(tmp)/a/ca-key.pem")
            try FileManager.default.copyItem(atPath: "\(tmp)/b/ca-key.pem", toPath: "\(tmp)/a/ca-key.pem")
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: "\(tmp)/a/ca-key.pem")
            #expect(throws: EndorsementCAError(.keyMismatch, "")) { try HostCA.load(from: "\(tmp)/a") }
        }
    }

    @Test func parsesSubjects() throws {
        let dn = try HostCA.distinguishedName(parsing: "CN=a\\, b,OU=unit,O=org,C=DE")
        #expect("\(dn)" == "CN=a\\, b,OU=unit,O=org,C=DE")
        let plain = try HostCA.distinguishedName(parsing: "plain name")
        #expect("\(plain)" == "CN=plain name")
        #expect(throws: EndorsementCAError(.invalidRequest, "")) { try HostCA.distinguishedName(parsing: "XX=1") }
        #expect(throws: EndorsementCAError(.invalidRequest, "")) { try HostCA.distinguishedName(parsing: "") }
    }
}
