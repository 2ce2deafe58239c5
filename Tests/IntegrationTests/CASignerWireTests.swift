import CASigner
import Crypto
import EndorsementCA
import Foundation
import Registry
import TPMWire
import TestSupport
import Testing
import VMIdentity
import _VTPMPosix

/// The separated CA signer (`vtpm-state ca serve`) as the package runs it: its own user (`vtpm-ca`, in vtpmd's
/// group `tss`, which shares the registry), the CA key readable by it alone, vtpmd running as tss with only the
/// signer's socket in its configuration.
@Suite(.serialized)
struct CASignerWireTests {
    static let vmA = "6f1c1a52-3c1e-4a57-9d0e-4f3b2a1c0d9e"
    static let vmB = "0b1e7a34-8c2d-4e6f-a1b2-c3d4e5f60718"
    static let signerUser = "vtpm-ca"

    /// The signer's user, as the Debian package creates it (a system user whose primary group is tss).
    static let signerUserExists: Bool = {
        guard ProcessControl.effectiveUserID == 0, ProcessControl.groupID("tss") != nil else { return false }
        if (try? runCommand("getent", ["passwd", signerUser]))?.status == 0 { return true }
        let made = try? runCommand(
            "useradd",
            [
                "--system", "--gid", "tss", "--no-create-home", "--home-dir", "/nonexistent", "--shell",
                "/usr/sbin/nologin", signerUser,
            ]
        )
        return made?.status == 0
    }()

    static func run(_ arguments: [String], _ what: String) throws {
        let r = try runCommand(arguments[0], Array(arguments.dropFirst()))
        try #require(r.status == 0, "\(what): \(r.output)")
    }

    @Test(.enabled(if: signerUserExists))
    func aCloneUnderTheSeparatedSignerGetsItsCertifiedEKAndNothingElseIsIssued() throws {
        try withTemporaryDirectory { root in
            try Self.run(["chmod", "0755", root], "chmod")
            // /var/lib/vtpm's part: the registry and the host key, shared with the signer's group.
            for dir in ["lib", "ca-parent", "run", "etc", "swtpm/\(Self.vmA)/tpm2", "swtpm/\(Self.vmB)"] {
                try FileManager.default.createDirectory(atPath: "\(root)/\(dir)", withIntermediateDirectories: true)
            }
            try Self.run(["chown", "tss:tss", "\(root)/lib"], "chown lib")
            try Self.run(["chmod", "2770", "\(root)/lib"], "chmod lib")
            try Self.run(["chown", "-R", "tss:tss", "\(root)/swtpm"], "chown swtpm")
            // The CA belongs to the signer's user alone; its socket directory lets group tss in.
            let ca = "\(root)/ca-parent/ca"
            try Self.run([Binaries.vtpmState, "ca", "init", "--ca", ca], "ca init")
            try Self.run(["chown", "-R", "\(Self.signerUser):tss", ca], "chown ca")
            try Self.run(["chown", "\(Self.signerUser):tss", "\(root)/run"], "chown run")
            try Self.run(["chmod", "0750", "\(root)/run"], "chmod run")
            let socket = "\(root)/run/ca-signer.sock"
            let config = "\(root)/etc/vtpmd.conf"
            try """
            vm-id-from = \(root)/swtpm/{uuid}/tpm2
            ca-signer = \(socket)
            registry = \(root)/lib/registry.sqlite
            host-key = \(root)/lib/host.key
            """.write(toFile: config, atomically: true, encoding: .utf8)
            try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: config)
            let env = ["VTPMD_CONFIG": config]

            let signer = try Daemon(
                Binaries.vtpmState,
                [
                    "ca", "serve", "--ca", ca, "--registry", "\(root)/lib/registry.sqlite", "--socket", socket,
                    "--socket-group", "tss", "--runas", Self.signerUser, "--log", "\(root)/signer.log",
                ],
                waitFor: socket
            )
            var signerLog: String { (try? String(contentsOfFile: "\(root)/signer.log", encoding: .utf8)) ?? "" }
            let tssUID = try #require(ProcessControl.userID("tss"))
            // The emulator's user cannot read the CA key; the signer runs as its own user.
            let peek = try runCommand(
                "setpriv",
                ["--reuid=tss", "--regid=tss", "--clear-groups", "cat", "\(ca)/\(HostCA.keyFileName)"]
            )
            #expect(peek.status != 0 && !peek.stdout.contains("PRIVATE KEY"))
            #expect(
                LeastPrivilegeTests.status(signer.pid, "Uid")?.hasPrefix(
                    String(ProcessControl.userID(Self.signerUser) ?? 0)
                ) == true
            )

