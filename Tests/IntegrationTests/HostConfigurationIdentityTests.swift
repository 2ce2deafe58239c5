import EndorsementCA
import Foundation
import TPMWire
import TestSupport
import Testing
import VMIdentity

/// Clone-rekey configured only by a host configuration file (`VTPMD_CONFIG`), with the exact command
/// lines libvirt 9.0 and Proxmox VE run for swtpm, real vtpmd processes, vtpmctl, vtpm-state and tpm2-tools.
@Suite(.serialized)
struct HostConfigurationIdentityTests {
    static let vmA = "6f1c1a52-3c1e-4a57-9d0e-4f3b2a1c0d9e"
    static let vmB = "0b1e7a34-8c2d-4e6f-a1b2-c3d4e5f60718"

    /// A host: CA, registry, host key and `vtpmd.conf` under one temporary root.
    struct Host {
        let root: String
        var config: String { "\(self.root)/etc/vtpmd.conf" }
        var env: [String: String] { ["VTPMD_CONFIG": self.config] }

        init(_ root: String, extra: String = "") throws {
            self.root = root
            for dir in ["etc", "run", "log", "var/lib/libvirt/swtpm", "images"] {
                try FileManager.default.createDirectory(atPath: "\(root)/\(dir)", withIntermediateDirectories: true)
            }
            let ca = try runCommand(Binaries.vtpmState, ["ca", "init", "--ca", "\(root)/ca"])
            try #require(ca.status == 0, "\(ca.output)")
            try self.writeConfig(
                """
                # one file for every VM of this host
                vm-id-from = \(root)/var/lib/libvirt/swtpm/{uuid}/tpm2
                ca = \(root)/ca
                registry = \(root)/registry.sqlite
                host-key = \(root)/host.key
                \(extra)
                """
            )
        }

        func writeConfig(_ text: String) throws {
            try text.write(toFile: self.config, atomically: true, encoding: .utf8)
            try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: self.config)
        }

        func libvirtState(_ uuid: String) -> String { "\(self.root)/var/lib/libvirt/swtpm/\(uuid)/tpm2" }

        /// libvirt 9.0's exact swtpm command line (libvirt daemonizes the child itself: no --daemon, no --pid).
        func libvirt(_ uuid: String, name: String) throws -> Daemon {
            let socket = "\(self.root)/run/1-\(name)-swtpm.sock"
            try FileManager.default.createDirectory(atPath: self.libvirtState(uuid), withIntermediateDirectories: true)
            return try Daemon(
                Binaries.vtpmd,
                [
                    "socket", "--ctrl", "type=unixio,path=\(socket),mode=0600",
                    "--tpmstate", "dir=\(self.libvirtState(uuid)),mode=0600",
                    "--log", "file=\(self.root)/log/\(name)-swtpm.log", "--terminate", "--tpm2",
                ],
                waitFor: socket,
                environment: self.env
            )
        }

        func socket(_ name: String) -> String { "\(self.root)/run/1-\(name)-swtpm.sock" }

        /// The host file for Proxmox VE: vm-ids from the volumes' paths (`images/<vmid>/vm-<vmid>-disk-1.raw`).
        func useProxmoxVolumes() throws {
            try self.writeConfig(
                """
                vm-id-from = \(self.root)/images/{name}/vm-*-disk-1.raw
                ca = \(self.root)/ca
                registry = \(self.root)/registry.sqlite
                host-key = \(self.root)/host.key
                """
            )
        }

        /// What `qm clone` does to the TPM volume: a byte copy for the new VM. Returns the source's bytes.
        func copyProxmoxVolume(from source: String, to target: String) throws -> [UInt8] {
            let bytes = try #require(fileBytes(try self.proxmoxVolume(source)))
            try Data(bytes).write(to: URL(fileURLWithPath: try self.proxmoxVolume(target)))
            return bytes
        }

        /// Proxmox's TPM volume of VM `vm` (a directory-storage raw file); its directory is created.
        func proxmoxVolume(_ vm: String) throws -> String {
            try FileManager.default.createDirectory(
                atPath: "\(self.root)/images/\(vm)",
                withIntermediateDirectories: true
            )
            return "\(self.root)/images/\(vm)/vm-\(vm)-disk-1.raw"
        }

