import EndorsementCA
import Foundation
import TPMWire
import TestSupport
import Testing
import VMIdentity

/// A QEMU guest on vtpmd started with libvirt 9.0's and Proxmox VE's exact swtpm command lines, configured only
/// by the host configuration file: the guest's TPM has the identity the state path names (EK certificate for
/// that vm-id, the identity counter), with no clone-rekey option on vtpmd's command line.
@Suite(.serialized, .enabled(if: GuestImage.hostCanRunGuests))
struct GuestHostConfigurationTests {
    enum Manager: String, CaseIterable, Sendable {
        case libvirt, proxmox

        /// The vm-id the state path names.
        var vmID: String {
            switch self {
            case .libvirt: "c0ffee00-1234-4567-89ab-0123456789ab"
            case .proxmox: "105"
            }
        }
    }

    @Test(.timeLimit(.minutes(5)), arguments: Manager.allCases)
    func aGuestOnTheManagersCommandLineSeesTheIdentityItsPathNames(_ manager: Manager) throws {
        let root = "/tmp/vtpm-lv-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let vm = manager.vmID
        for dir in ["\(root)/run", "\(root)/log", "\(root)/qemu", "\(root)/swtpm/\(vm)/tpm2", "\(root)/images/\(vm)"] {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        }
        let ca = try runCommand(Binaries.vtpmState, ["ca", "init", "--ca", "\(root)/ca"])
        try #require(ca.status == 0, "\(ca.output)")
        let config = "\(root)/vtpmd.conf"
        let pattern =
            manager == .libvirt ? "\(root)/swtpm/{uuid}/tpm2" : "\(root)/images/{name}/vm-*-disk-1.raw"
        try """
        vm-id-from = \(pattern)
        ca = \(root)/ca
        registry = \(root)/registry.sqlite
        host-key = \(root)/host.key
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let env = ["VTPMD_CONFIG": config]
        let log = "\(root)/log/guest-swtpm.log"
        let socket: String
        let tpmstate: String
        var backend: Daemon? = nil
        let pidFile = "\(root)/run/\(vm).swtpm.pid"
        switch manager {
        case .libvirt:
            socket = "\(root)/run/1-guest-swtpm.sock"
            tpmstate = "dir=\(root)/swtpm/\(vm)/tpm2"
            backend = try Daemon(
                Binaries.vtpmd,
                [
                    "socket", "--ctrl", "type=unixio,path=\(socket),mode=0600", "--tpmstate", "\(tpmstate),mode=0600",
                    "--log", "file=\(log)", "--terminate", "--tpm2",
                ],
                waitFor: socket,
                environment: env
            )
        case .proxmox:
            // Proxmox allocates the volume (zeros); vtpmd daemonizes itself and writes the pid file.
            let volume = "\(root)/images/\(vm)/vm-\(vm)-disk-1.raw"
            #expect(FileManager.default.createFile(atPath: volume, contents: Data(count: 262_144)))
            socket = "\(root)/run/\(vm).swtpm"
            tpmstate = "backend-uri=file://\(volume)"
            let started = try runCommand(
                Binaries.vtpmd,
                [
                    "socket", "--tpmstate", "\(tpmstate),mode=0600", "--ctrl", "type=unixio,path=\(socket),mode=0600",
                    "--pid", "file=\(pidFile)", "--terminate", "--daemon", "--log",
                    "file=\(log),level=1,prefix=[id=1733490000]", "--tpm2",
                ],
                environment: env
            )
            try #require(started.status == 0, "\(started.output)")
        }
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
        if let backend {
            #expect(backend.waitForExit(timeout: .seconds(20)) == 0)
        } else {
            // --terminate: the daemon exits with QEMU and removes its pid file.
            for _ in 0..<2000 where FileManager.default.fileExists(atPath: pidFile) {
                Thread.sleep(forTimeInterval: 0.01)
            }
            #expect(!FileManager.default.fileExists(atPath: pidFile))
        }

        // The same state read on the host: the certificate the guest read names the VM of the path and
        // certifies the EK the guest created.
        let endorsement = try Endorsement.read(Binaries.vtpmd, tpmstate: tpmstate, work: root)
        #expect(try Self.sha256(Endorsement.certificatePath(root)) == Self.lastLine(certificateDigest))
        #expect(try Self.sha256(Endorsement.ekPublicPath(root)) == Self.lastLine(ekDigest))
        let info = try EKCertificateInfo(der: endorsement.ekCertificate)
        #expect(info.vmID == VMID(vm) && info.generation == 0)
        #expect(info.subject.contains("CN=\(vm) gen 0"))
        #expect(try info.publicKey == EKPublicKey(tpm2bPublic: endorsement.ekPublic))
        #expect(counter.split(separator: " ").count == 8)
        let logText = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(logText.contains("decision=manufacture") && logText.contains("target_vm=\(vm)"), "\(logText)")
        if manager == .libvirt {
            // vtpm-state reads state directories (not file volumes).
            let verify = try runCommand(
                Binaries.vtpmState,
                ["verify", "--state", "\(root)/swtpm/\(vm)/tpm2", "--ca", "\(root)/ca"]
            )
            #expect(verify.status == 0, "\(verify.output)")
        }
    }

    /// The last non-empty line of guest output (tpm2-tools may print a warning first).
    static func lastLine(_ text: String) -> String {
        String(text.split(whereSeparator: \.isNewline).last ?? "").trimmingCharacters(in: .whitespaces)
    }

    static func sha256(_ path: String) throws -> String {
        String(try runCommand("sha256sum", [path]).stdout.prefix(64))
    }
}
