import EndorsementCA
import Foundation
import TestSupport
import Testing
import VMIdentity

/// vtpm-state run under the name swtpm_setup (as the Debian package installs it), on libvirt's and
/// Proxmox's exact command lines, with the host configuration as the only swift-vtpm input.
@Suite(.serialized)
struct SwtpmSetupStandInTests {
    typealias Host = HostConfigurationIdentityTests.Host
    static let vm = "6f1c1a52-3c1e-4a57-9d0e-4f3b2a1c0d9e"

    /// `swtpm_setup ARGS` through a link named swtpm_setup to the built vtpm-state.
    static func swtpmSetup(_ host: Host, _ arguments: [String]) throws -> CommandResult {
        let link = "\(host.root)/bin/swtpm_setup"
        if !FileManager.default.fileExists(atPath: link) {
            try FileManager.default.createDirectory(atPath: "\(host.root)/bin", withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: Binaries.vtpmState)
        }
        return try runCommand(link, arguments, environment: host.env)
    }

    /// libvirt 9.0's first-start call (`--vmid NAME:UUID`, its log file, `--not-overwrite`).
    static func libvirtArguments(_ host: Host, _ extra: [String] = []) -> [String] {
        [
            "--tpm2", "--tpm-state", host.libvirtState(Self.vm), "--vmid", "guest:\(Self.vm)",
            "--logfile", "\(host.root)/log/guest-swtpm.log", "--createek", "--create-ek-cert",
            "--create-platform-cert", "--lock-nvram", "--not-overwrite",
        ] + extra
    }

    static func permall(_ directory: String) -> [UInt8]? { fileBytes("\(directory)/tpm2-00.permall") }