        /// vtpmd on Proxmox VE's exact swtpm command line for VM `vm` (`--daemon`, `--pid`), then CMD_INIT, the
        /// identity vtpmd reports, and a shutdown.
        func proxmoxRun(_ vm: String) throws -> [String: Any] {
            let socket = "\(self.root)/run/\(vm).swtpm"
            let pid = "\(self.root)/run/\(vm).swtpm.pid"
            let started = try runCommand(
                Binaries.vtpmd,
                [
                    "socket", "--tpmstate", "backend-uri=file://\(try self.proxmoxVolume(vm)),mode=0600",
                    "--ctrl", "type=unixio,path=\(socket),mode=0600", "--pid", "file=\(pid)", "--terminate",
                    "--daemon", "--log", "file=\(self.root)/log/\(vm)-swtpm.log,level=1,prefix=[id=1733490000]",
                    "--tpm2",
                ],
                environment: self.env
            )
            try #require(started.status == 0, "\(started.output)")
            #expect(try runCommand(Binaries.vtpmctl, ["init", "--unix", socket]).status == 0)
            let identity = try runCommand(Binaries.vtpmctl, ["identity", "--json", "--unix", socket])
            _ = try runCommand(Binaries.vtpmctl, ["shutdown", "--unix", socket])
            for _ in 0..<300 where FileManager.default.fileExists(atPath: pid) {
                Thread.sleep(forTimeInterval: 0.01)
            }
            return (try JSONSerialization.jsonObject(with: Data(identity.stdout.utf8)) as? [String: Any]) ?? [:]
        }

        func ctl(_ name: String, _ arguments: String...) throws -> CommandResult {
            try runCommand(Binaries.vtpmctl, arguments + ["--unix", self.socket(name)], timeout: .seconds(30))
        }

        /// CMD_INIT, then the identity vtpmd reports, then an orderly shutdown.
        func initAndStop(_ name: String, daemon: Daemon) throws -> [String: Any] {
            let initialized = try self.ctl(name, "init")
            #expect(initialized.status == 0, "\(initialized.output) \(daemon.output)")
            let identity = try self.ctl(name, "identity", "--json")
            #expect(identity.status == 0, "\(identity.output)")
            _ = try self.ctl(name, "shutdown")
            #expect(daemon.waitForExit() == 0)
            return (try JSONSerialization.jsonObject(with: Data(identity.stdout.utf8)) as? [String: Any]) ?? [:]
        }

        /// The VM runs once more and stops cleanly: INIT (and, when asked, CMD_STORE_VOLATILE) write its state.
        func runOnce(_ uuid: String, name: String, storeVolatile: Bool) throws {
            let daemon = try self.libvirt(uuid, name: name)
            #expect(try self.ctl(name, "init").status == 0)
            if storeVolatile { #expect(try self.ctl(name, "store-volatile").status == 0) }
            _ = try self.ctl(name, "shutdown")
            #expect(daemon.waitForExit() == 0)
        }

        /// A backup put back in place of the state directory.
        func restore(_ backup: String, to state: String) throws {
            #expect(try runCommand("rm", ["-rf", state]).status == 0)
            #expect(try runCommand("cp", ["-a", backup, state]).status == 0)
        }

        func log(_ name: String) -> String {
            (try? String(contentsOfFile: "\(self.root)/log/\(name)-swtpm.log", encoding: .utf8)) ?? ""
        }

        func verify(_ state: String) throws -> CommandResult {
            try runCommand(Binaries.vtpmState, ["verify", "--state", state, "--ca", "\(self.root)/ca"])
        }

        /// The EK certificate of a state (directory or file volume), read with tpm2_nvread from a plain vtpmd.
        func ekCertificate(_ tpmstate: String) throws -> EKCertificateInfo {
            try EKCertificateInfo(
                der: Endorsement.read(Binaries.vtpmd, tpmstate: tpmstate, work: self.root).ekCertificate
            )
        }
    }

