import Foundation
import TestSupport
import Testing

/// swift-vtpm under a real libvirtd (libvirt 9.0, started by the tests), installed from its Debian
/// package with `dpkg -i` as a user would: libvirt runs swtpm_setup and swtpm from PATH and gets
/// vtpm-state's stand-in and vtpmd. Each test installs the package first and purges it at the end.
@Suite(.serialized, .enabled(if: Libvirt.isUsable))
final class LibvirtTests {
    init() throws {
        try Libvirt.startDaemons()
        try Libvirt.installPackage()
    }

    deinit {
        try? Libvirt.removePackage(purge: true)
    }

    static func newDomain(_ label: String, tpmExtra: String = "") throws -> LibvirtDomain {
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 16)
        return try LibvirtDomain(
            name: "vtpm-\(label)-\(tag)",
            uuid: UUID().uuidString.lowercased(),
            directory: "/tmp/vtpm-libvirt-\(label)-\(tag)",
            image: try GuestImage.locate(),
            tpmExtra: tpmExtra
        )
    }

    /// The EK's public area as the guest creates it (sha256 of `tpm2_createek -u`).
    static func ekDigest(_ console: GuestConsole) throws -> String {
        lastLine(
            try console.check(
                "tpm2_createek -c /tmp/ek.ctx -G rsa -u /tmp/ek.pub -Q && tpm2_flushcontext -t"
                    + " && sha256sum /tmp/ek.pub | cut -c1-64",
                timeout: .seconds(120)
            )
        )
    }

    /// The RSA EK certificate as the guest reads it: its sha256, and whether it names `uuid`.
    static func certificate(_ console: GuestConsole, names uuid: String) throws -> (digest: String, namesVM: Bool) {
        let digest = lastLine(
            try console.check("tpm2_nvread 0x1c00002 -o /tmp/ek.der && sha256sum /tmp/ek.der | cut -c1-64")
        )
        let names = try console.run("grep -q \(uuid) /tmp/ek.der").status == 0
        return (digest, names)
    }

    static func persistAK(_ console: GuestConsole) throws {
        try console.check(GuestCommands.createEK + " && " + GuestCommands.persistAK, timeout: .seconds(120))
    }

    /// Seals "A secret" under the SRK (0x81000001) and persists the sealed object at 0x81000010.
    static func seal(_ console: GuestConsole) throws {
        try console.check(GuestCommands.seal, timeout: .seconds(120))
    }

    static func akSigns(_ console: GuestConsole) throws -> Bool {
        try console.run(
            "cd /tmp && echo hello > msg && tpm2_sign -c 0x81010002 -g sha256 -s rsassa -o sig msg"
                + " && tpm2_verifysignature -c 0x81010002 -g sha256 -m msg -s sig",
            timeout: .seconds(120)
        ).status == 0
    }

    /// `vtpmctl identity --json` on the running domain's control socket, which QEMU holds.
    static func identity(_ domain: LibvirtDomain) throws -> [String: Any] {
        let socket = try #require(domain.controlSocket, "no control socket for \(domain.name)")
        let result = try runCommand(Binaries.vtpmctl, ["identity", "--unix", socket, "--json"], timeout: .seconds(10))
        try #require(result.status == 0, "vtpmctl identity: \(result.output)")
        return try #require(JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
    }

    static func lastLine(_ text: String) -> String {
        String(text.split(whereSeparator: \.isNewline).last ?? "").trimmingCharacters(in: .whitespaces)
    }

    static func inode(_ path: String) -> UInt64? {
        (try? FileManager.default.attributesOfItem(atPath: path))?[.systemFileNumber] as? UInt64
    }

    @Test(.timeLimit(.minutes(5)))
    func aDomainGetsOurTPMAndKeepsItAcrossSaveRestoreAndManagedsave() throws {
        let domain = try Self.newDomain("save")
        defer { domain.remove() }
        var console = try domain.start()

        // The emulator libvirt started is vtpmd (installed as /usr/bin/swtpm), provisioned by the stand-in.
        let pid = try #require(domain.emulatorPID)
        let exe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe")
        #expect(Self.inode(exe) == Self.inode("/usr/bin/vtpmd"), "emulator is \(exe)")
        let log = try String(contentsOfFile: domain.emulatorLog, encoding: .utf8)
        #expect(log.contains("Starting vTPM manufacturing (swift-vtpm)"), "\(log)")
        #expect(log.contains("VM identity \(domain.uuid)"), "\(log)")

        // The guest's EK certificate names the domain and chains to the host CA: the bytes the guest read,
        // checked with openssl against the package's CA.
        let certificate = try Self.certificate(console, names: domain.uuid)
        #expect(certificate.namesVM)
        let der = GuestCloneTests.bytes(fromOD: try console.check("od -An -tx1 -v /tmp/ek.der"))
        try Data(der).write(to: URL(fileURLWithPath: "\(domain.directory)/guest-ek.der"))
        let pem = try runCommand(
            "openssl",
            [
                "x509", "-inform", "der", "-in", "\(domain.directory)/guest-ek.der", "-out",
                "\(domain.directory)/guest-ek.pem",
            ]
        )
        #expect(pem.status == 0, "\(pem.output)")
        let chain = try runCommand(
            "openssl",
            ["verify", "-CAfile", "/var/lib/vtpm/ca/ca.pem", "\(domain.directory)/guest-ek.pem"]
        )
        #expect(chain.status == 0, "\(chain.output)")
        #expect(
            String(try runCommand("sha256sum", ["\(domain.directory)/guest-ek.der"]).stdout.prefix(64))
                == certificate.digest
        )
        try Self.persistAK(console)
        let ek = try Self.ekDigest(console)

        // An operator sees the running VM: vtpmctl while QEMU holds the control connection, and
        // vtpm-state reading the locked directory without writing.
        let before = try Self.identity(domain)
        #expect(before["vm_id"] as? String == domain.uuid)
        #expect(before["generation"] as? Int == 0)
        let inspect = try runCommand(
            Binaries.vtpmState,
            ["inspect", "--state", domain.stateDirectory],
            environment: hostConfigurationOfThisHost
        )
        #expect(inspect.status == 0, "\(inspect.output)")
        #expect(inspect.stdout.contains("in use by a running vtpmd"), "\(inspect.output)")
        let verify = try runCommand(
            Binaries.vtpmState,
            ["verify", "--state", domain.stateDirectory],
            environment: hostConfigurationOfThisHost
        )
        #expect(
            verify.status == 0 && verify.stdout.contains("names vm \(domain.uuid) generation 0"),
            "\(verify.output)"
        )
        #expect(try console.check("tpm2_getrandom 8 --hex").count >= 16)

        // virsh save + restore: a move; the EK and the persisted AK are the same.
        try Libvirt.virsh(["save", domain.name, "\(domain.directory)/saved.img"])
        try Libvirt.virsh(["restore", "\(domain.directory)/saved.img"])
        console = try domain.console()
        try console.waitForShell(timeout: .seconds(60))
        #expect(try Self.akSigns(console))
        #expect(try Self.ekDigest(console) == ek)
        let restored = try Self.identity(domain)
        #expect(restored["last_decision"] as? String == "move", "\(restored)")
        #expect(restored["generation"] as? Int == 0)

        // managedsave + start: the same.
        try Libvirt.virsh(["managedsave", domain.name])
        try Libvirt.virsh(["start", domain.name])
        console = try domain.console()
        try console.waitForShell(timeout: .seconds(60))
        #expect(try Self.akSigns(console))
        #expect(try Self.ekDigest(console) == ek)
        #expect(try Self.identity(domain)["last_decision"] as? String == "move")

        // libvirt's stop path: the emulator ends with the domain, and leaves the state in place.
        try Self.stop(domain)

        // undefine --keep-tpm keeps the state; defined again, the domain boots with the same TPM.
        try Libvirt.virsh(["undefine", domain.name, "--keep-tpm"])
        #expect(FileManager.default.fileExists(atPath: "\(domain.stateDirectory)/tpm2-00.permall"))
        try Libvirt.virsh(["define", "\(domain.directory)/domain.xml"])
        console = try domain.start()
        #expect(try Self.certificate(console, names: domain.uuid).digest == certificate.digest)
        #expect(try Self.akSigns(console))
        domain.destroy()
        // undefine --tpm removes it, as with swtpm.
        try Libvirt.virsh(["undefine", domain.name, "--tpm"])
        #expect(!FileManager.default.fileExists(atPath: domain.stateDirectory))
    }

    @Test(.timeLimit(.minutes(5)))
    func snapshotRevertIsARollbackThatRekeysOrKeepsAsConfigured() throws {
        let domain = try Self.newDomain("snap")
        defer { domain.remove() }
        var console = try domain.start()
        let ek0 = try Self.ekDigest(console)
        try Libvirt.virsh(["snapshot-create-as", domain.name, "s1"])
        try console.check("tpm2_pcrextend 16:sha256=\(String(repeating: "42", count: 32))")

        // Default policy (on-rollback = rekey): a new endorsement identity, generation 1.
        try Libvirt.virsh(["snapshot-revert", domain.name, "s1"])
        console = try domain.console()
        try console.waitForShell(timeout: .seconds(60))
        let rekeyed = try Self.identity(domain)
        #expect(rekeyed["last_decision"] as? String == "rollback", "\(rekeyed)")
        #expect(rekeyed["generation"] as? Int == 1)
        let ek1 = try Self.ekDigest(console)
        #expect(ek1 != ek0)
        #expect(try Self.certificate(console, names: domain.uuid).namesVM)
        let verify = try runCommand(
            Binaries.vtpmState,
            ["verify", "--state", domain.stateDirectory],
            environment: hostConfigurationOfThisHost
        )
        #expect(verify.status == 0 && verify.stdout.contains("generation 1"), "\(verify.output)")

        // on-rollback = keep in the host configuration: the snapshot's TPM as it was.
        let conf = "/etc/vtpm/vtpmd.conf"
        let original = try String(contentsOfFile: conf, encoding: .utf8)
        defer { try? original.write(toFile: conf, atomically: true, encoding: .utf8) }
        try original.replacingOccurrences(of: "on-rollback = rekey", with: "on-rollback = keep")
            .write(toFile: conf, atomically: true, encoding: .utf8)
        try Libvirt.virsh(["snapshot-revert", domain.name, "s1"])
        console = try domain.console()
        try console.waitForShell(timeout: .seconds(60))
        let kept = try Self.identity(domain)
        #expect(kept["last_decision"] as? String == "rollback", "\(kept)")
        #expect(try Self.ekDigest(console) == ek0)
    }

    @Test(.timeLimit(.minutes(6)))
    func virtCloneWithTheRecipeKeepsSealedSecrets() throws {
        let source = try Self.newDomain("src")
        var clones: [LibvirtDomain] = []
        defer {
            for domain in clones + [source] { domain.remove() }
        }
        var console = try source.start()
        try Self.seal(console)
        let sourceEK = try Self.ekDigest(console)
        try Self.stop(source)
        let sourceFiles = try Self.fileDigests(source.stateDirectory)

        // virt-clone, then the recipe: vtpm-state clone between the two libvirt state directories.
        let clone = try Self.virtClone(source, label: "clone")
        clones.append(clone)
        let recipe = try runCommand(
            "/usr/bin/vtpm-state",
            ["clone", "--from", source.stateDirectory, "--to", clone.stateDirectory],
            environment: hostConfigurationOfThisHost
        )
        #expect(recipe.status == 0, "\(recipe.output)")
        let owner = try FileManager.default.attributesOfItem(atPath: "\(clone.stateDirectory)/tpm2-00.permall")
        #expect(owner[.ownerAccountName] as? String == "tss")
        console = try clone.start()
        #expect(try console.check("tpm2_unseal -c 0x81000010") == "A secret")
        #expect(try Self.ekDigest(console) != sourceEK)
        #expect(try Self.certificate(console, names: clone.uuid).namesVM)
        let lineage = try runCommand(
            "/usr/bin/vtpm-state",
            ["lineage", "--vm-id", clone.uuid],
            environment: hostConfigurationOfThisHost
        )
        #expect(lineage.stdout.contains(source.uuid), "\(lineage.output)")
        clone.destroy()

        // The source is untouched and starts as before.
        #expect(try Self.fileDigests(source.stateDirectory) == sourceFiles)
        console = try source.start()
        #expect(try Self.ekDigest(console) == sourceEK)
        #expect(try console.check("tpm2_unseal -c 0x81000010") == "A secret")
        source.destroy()

        // virt-clone alone: the clone's first start provisions a fresh TPM (as with swtpm): no secret.
        let fresh = try Self.virtClone(source, label: "fresh")
        clones.append(fresh)
        console = try fresh.start()
        #expect(try console.run("tpm2_unseal -c 0x81000010").status != 0)
        #expect(try Self.certificate(console, names: fresh.uuid).namesVM)
    }

    @Test(.timeLimit(.minutes(5)))
    func anEncryptedStateStaysEncryptedThroughARekey() throws {
        let secretUUID = UUID().uuidString.lowercased()
        let secretXML = "/tmp/vtpm-secret-\(secretUUID).xml"
        try """
        <secret ephemeral='no' private='yes'>
          <uuid>\(secretUUID)</uuid>
          <usage type='vtpm'><name>vtpm-test-\(secretUUID)</name></usage>
        </secret>
        """.write(toFile: secretXML, atomically: true, encoding: .utf8)
        try Libvirt.virsh(["secret-define", secretXML])
        defer {
            _ = try? Libvirt.virsh(["secret-undefine", secretUUID])
            try? FileManager.default.removeItem(atPath: secretXML)
        }
        try Libvirt.virsh(["secret-set-value", secretUUID, Data("passphrase-\(secretUUID)".utf8).base64EncodedString()])
        let domain = try Self.newDomain("enc", tpmExtra: "<encryption secret='\(secretUUID)'/>")
        defer { domain.remove() }
        var clones: [LibvirtDomain] = []
        defer {
            for clone in clones { clone.remove() }
        }
        var console = try domain.start()
        #expect(try Self.certificate(console, names: domain.uuid).namesVM)
        try Self.seal(console)
        let ek0 = try Self.ekDigest(console)
        #expect(try Self.encrypted(domain.stateDirectory))
        try Libvirt.virsh(["snapshot-create-as", domain.name, "s1"])
        try console.check("tpm2_pcrextend 16:sha256=\(String(repeating: "42", count: 32))")
        try Libvirt.virsh(["snapshot-revert", domain.name, "s1"])
        console = try domain.console()
        try console.waitForShell(timeout: .seconds(60))
        #expect(try Self.identity(domain)["generation"] as? Int == 1)
        #expect(try Self.ekDigest(console) != ek0)
        #expect(try Self.encrypted(domain.stateDirectory))
        domain.destroy()
        // Stopped and started again, the rekeyed state loads with the same key.
        console = try domain.start()
        #expect(try Self.certificate(console, names: domain.uuid).namesVM)
        #expect(try Self.identity(domain)["generation"] as? Int == 1)
        try Self.stop(domain)

        // The clone recipe with the secret's passphrase (virt-clone keeps the <encryption secret>).
        let clone = try Self.virtClone(domain, label: "encclone")
        clones.append(clone)
        let passphrase = "\(clone.directory)/passphrase"
        try Data("passphrase-\(secretUUID)".utf8).write(to: URL(fileURLWithPath: passphrase))
        let recipe = try runCommand(
            "/usr/bin/vtpm-state",
            [
                "clone", "--from", domain.stateDirectory, "--to", clone.stateDirectory, "--key",
                "pwdfile=\(passphrase),mode=aes-256-cbc",
            ],
            environment: hostConfigurationOfThisHost
        )
        #expect(recipe.status == 0, "\(recipe.output)")
        #expect(try Self.encrypted(clone.stateDirectory))
        console = try clone.start()
        #expect(try console.check("tpm2_unseal -c 0x81000010") == "A secret")
        #expect(try Self.certificate(console, names: clone.uuid).namesVM)
    }

    @Test(.timeLimit(.minutes(5)))
    func removingThePackageGivesSwtpmBackWithTheStateVtpmdWrote() throws {
        let domain = try Self.newDomain("rm")
        defer { domain.remove() }
        var console = try domain.start()
        let certificate = try Self.certificate(console, names: domain.uuid)
        let ek = try Self.ekDigest(console)
        try Self.stop(domain)

        let vtpmd = try #require(Self.inode("/usr/bin/vtpmd"))
        try Libvirt.removePackage(purge: false)
        #expect(try runCommand("dpkg-divert", ["--list"]).stdout.contains("swift-vtpm") == false)
        // swtpm's files are back, byte for byte as its packages installed them.
        let verify = try runCommand("dpkg", ["--verify", "swtpm", "swtpm-tools"])
        #expect(verify.status == 0 && verify.stdout.isEmpty, "\(verify.output)")
        #expect(
            try runCommand("/usr/bin/swtpm", ["--version"]).stdout.contains("TPM emulator version 0.7.1, Copyright")
        )
        #expect(!FileManager.default.fileExists(atPath: "/usr/bin/vtpmd"))

        console = try domain.start()
        let pid = try #require(domain.emulatorPID)
        let exe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe")
        #expect(exe == "/usr/bin/swtpm" && Self.inode(exe) != vtpmd, "emulator \(exe) is vtpmd's file")
        #expect(try Self.certificate(console, names: domain.uuid).digest == certificate.digest)
        #expect(try Self.ekDigest(console) == ek)
    }

    // MARK: helpers

    static func virtClone(_ source: LibvirtDomain, label: String) throws -> LibvirtDomain {
        let tag = String(UInt32.random(in: 0...UInt32.max), radix: 16)
        let name = "vtpm-\(label)-\(tag)"
        let directory = "/tmp/vtpm-libvirt-\(label)-\(tag)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let cloned = try runCommand(
            "virt-clone",
            [
                "--connect", Libvirt.uri, "--original", source.name, "--name", name, "--file",
                "\(directory)/disk.qcow2",
            ],
            timeout: .seconds(120)
        )
        try #require(cloned.status == 0, "virt-clone: \(cloned.output)")
        let uuid = Self.lastLine(try Libvirt.virsh(["domuuid", name]))
        // Its own console socket (virt-clone copies the source's path).
        let xml = try Libvirt.virsh(["dumpxml", name]).replacingOccurrences(
            of: source.consolePath,
            with: "\(directory)/console.sock"
        )
        try xml.write(toFile: "\(directory)/domain.xml", atomically: true, encoding: .utf8)
        try Libvirt.virsh(["define", "\(directory)/domain.xml"])
        return LibvirtDomain(existing: name, uuid: uuid, directory: directory)
    }

    /// `virsh destroy`, then waits for the emulator to exit (it writes its last state on the way out).
    static func stop(_ domain: LibvirtDomain) throws {
        let emulator = try #require(domain.emulatorPID)
        try Libvirt.virsh(["destroy", domain.name])
        for _ in 0..<200 where FileManager.default.fileExists(atPath: "/proc/\(emulator)") {
            Thread.sleep(forTimeInterval: 0.05)
        }
        #expect(!FileManager.default.fileExists(atPath: "/proc/\(emulator)"), "vtpmd \(emulator) outlived its domain")
    }

    static func fileDigests(_ directory: String) throws -> [String: String] {
        var digests: [String: String] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: directory) where name.hasSuffix("permall") {
            digests[name] = String(try runCommand("sha256sum", ["\(directory)/\(name)"]).stdout.prefix(64))
        }
        return digests
    }

    /// Whether vtpm-state reports the permanent state as encrypted.
    static func encrypted(_ directory: String) throws -> Bool {
        let inspect = try runCommand(
            Binaries.vtpmState,
            ["inspect", "--state", directory, "--json"],
            environment: hostConfigurationOfThisHost
        )
        guard let report = try JSONSerialization.jsonObject(with: Data(inspect.stdout.utf8)) as? [String: Any],
            let files = report["files"] as? [[String: Any]],
            let permall = files.first(where: { $0["name"] as? String == "tpm2-00.permall" })
        else { return false }
        return permall["encrypted"] as? Bool == true
    }
}