    @Test func libvirtsCallProvisionsTheVMsTPMAndItsFirstStartDecidesNothing() throws {
        try withTemporaryDirectory { dir in
            let host = try Host(dir)
            let state = host.libvirtState(Self.vm)
            try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
            let setup = try Self.swtpmSetup(host, Self.libvirtArguments(host))
            #expect(setup.status == 0, "\(setup.output)")
            let log = host.log("guest")
            #expect(log.contains("VM identity \(Self.vm) (from the state path"), "\(log)")
            #expect(log.contains("Successfully authored TPM state"), "\(log)")
            let verify = try host.verify(state)
            #expect(
                verify.status == 0 && verify.stdout.contains("names vm \(Self.vm) generation 0"),
                "\(verify.output)"
            )
            let provisioned = try #require(Self.permall(state))

            // libvirt's next first-start call with the state present: kept, quietly.
            let again = try Self.swtpmSetup(host, Self.libvirtArguments(host))
            #expect(again.status == 0 && Self.permall(state) == provisioned)
            #expect(host.log("guest").contains("Not overwriting existing state file."))
            // Neither flag: refused, as swtpm_setup refuses it.
            var plain = Self.libvirtArguments(host)
            plain.removeAll { $0 == "--not-overwrite" }
            let refused = try Self.swtpmSetup(host, plain)
            #expect(refused.status == 1 && refused.stderr.contains("Found existing TPM state"), "\(refused.output)")
            #expect(Self.permall(state) == provisioned)

            // vtpmd on libvirt's command line: the identity is the one provisioned, no decision.
            let daemon = try host.libvirt(Self.vm, name: "guest")
            let identity = try host.initAndStop("guest", daemon: daemon)
            #expect(identity["vm_id"] as? String == Self.vm && identity["generation"] as? Int == 0)
            #expect(identity["last_decision"] as? String == "none", "\(identity)")

            // --overwrite (libvirt's restore into a new directory): a new TPM, new EK.
            let before = try host.ekCertificate("dir=\(state)")
            let overwritten = try Self.swtpmSetup(host, ["--tpm2", "--tpm-state", state, "--overwrite"])
            #expect(overwritten.status == 0, "\(overwritten.output)")
            #expect(try host.ekCertificate("dir=\(state)").publicKey != before.publicKey)
        }
    }

    @Test func proxmoxsCallsOnARawVolumeAndACopyForAnotherVM() throws {
        try withTemporaryDirectory { dir in
            let host = try Host(dir)
            try host.useProxmoxVolumes()
            let volume = host.proxmoxVolume
            // Proxmox allocates a raw volume of zeros, then runs swtpm_setup on it.
            #expect(FileManager.default.createFile(atPath: try volume("101"), contents: Data(count: 4 << 20)))
            let setup = try Self.swtpmSetup(
                host,
                [
                    "--tpmstate", "file://\(try volume("101"))", "--createek", "--create-ek-cert",
                    "--create-platform-cert", "--lock-nvram", "--config", "/etc/swtpm_setup.conf", "--runas", "0",
                    "--not-overwrite", "--tpm2", "--ecc",
                ]
            )
            #expect(setup.status == 0, "\(setup.output)")
            let ek101 = try host.ekCertificate("backend-uri=file://\(try volume("101"))")
            #expect(ek101.vmID == VMID("101") && ek101.generation == 0)

            // Proxmox's swtpm command line on it: the provisioned identity, no decision.
            let start = host.proxmoxRun
            let first = try start("101")
            #expect(first["vm_id"] as? String == "101" && first["last_decision"] as? String == "none", "\(first)")

            // The volume copied for VM 102 (qm clone): a clone at start, with a certificate naming 102.
            let source = try host.copyProxmoxVolume(from: "101", to: "102")
            let clone = try start("102")
            #expect(clone["vm_id"] as? String == "102" && clone["last_decision"] as? String == "clone", "\(clone)")
            let ek102 = try host.ekCertificate("backend-uri=file://\(try volume("102"))")
            #expect(ek102.vmID == VMID("102") && ek102.parentVMID == VMID("101"))
            #expect(fileBytes(try volume("101")) == source)
        }
    }

    @Test func aPassphraseOnADescriptorEncryptsTheStateAsSwtpmsKeyOptionWould() throws {
        try withTemporaryDirectory { dir in
            let host = try Host(dir)
            let state = host.libvirtState(Self.vm)
            try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
            let passphrase = "\(dir)/passphrase"
            try "correct horse".write(toFile: passphrase, atomically: true, encoding: .utf8)
            // libvirt hands the passphrase over on a descriptor.
            let link = "\(dir)/bin/swtpm_setup"
            _ = try Self.swtpmSetup(host, ["--version"])
            let arguments = Self.libvirtArguments(host, ["--pwdfile-fd", "5", "--cipher", "aes-256-cbc"])
            let setup = try runCommand(
                "/bin/sh",
                ["-c", "exec 5<\"$0\"; exec \"$@\"", passphrase, link] + arguments,
                environment: host.env
            )
            #expect(setup.status == 0, "\(setup.output)")
            let inspect = try runCommand(Binaries.vtpmState, ["inspect", "--state", state, "--json"])
            #expect(inspect.stdout.contains("\"encrypted\" : true"), "\(inspect.output)")
            // vtpmd with libvirt's --key (the same passphrase, pwdfile form) loads it; without it, it does not.
            let key = ["--key", "pwdfile=\(passphrase),mode=aes-256-cbc"]
            let certificate = try EKCertificateInfo(
                der: Endorsement.read(Binaries.vtpmd, tpmstate: "dir=\(state)", work: dir, extra: key).ekCertificate
            )
            #expect(certificate.vmID == VMID(Self.vm))
            let port = try freePortPair()
            let keyless = try runCommand(
                Binaries.vtpmd,
                [
                    "socket", "--tpm2", "--tpmstate", "dir=\(state)", "--server", "type=tcp,port=\(port)",
                    "--ctrl", "type=tcp,port=\(port + 1)", "--flags", "not-need-init,startup-clear",
                ]
            )
            #expect(keyless.status != 0 && keyless.output.contains("key"), "\(keyless.output)")
        }
    }

    @Test func reconfigureChangesThePCRBanksAndKeepsTheIdentity() throws {
        try withTemporaryDirectory { dir in
            let host = try Host(dir)
            let state = host.libvirtState(Self.vm)
            try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
            #expect(try Self.swtpmSetup(host, Self.libvirtArguments(host)).status == 0)
            let banks = { () throws -> String in
                try runCommand(Binaries.vtpmState, ["inspect", "--state", state]).stdout
                    .split(separator: "\n").first { $0.hasPrefix("PCR banks") }.map(String.init) ?? ""
            }
            #expect(try banks() == "PCR banks: sha1 (inactive), sha256 (24 PCRs), sha384 (inactive), sha512 (inactive)")
            let reconfigure = ["--tpm2", "--tpm-state", state, "--pcr-banks", "sha256,sha384", "--reconfigure"]
            #expect(try Self.swtpmSetup(host, reconfigure).status == 0)
            #expect(try banks() == "PCR banks: sha1 (inactive), sha256 (24 PCRs), sha384 (24 PCRs), sha512 (inactive)")
            let reconfigured = Self.permall(state)
            // libvirt repeats it at every start: nothing to change, nothing written.
            let again = try Self.swtpmSetup(host, reconfigure)
            #expect(again.status == 0 && again.stdout.contains("already active"), "\(again.output)")
            #expect(Self.permall(state) == reconfigured)
            #expect(try host.verify(state).stdout.contains("names vm \(Self.vm) generation 0"))
            // With certificate options it is refused, as swtpm_setup refuses it.
            #expect(try Self.swtpmSetup(host, reconfigure + ["--create-ek-cert"]).status == 1)
        }
    }

    @Test func capabilitiesAndWhatItLeavesToSwtpmsOwnSwtpmSetup() throws {
        try withTemporaryDirectory { dir in
            let host = try Host(dir)
            let capabilities = try Self.swtpmSetup(host, ["--print-capabilities"])
            let json = try #require(
                try JSONSerialization.jsonObject(with: Data(capabilities.stdout.utf8)) as? [String: Any]
            )
            let features = json["features"] as? [String] ?? []
            #expect(json["type"] as? String == "swtpm_setup")
            #expect(features.contains("tpm-2.0") && features.contains("cmdarg-pwdfile-fd"))
            #expect(!features.contains("tpm-1.2"))
            // TPM 1.2 and unknown options: errors, exit 1.
            let tpm12 = try Self.swtpmSetup(host, ["--tpm-state", "\(dir)/x", "--createek"])
            #expect(tpm12.status == 1 && tpm12.stderr.contains("TPM 2 only"), "\(tpm12.output)")
            #expect(try Self.swtpmSetup(host, ["--tpm2", "--no-such-option"]).status == 1)
            #expect(try Self.swtpmSetup(host, ["--tpm2", "--pwdfile-fd", "x"]).status == 1)
            // An option it does not implement: swtpm's swtpm_setup does the job (on the swtpm in PATH).
            let state = "\(dir)/spk"
            try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
            let spk = try Self.swtpmSetup(host, ["--tpm2", "--tpm-state", state, "--create-spk"])
            #expect(spk.stdout.contains("Handing over to swtpm's swtpm_setup"), "\(spk.output)")
            #expect(spk.status == 0 && Self.permall(state) != nil, "\(spk.output)")
        }
    }
}