    static func digest(_ path: String) -> [String: [UInt8]] {
        var result: [String: [UInt8]] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] where name != ".lock" {
            result[name] = fileBytes("\(path)/\(name)")
        }
        return result
    }

    @Test func libvirtsCommandLineGetsItsIdentityFromThePath() throws {
        try withTemporaryDirectory { dir in
            let host = try Host(dir)
            let a = try host.libvirt(Self.vmA, name: "vm-a")
            let identity = try host.initAndStop("vm-a", daemon: a)
            #expect(identity["vm_id"] as? String == Self.vmA && identity["generation"] as? Int == 0)
            #expect(host.log("vm-a").contains("decision=manufacture"), "\(host.log("vm-a"))")
            let verify = try host.verify(host.libvirtState(Self.vmA))
            #expect(verify.status == 0 && verify.stdout.contains("verify: OK"), "\(verify.output)")
            let info = try host.ekCertificate("dir=\(host.libvirtState(Self.vmA))")
            #expect(info.vmID?.description == Self.vmA && info.generation == 0)

            // Restarted: its own current state, nothing decided, same EK certificate.
            let again = try host.libvirt(Self.vmA, name: "vm-a")
            let restarted = try host.initAndStop("vm-a", daemon: again)
            #expect(restarted["generation"] as? Int == 0 && restarted["last_decision"] as? String == "none")
            #expect(try host.ekCertificate("dir=\(host.libvirtState(Self.vmA))").serialNumber == info.serialNumber)

            // A path the pattern does not match: no identity, and the log says why.
            let elsewhere = "\(dir)/elsewhere/tpm2"
            try FileManager.default.createDirectory(atPath: elsewhere, withIntermediateDirectories: true)
            let socket = "\(dir)/run/plain.sock"
            let plain = try Daemon(
                Binaries.vtpmd,
                [
                    "socket", "--ctrl", "type=unixio,path=\(socket),mode=0600", "--tpmstate", "dir=\(elsewhere)",
                    "--log", "file=\(dir)/log/plain.log,level=2", "--terminate", "--tpm2",
                ],
                waitFor: socket,
                environment: host.env
            )
            let none = try runCommand(Binaries.vtpmctl, ["identity", "--json", "--unix", socket])
            #expect(none.status == 1 && none.stderr.contains("has no VM identity"), "\(none.output)")
            _ = try runCommand(Binaries.vtpmctl, ["shutdown", "--unix", socket])
            #expect(plain.waitForExit() == 0)
            let plainLog = (try? String(contentsOfFile: "\(dir)/log/plain.log", encoding: .utf8)) ?? ""
            #expect(plainLog.contains("does not match vm-id-from"), "\(plainLog)")
        }
    }

    @Test func renamedCopiedAndPermallAloneAreClonesAtStart() throws {
        try withTemporaryDirectory { dir in
            let host = try Host(dir)
            let a = try host.libvirt(Self.vmA, name: "vm-a")
            _ = try host.initAndStop("vm-a", daemon: a)
            let ekA = try host.ekCertificate("dir=\(host.libvirtState(Self.vmA))")
            let sourceBefore = Self.digest(host.libvirtState(Self.vmA))

            // A copy of A's directory under B's UUID (KubeVirt renames it; a copy keeps the source to compare).
            try FileManager.default.createDirectory(
                atPath: "\(dir)/var/lib/libvirt/swtpm/\(Self.vmB)",
                withIntermediateDirectories: true
            )
            _ = try runCommand("cp", ["-a", host.libvirtState(Self.vmA), host.libvirtState(Self.vmB)])
            let b = try host.libvirt(Self.vmB, name: "vm-b")
            let identity = try host.initAndStop("vm-b", daemon: b)
            #expect(identity["vm_id"] as? String == Self.vmB && identity["last_decision"] as? String == "clone")
            #expect(host.log("vm-b").contains("decision=clone") && host.log("vm-b").contains("rule=other-vm"))
            let ekB = try host.ekCertificate("dir=\(host.libvirtState(Self.vmB))")
            #expect(ekB.vmID?.description == Self.vmB && ekB.parentVMID?.description == Self.vmA)
            #expect(ekB.publicKey != ekA.publicKey)
            #expect(try host.verify(host.libvirtState(Self.vmB)).status == 0)
            #expect(Self.digest(host.libvirtState(Self.vmA)) == sourceBefore)

            // A permall copied alone into an empty directory of a third VM.
            let vmC = "11111111-2222-4333-8444-555555555555"
            try FileManager.default.createDirectory(atPath: host.libvirtState(vmC), withIntermediateDirectories: true)
            try FileManager.default.copyItem(
                atPath: "\(host.libvirtState(Self.vmA))/tpm2-00.permall",
                toPath: "\(host.libvirtState(vmC))/tpm2-00.permall"
            )
            let c = try host.libvirt(vmC, name: "vm-c")
            let cIdentity = try host.initAndStop("vm-c", daemon: c)
            #expect(cIdentity["vm_id"] as? String == vmC && cIdentity["last_decision"] as? String == "clone")
            let ekC = try host.ekCertificate("dir=\(host.libvirtState(vmC))")
            #expect(ekC.vmID?.description == vmC && ekC.publicKey != ekA.publicKey)

            // A directory renamed in place (KubeVirt's clone renames the state directory to the new UUID):
            // B's directory moved under D's UUID.
            let vmD = "dddddddd-2222-4333-8444-555555555555"
            let parentD = "\(dir)/var/lib/libvirt/swtpm/\(vmD)"
            try FileManager.default.createDirectory(atPath: parentD, withIntermediateDirectories: true)
            try FileManager.default.moveItem(atPath: host.libvirtState(Self.vmB), toPath: host.libvirtState(vmD))
            let d = try host.libvirt(vmD, name: "vm-d")
            let dIdentity = try host.initAndStop("vm-d", daemon: d)
            #expect(dIdentity["vm_id"] as? String == vmD && dIdentity["last_decision"] as? String == "clone")
            let ekD = try host.ekCertificate("dir=\(host.libvirtState(vmD))")
            #expect(ekD.vmID?.description == vmD && ekD.parentVMID?.description == Self.vmB)
            #expect(ekD.publicKey != ekB.publicKey)
        }
    }

    @Test func restoredBackupsAreRollbacksAndACrashIsNot() throws {
        try withTemporaryDirectory { dir in
            let host = try Host(dir)
            let state = host.libvirtState(Self.vmA)
            _ = try host.initAndStop("vm-a", daemon: try host.libvirt(Self.vmA, name: "vm-a"))
            let backup = "\(dir)/backup"
            _ = try runCommand("cp", ["-a", state, backup])
            let ek0 = try host.ekCertificate("dir=\(state)")

            // The VM runs on and writes its state (TPM2_NV_DefineSpace through a plain vtpmd with a data port
            // would bypass the identity; use the identity daemon's control channel: INIT writes the state).
            try host.runOnce(Self.vmA, name: "vm-a", storeVolatile: true)

            // Same generation, older content: a restored backup.
            try host.restore(backup, to: state)
            let restored = try host.initAndStop("vm-a", daemon: try host.libvirt(Self.vmA, name: "vm-a"))
            #expect(restored["last_decision"] as? String == "rollback", "\(host.log("vm-a"))")
            #expect(restored["generation"] as? Int == 1)
            #expect(host.log("vm-a").contains("rule=older-write"), "\(host.log("vm-a"))")
            let ek1 = try host.ekCertificate("dir=\(state)")
            #expect(ek1.generation == 1 && ek1.publicKey != ek0.publicKey)

            // An older generation put back (the backup is generation 0, the VM is at 1): rollback again.
            try host.restore(backup, to: state)
            let older = try host.initAndStop("vm-a", daemon: try host.libvirt(Self.vmA, name: "vm-a"))
            #expect(older["last_decision"] as? String == "rollback" && older["generation"] as? Int == 2)
            #expect(host.log("vm-a").contains("rule=older-generation"))

            // kill -9 after acknowledged writes: the disk is ahead of the registry, not a rollback.
            let killed = try host.libvirt(Self.vmA, name: "vm-a")
            #expect(try host.ctl("vm-a", "init").status == 0)
            #expect(try host.ctl("vm-a", "store-volatile").status == 0)
            killed.kill()
            _ = killed.waitForExit()
            let afterCrash = try host.initAndStop("vm-a", daemon: try host.libvirt(Self.vmA, name: "vm-a"))
            #expect(afterCrash["last_decision"] as? String == "none" && afterCrash["generation"] as? Int == 2)
            #expect(try host.ekCertificate("dir=\(state)").generation == 2)
        }
    }

    @Test func onRollbackKeepLeavesTheStateAlone() throws {
        try withTemporaryDirectory { dir in
            let host = try Host(dir, extra: "on-rollback = keep")
            let state = host.libvirtState(Self.vmA)
            _ = try host.initAndStop("vm-a", daemon: try host.libvirt(Self.vmA, name: "vm-a"))
            let backup = "\(dir)/backup"
            _ = try runCommand("cp", ["-a", state, backup])
            let ek0 = try host.ekCertificate("dir=\(state)")
            try host.runOnce(Self.vmA, name: "vm-a", storeVolatile: false)
            try host.restore(backup, to: state)
            let kept = try host.initAndStop("vm-a", daemon: try host.libvirt(Self.vmA, name: "vm-a"))
            #expect(kept["last_decision"] as? String == "rollback" && kept["generation"] as? Int == 0)
            #expect(host.log("vm-a").contains("rule=older-write"), "\(host.log("vm-a"))")
            #expect(try host.ekCertificate("dir=\(state)").publicKey == ek0.publicKey)
            // Kept means taken over as the current state: the next start decides nothing.
            let next = try host.initAndStop("vm-a", daemon: try host.libvirt(Self.vmA, name: "vm-a"))
            #expect(next["last_decision"] as? String == "none" && next["generation"] as? Int == 0)
        }
    }

    @Test func proxmoxsCommandLineOnAFileVolumeAndItsCopy() throws {
        try withTemporaryDirectory { dir in
            let host = try Host(dir)
            try host.useProxmoxVolumes()
            let volume = host.proxmoxVolume
            let proxmox = host.proxmoxRun
            // Proxmox allocates the volume (zeros); vtpmd formats it.
            #expect(FileManager.default.createFile(atPath: try volume("101"), contents: Data(count: 262_144)))
            let first = try proxmox("101")
            #expect(first["vm_id"] as? String == "101" && first["generation"] as? Int == 0)
            let ek101 = try host.ekCertificate("backend-uri=file://\(try volume("101"))")
            #expect(ek101.vmID?.description == "101" && ek101.subject.contains("CN=101 gen 0"))

            // qm clone copies the volume.
            let source = try host.copyProxmoxVolume(from: "101", to: "102")
            let clone = try proxmox("102")
            #expect(clone["vm_id"] as? String == "102" && clone["last_decision"] as? String == "clone")
            let ek102 = try host.ekCertificate("backend-uri=file://\(try volume("102"))")
            #expect(ek102.vmID?.description == "102" && ek102.parentVMID?.description == "101")
            #expect(ek102.publicKey != ek101.publicKey)
            #expect(fileBytes(try volume("101")) == source)
        }
    }

    /// libvirt's first start runs swtpm_setup on the VM's path (with vtpmd in swtpm's place): that run stays a
    /// plain TPM, so swtpm_setup's own EK certificate can be written; the VM's first start adopts the state.
    @Test func swtpmSetupsRunIsPlainAndTheFirstStartAdoptsIt() throws {
        try withTemporaryDirectory { dir in
            let host = try Host(dir)
            let state = host.libvirtState(Self.vmA)
            try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
            let setup = try runCommand(
                "swtpm_setup",
                [
                    "--tpm2", "--tpm", "\(Binaries.vtpmd) socket", "--tpmstate", state, "--create-ek-cert",
                    "--overwrite",
                ],
                environment: host.env
            )
            #expect(setup.status == 0, "\(setup.output)")
            #expect(!FileManager.default.fileExists(atPath: "\(dir)/registry.sqlite"))
            let setupCertificate = try host.ekCertificate("dir=\(state)")
            #expect(setupCertificate.vmID == nil)
            let identity = try host.initAndStop("vm-a", daemon: try host.libvirt(Self.vmA, name: "vm-a"))
            #expect(identity["vm_id"] as? String == Self.vmA && identity["last_decision"] as? String == "adopt")
            #expect(try host.ekCertificate("dir=\(state)").serialNumber == setupCertificate.serialNumber)
        }
    }

    @Test(
        arguments: [
            ("bogus = 1\n", "vtpmd.conf:1: bogus: unknown key"),
            ("ca = /x\nca = /y\n", "vtpmd.conf:2: ca: given twice"),
            ("vm-id-from = /var/lib/libvirt/swtpm/tpm2\n", "vtpmd.conf:1: vm-id-from: "),
            ("on-rollback = sometimes\n", "vtpmd.conf:1: on-rollback: must be rekey or keep"),
            ("just words\n", "vtpmd.conf:1: expected 'key = value'"),
        ] as [(String, String)]
    )
    func badConfigurationsStopVtpmdAndWriteNothing(_ text: String, _ expected: String) throws {
        try withTemporaryDirectory { dir in
            let host = try Host(dir)
            try host.writeConfig(text)
            let state = host.libvirtState(Self.vmA)
            try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
            let socket = host.socket("vm-a")
            let r = try runCommand(
                Binaries.vtpmd,
                [
                    "socket", "--ctrl", "type=unixio,path=\(socket),mode=0600", "--tpmstate", "dir=\(state),mode=0600",
                    "--log", "file=\(dir)/log/vm-a-swtpm.log", "--terminate", "--tpm2",
                ],
                environment: host.env
            )
            #expect(r.status != 0)
            #expect(r.stderr.contains(expected), "\(r.output)")
            #expect(Self.digest(state).isEmpty && !FileManager.default.fileExists(atPath: socket))
            #expect(!FileManager.default.fileExists(atPath: "\(dir)/registry.sqlite"))
            // An unreadable file named by VTPMD_CONFIG is an error naming it.
            let missing = try runCommand(
                Binaries.vtpmd,
                ["socket", "--ctrl", "type=unixio,path=\(socket)", "--tpmstate", "dir=\(state)", "--tpm2"],
                environment: ["VTPMD_CONFIG": "\(dir)/missing.conf"]
            )
            #expect(missing.status != 0 && missing.stderr.contains("\(dir)/missing.conf"), "\(missing.output)")
        }
    }
}
