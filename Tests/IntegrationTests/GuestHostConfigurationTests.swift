import EndorsementCA
import Foundation
import TPMWire
import TestSupport
import Testing
import VMIdentity

/// A QEMU guest on vtpmd started with libvirt 9.0's exact swtpm command line, configured only by the host
/// configuration file: the guest's TPM has the identity the state path names (EK certificate for that UUID,
/// the identity counter), with no clone-rekey option on vtpmd's command line.
@Suite(.serialized, .enabled(if: GuestImage.hostCanRunGuests))
struct GuestHostConfigurationTests {
    static let vm = "c0ffee00-1234-4567-89ab-0123456789ab"

    @Test(.timeLimit(.minutes(5)))
    func aGuestOnLibvirtsCommandLineSeesTheIdentityItsPathNames() throws {
        let root = "/tmp/vtpm-lv-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let state = "\(root)/swtpm/\(Self.vm)/tpm2"
        for dir in [state, "\(root)/run", "\(root)/log", "\(root)/qemu"] {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        }
        let ca = try runCommand(Binaries.vtpmState, ["ca", "init", "--ca", "\(root)/ca"])
        try #require(ca.status == 0, "\(ca.output)")
        let config = "\(root)/vtpmd.conf"
        try """
        vm-id-from = \(root)/swtpm/{uuid}/tpm2
        ca = \(root)/ca
        registry = \(root)/registry.sqlite
        host-key = \(root)/host.key
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let socket = "\(root)/run/1-guest-swtpm.sock"
        let backend = try Daemon(
            Binaries.vtpmd,
            [
                "socket", "--ctrl", "type=unixio,path=\(socket),mode=0600",
                "--tpmstate", "dir=\(state),mode=0600",
                "--log", "file=\(root)/log/guest-swtpm.log", "--terminate", "--tpm2",
            ],
            waitFor: socket,
            environment: ["VTPMD_CONFIG": config]
        )
        let guest = try QEMUGuest.launch(
            .init(directory: "\(root)/qemu", image: try GuestImage.locate(), tpmSocket: socket)
        )
        try guest.waitForReady()
        // The guest reads its EK certificate and creates its EK (digests: the serial console is not 8-bit clean).
        let certificateDigest = try guest.check(
            "tpm2_nvread 0x1c00002 -o /tmp/ek.der && sha256sum /tmp/ek.der | cut -c1-64",
            timeout: .seconds(120)
        )
        let ekDigest = try guest.check(
            "cd /tmp && tpm2_createek -c ek.ctx -G rsa -u ek.pub -Q && tpm2_flushcontext -t && sha256sum ek.pub | cut -c1-64",
            timeout: .seconds(120)
        )
        let counter = try guest.check("tpm2_nvread 0x1400001 -s 8 | od -An -v -tx1")
        #expect(try guest.quit() == 0)
        #expect(backend.waitForExit(timeout: .seconds(20)) == 0)

        // The same state read on the host: the certificate the guest read names the VM of the path and
        // certifies the EK the guest created.
        let endorsement = try Endorsement.read(Binaries.vtpmd, tpmstate: "dir=\(state)", work: root)
        #expect(try Self.sha256(Endorsement.certificatePath(root)) == Self.lastLine(certificateDigest))
        #expect(try Self.sha256(Endorsement.ekPublicPath(root)) == Self.lastLine(ekDigest))
        let info = try EKCertificateInfo(der: endorsement.ekCertificate)
        #expect(info.vmID == VMID(Self.vm) && info.generation == 0)
        #expect(info.subject.contains("CN=\(Self.vm) gen 0"))
        #expect(try info.publicKey == EKPublicKey(tpm2bPublic: endorsement.ekPublic))
        #expect(counter.split(separator: " ").count == 8)
        let log = (try? String(contentsOfFile: "\(root)/log/guest-swtpm.log", encoding: .utf8)) ?? ""
        #expect(log.contains("decision=manufacture") && log.contains("target_vm=\(Self.vm)"), "\(log)")
        let verify = try runCommand(Binaries.vtpmState, ["verify", "--state", state, "--ca", "\(root)/ca"])
        #expect(verify.status == 0, "\(verify.output)")
    }

    /// The last non-empty line of guest output (tpm2-tools may print a warning first).
    static func lastLine(_ text: String) -> String {
        String(text.split(whereSeparator: \.isNewline).last ?? "").trimmingCharacters(in: .whitespaces)
    }

    static func sha256(_ path: String) throws -> String {
        String(try runCommand("sha256sum", [path]).stdout.prefix(64))
    }
}
