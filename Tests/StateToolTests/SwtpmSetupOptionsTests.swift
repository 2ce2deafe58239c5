import CloneRekey
import StateTool
import Testing

/// swtpm_setup's command line as its getopt_long reads it.
struct SwtpmSetupOptionsTests {
    @Test func libvirtsCallParses() throws {
        let options = try SwtpmSetupOptions.parse([
            "--tpm2", "--tpm-state", "/var/lib/libvirt/swtpm/u/tpm2", "--vmid", "guest:u", "--logfile", "/l",
            "--createek", "--create-ek-cert", "--create-platform-cert", "--lock-nvram", "--not-overwrite",
            "--pwdfile-fd", "23", "--cipher", "aes-256-cbc",
        ])
        #expect(options.tpm2 && options.createEK && options.createEKCertificate && options.notOverwrite)
        #expect(options.tpmState == "/var/lib/libvirt/swtpm/u/tpm2" && options.vmid == "guest:u")
        #expect(options.pwdfileFD == 23 && options.cipher == "aes-256-cbc" && options.logfile == "/l")
        #expect(options.delegated.isEmpty && options.ignored.isEmpty)
    }

    @Test func equalsFormsPrefixesAndRepeatedBanks() throws {
        let options = try SwtpmSetupOptions.parse([
            "--tpmstate=file:///v", "--pcr-banks", " sha256 ", "--pcr-banks=sha384", "--reconf", "--print-cap",
        ])
        #expect(options.tpmState == "file:///v")
        #expect(options.pcrBanks == "sha256,sha384")
        #expect(options.reconfigure && options.printCapabilities)
    }

    @Test func badCommandLinesAreRefused() {
        for arguments in [
            ["--no-such"], ["--create"], ["--tpm-state"], ["--tpm2=yes"], ["--pwdfile-fd", "-1"],
            ["--keyfile-fd", "x"], ["stray"],
        ] {
            #expect(throws: SwtpmSetupOptions.ParseError.self, "\(arguments)") {
                try SwtpmSetupOptions.parse(arguments)
            }
        }
    }

    @Test func unimplementedOptionsAreNamedForSwtpmsOwnTool() throws {
        let options = try SwtpmSetupOptions.parse([
            "--tpm2", "--create-spk", "--rsa-keysize", "3072", "--swtpm_ioctl", "x", "--write-ek-cert-files", "/d",
        ])
        #expect(options.delegated == ["create-spk", "rsa-keysize", "write-ek-cert-files"])
        #expect(options.ignored == ["swtpm_ioctl"])
        #expect(try SwtpmSetupOptions.parse(["--rsa-keysize", "2048"]).delegated.isEmpty)
    }

    @Test func theVMComesFromThePathFirstThenFromVmid() throws {
        var host = HostConfiguration()
        host.vmIDFrom = try VMIDPattern("/var/lib/libvirt/swtpm/{uuid}/tpm2")
        let uuid = "6f1c1a52-3c1e-4a57-9d0e-4f3b2a1c0d9e"
        let other = "0b1e7a34-8c2d-4e6f-a1b2-c3d4e5f60718"
        var options = SwtpmSetupOptions()
        options.vmid = "guest:\(other)"
        #expect(SwtpmSetup.identity(options, host, statePath: "/var/lib/libvirt/swtpm/\(uuid)/tpm2")?.vmID == uuid)
        #expect(SwtpmSetup.identity(options, host, statePath: "/elsewhere")?.vmID == other)
        options.vmid = "a:b:\(other)"
        #expect(SwtpmSetup.identity(options, host, statePath: "/elsewhere")?.vmID == other)
        options.vmid = "not a uuid:x"
        #expect(SwtpmSetup.identity(options, host, statePath: "/elsewhere") == nil)
        options.vmid = nil
        #expect(SwtpmSetup.identity(options, HostConfiguration(), statePath: "/elsewhere") == nil)
    }

    @Test func optionalArgumentsHelpAndRunasRemoval() throws {
        #expect(
            try SwtpmSetupOptions.parse(["--create-config-files", "skip-if-exist"]).delegated == ["create-config-files"]
        )
        #expect(try SwtpmSetupOptions.parse(["--create-config-files=overwrite"]).delegated == ["create-config-files"])
        let followed = try SwtpmSetupOptions.parse(["--create-config-files", "--tpm2"])
        #expect(followed.tpm2 && followed.delegated == ["create-config-files"])
        #expect(try SwtpmSetupOptions.parse(["-?"]).helpAsError)
        #expect(try SwtpmSetupOptions.parse(["-h"]).help)
        #expect(
            SwtpmSetupOptions.removingRunas(["--tpm2", "--runas", "tss", "--runas=0", "--runa", "x", "--vmid", "v"])
                == ["--tpm2", "--vmid", "v"]
        )
    }

}
