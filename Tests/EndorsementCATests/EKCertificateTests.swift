import Crypto
import Foundation
import TestSupport
import Testing
import VMIdentity

@testable import EndorsementCA

@Suite
struct EKCertificateTests {
    @Test func rsaEKCertificateVerifiesWithOpenSSLAndFollowsTheProfile() throws {
        try withTemporaryDirectory { tmp in
            let ca = try HostCA.create(at: "\(tmp)/ca")
            let vmID = VMID.random()
            let key = try Fixture.rsaEK()
            let der = try ca.issueEKCertificate(EKCertificateRequest(publicKey: key, vmID: vmID, generation: 3))
            let pem = try Fixture.writePEM(der, in: tmp, name: "rsa-ek")
            let verify = try Fixture.opensslVerify(ca: "\(tmp)/ca/ca.pem", certificate: pem)
            #expect(verify.status == 0)
            #expect(verify.stdout.contains("\(pem): OK"), "\(verify.output)")

            let text = try Fixture.opensslText(pem)
            let id = vmID.description
            #expect(text.contains("Version: 3 (0x2)"))
            #expect(text.contains("Subject: O = swift-vtpm, CN = \(id) gen 3"))
            #expect(text.contains("X509v3 Subject Alternative Name: \n"))  // present, not critical
            #expect(text.contains("DirName:/2.23.133.2.1=id:00001014/2.23.133.2.2=swtpm/2.23.133.2.3=id:20191023"))
            #expect(text.contains("URI:urn:uuid:\(id)"))
            #expect(text.contains("X509v3 Key Usage: critical\n                Key Encipherment\n"))
            #expect(text.contains("X509v3 Basic Constraints: critical\n                CA:FALSE"))
            #expect(text.contains("X509v3 Extended Key Usage: \n                2.23.133.8.1"))
            #expect(text.contains("X509v3 Authority Key Identifier"))
            #expect(text.contains("X509v3 Subject Directory Attributes"))
            #expect(text.contains("1.3.6.1.4.1.32473.1.1"))
            #expect(text.contains("Public-Key: (2048 bit)"))
            #expect(!text.contains("description = parent"))

            let info = try EKCertificateInfo(der: der)
            #expect(info.publicKey == key)
            #expect(info.vmID == vmID && info.generation == 3)
            #expect(info.parentVMID == nil && info.parentGeneration == nil)
            #expect(
                info.tpmManufacturer == "id:00001014" && info.tpmModel == "swtpm" && info.tpmVersion == "id:20191023"
            )
            #expect(info.hasEKCertificatePurpose)
            #expect(info.serialNumber.count == 16)
            #expect(info.notValidAfter == EKCertificateRequest.noWellDefinedExpiration)
            #expect(info.subject.contains("CN=\(id) gen 3"))
            #expect(ca.verify(der))
        }
    }

    @Test func eccCloneCertificateNamesTheParentAndUsesKeyAgreement() throws {
        try withTemporaryDirectory { tmp in
            let ca = try HostCA.create(at: "\(tmp)/ca")
            let vmID = VMID.random()
            let parent = VMID.random()
            let key = Fixture.eccEK()
            let serial = EKCertificateRequest.randomSerialNumber()
            let request = EKCertificateRequest(
                publicKey: key,
                vmID: vmID,
                generation: 1,
                parentVMID: parent,
                parentGeneration: UInt64.max,
                serialNumber: serial
            )
            let der = try ca.issueEKCertificate(request)
            let pem = try Fixture.writePEM(der, in: tmp, name: "ecc-ek")
            let verify = try Fixture.opensslVerify(ca: "\(tmp)/ca/ca.pem", certificate: pem)
            #expect(verify.status == 0 && verify.stdout.contains("\(pem): OK"), "\(verify.output)")

            let text = try Fixture.opensslText(pem)
            #expect(text.contains("X509v3 Key Usage: critical\n                Key Agreement\n"))
            #expect(text.contains("NIST CURVE: P-256"))
            #expect(text.contains("description = parent \(parent.description) gen \(UInt64.max)"))
            // The private extension keeps the UUIDs legible in openssl's dump of it.
            #expect(text.contains(vmID.description + "."))

            let info = try EKCertificateInfo(der: der)
            #expect(info.publicKey == key)
            #expect(info.vmID == vmID && info.generation == 1)
            #expect(info.parentVMID == parent && info.parentGeneration == UInt64.max)
            #expect(info.serialNumber == serial)
        }
    }

    @Test func verifyRejectsOtherCAsTamperingAndExpiry() throws {
        try withTemporaryDirectory { tmp in
            let ca = try HostCA.create(at: "\(tmp)/a")
            let other = try HostCA.create(at: "\(tmp)/b", subject: ca.subject)  // same name, other key
            let request = EKCertificateRequest(
                publicKey: Fixture.eccEK(),
                vmID: VMID.random(),
                generation: 0,
                notValidBefore: Date(timeIntervalSinceNow: -60),
                notValidAfter: Date(timeIntervalSinceNow: 3600)
            )
            let own = try ca.issueEKCertificate(request)
            let foreign = try other.issueEKCertificate(request)
            #expect(ca.verify(own))
            #expect(!ca.verify(foreign))
            #expect(other.verify(foreign))
            #expect(!ca.verify(own, at: Date(timeIntervalSinceNow: 7200)))
            #expect(!ca.verify(own, at: Date(timeIntervalSinceNow: -3600)))
            var tampered = own
            tampered[tampered.count / 2] ^= 0x01
            #expect(!ca.verify(tampered))
            #expect(!ca.verify([0x30, 0x00]))

            let foreignPEM = try Fixture.writePEM(foreign, in: tmp, name: "foreign")
            let result = try Fixture.opensslVerify(ca: "\(tmp)/a/ca.pem", certificate: foreignPEM)
            #expect(result.status != 0)
        }
    }

    @Test func rejectsInvalidRequests() throws {
        try withTemporaryDirectory { tmp in
            let ca = try HostCA.create(at: "\(tmp)/ca")
            let base = EKCertificateRequest(publicKey: Fixture.eccEK(), vmID: VMID.random(), generation: 0)
            var requests: [EKCertificateRequest] = []
            var r = base
            r.parentVMID = VMID.random()
            requests.append(r)
            r = base
            r.tpmManufacturer = "IBM"
            requests.append(r)
            r = base
            r.tpmVersion = "id:2019102"
            requests.append(r)
            r = base
            r.tpmModel = ""
            requests.append(r)
            r = base
            r.serialNumber = [0x80] + [UInt8](repeating: 1, count: 15)
            requests.append(r)
            r = base
            r.serialNumber = [0, 0]
            requests.append(r)
            r = base
            r.notValidAfter = r.notValidBefore
            requests.append(r)
            for request in requests {
                #expect(throws: EndorsementCAError(.invalidRequest, "")) { try ca.issueEKCertificate(request) }
            }
            var weak = base
            weak.publicKey = .rsa(modulus: [UInt8](repeating: 0xC1, count: 128), exponent: 65537)
            #expect(throws: EndorsementCAError(.unsupportedKey, "")) { try ca.issueEKCertificate(weak) }
            weak.publicKey = .ecc(
                curve: .p256,
                x: [UInt8](repeating: 1, count: 32),
                y: [UInt8](repeating: 2, count: 32)
            )
            #expect(throws: EndorsementCAError(.unsupportedKey, "")) { try ca.issueEKCertificate(weak) }
        }
    }

    @Test func infoRejectsGarbage() {
        #expect(throws: EndorsementCAError(.malformedCertificate, "")) {
            try EKCertificateInfo(der: [0x30, 0x03, 1, 2, 3])
        }
        #expect(throws: EndorsementCAError(.malformedCertificate, "")) { try EKCertificateInfo(der: []) }
    }

    @Test func identityExtensionRoundTripsAndRejectsTrailingFields() throws {
        let value = VMIdentityExtension(
            vmID: VMID.random(),
            generation: 7,
            parentVMID: VMID.random(),
            parentGeneration: 0
        )
        let der = try value.encode()
        #expect(try VMIdentityExtension(derEncoded: der[...]) == value)
        let noParent = VMIdentityExtension(vmID: VMID.random(), generation: 0, parentVMID: nil, parentGeneration: nil)
        #expect(try VMIdentityExtension(derEncoded: try noParent.encode()[...]) == noParent)
        // SEQUENCE { UTF8String "/", INTEGER 0 }: neither a UUID nor a vm-id name.
        #expect(throws: EndorsementCAError.self) {
            try VMIdentityExtension(derEncoded: [0x30, 0x06, 0x0C, 0x01, 0x2F, 0x02, 0x01, 0x00][...])
        }
        // A named vm-id (Proxmox) round-trips as written.
        let named = VMIdentityExtension(vmID: VMID("101")!, generation: 2, parentVMID: VMID("100"), parentGeneration: 1)
        #expect(try VMIdentityExtension(derEncoded: try named.encode()[...]) == named)
    }
}