            // A's TPM, provisioned through the signer (as the swtpm_setup stand-in would).
            let stateA = "\(root)/swtpm/\(Self.vmA)/tpm2"
            let created = try runCommand(Binaries.vtpmState, ["create", "--state", stateA], environment: env)
            try #require(created.status == 0, "\(created.output)")
            #expect(signerLog.contains("issued EK certificate for \(Self.vmA) generation 0 (rsa"))
            #expect(signerLog.contains("issued EK certificate for \(Self.vmA) generation 0 (ecc"))

            // B: a copied state directory, started by vtpmd as tss. The copy is a clone: vtpmd rekeys it and
            // asks the signer for B's certificates.
            let stateB = "\(root)/swtpm/\(Self.vmB)/tpm2"
            try Self.run(["cp", "-a", stateA, stateB], "cp")
            let ctrl = "\(root)/run/b.sock"
            let vtpmd = try Daemon(
                Binaries.vtpmd,
                [
                    "socket", "--tpm2", "--tpmstate", "dir=\(stateB)", "--ctrl", "type=unixio,path=\(ctrl)",
                    "--server", "type=tcp,port=\(try freePort())", "--log", "file=\(root)/b.log,level=20",
                    "--runas", "tss",
                ],
                waitFor: ctrl,
                environment: env
            )
            let control = try ControlClient(unixPath: ctrl)
            #expect(try control.result(.initialize(flags: 0)) == 0)
            #expect(LeastPrivilegeTests.status(vtpmd.pid, "Uid")?.hasPrefix("\(tssUID)\t") == true)
            #expect(try control.result(.shutdown) == 0)
            _ = vtpmd.waitForExit()
            let log = (try? String(contentsOfFile: "\(root)/b.log", encoding: .utf8)) ?? ""
            #expect(log.contains("clone"), "\(log)")
            #expect(!log.contains("private key"))
            #expect(signerLog.contains("issued EK certificate for \(Self.vmB) generation 0 (rsa"))
            #expect(signerLog.contains("issued EK certificate for \(Self.vmB) generation 0 (ecc"))
            #expect(signerLog.contains("uid \(tssUID)"))
            // Both states verify against the CA, and B's names B (and A as its parent).
            for state in [stateA, stateB] {
                let verify = try runCommand(Binaries.vtpmState, ["verify", "--state", state, "--ca", ca])
                #expect(verify.status == 0, "verify \(state): \(verify.output)")
            }
            let inspect = try runCommand(Binaries.vtpmState, ["inspect", "--state", stateB])
            #expect(inspect.stdout.contains("identity: vm \(Self.vmB) generation 0, clone of \(Self.vmA)"))

            // A rekeyed at rest: generation 1.
            let rekeyed = try runCommand(Binaries.vtpmState, ["rekey", "--state", stateA], environment: env)
            try #require(rekeyed.status == 0, "\(rekeyed.output)")
            #expect(signerLog.contains("issued EK certificate for \(Self.vmA) generation 1 (ecc"))

            // What a compromised emulator could ask for is refused and logged.
            let client = CASignerClient(socketPath: socket)
            let raw = [UInt8](P256.KeyAgreement.PrivateKey().publicKey.rawRepresentation)
            let forged = EKPublicKey.ecc(curve: .p256, x: Array(raw[0..<32]), y: Array(raw[32..<64]))
            let a = try #require(VMID(Self.vmA))
            let b = try #require(VMID(Self.vmB))
            let cases: [(EKCertificateRequest, String)] = [
                // Another VM's identity (A's current generation) for a key A does not have.
                (EKCertificateRequest(publicKey: forged, vmID: a, generation: 1), "not the ecc EK"),
                // A's older generation.
                (EKCertificateRequest(publicKey: forged, vmID: a, generation: 0), "older generation"),
                // A generation no rekey recorded.
                (EKCertificateRequest(publicKey: forged, vmID: b, generation: 5), "records no ecc EK"),
            ]
            for (request, reason) in cases {
                let refused = #expect(throws: EndorsementCAError.self) { try client.issueEKCertificate(request) }
                #expect(refused?.code == .refused)
                #expect(refused?.message.contains(reason) == true, "\(String(describing: refused))")
            }
            #expect(signerLog.components(separatedBy: "refused").count - 1 == cases.count)
            #expect(signer.isRunning)
        }
    }
}
