import Testing
import VTPMServer

/// The fast scan of VM-start command lines (`CommandLineOptions.scan`): the shapes libvirt, Proxmox and
/// swtpm_setup write are taken; everything else is left to ArgumentParser (nil).
@Suite struct CommandLineScanTests {
    @Test func libvirtsCommandLine() throws {
        let (o, chardev) = try #require(
            CommandLineOptions.scan([
                "socket", "--ctrl", "type=unixio,path=/run/libvirt/qemu/swtpm/1-vm-swtpm.sock,mode=0600",
                "--tpmstate", "dir=/var/lib/libvirt/swtpm/6f1c1a52-3c1e-4a57-9d0e-4f3b2a1c0d9e/tpm2,mode=0600",
                "--log", "file=/var/log/swtpm/libvirt/qemu/vm-swtpm.log", "--terminate", "--tpm2",
                "--key", "pwdfd=23,mode=aes-256-cbc", "--migration-key", "pwdfd=24,mode=aes-256-cbc",
            ])
        )
        #expect(!chardev && o.tpm2 && o.terminate && !o.daemon)
        #expect(o.ctrl == "type=unixio,path=/run/libvirt/qemu/swtpm/1-vm-swtpm.sock,mode=0600")
        #expect(o.tpmstate == "dir=/var/lib/libvirt/swtpm/6f1c1a52-3c1e-4a57-9d0e-4f3b2a1c0d9e/tpm2,mode=0600")
        #expect(o.log == "file=/var/log/swtpm/libvirt/qemu/vm-swtpm.log")
        #expect(o.key == "pwdfd=23,mode=aes-256-cbc" && o.migrationKey == "pwdfd=24,mode=aes-256-cbc")
    }

    @Test func proxmoxAndSwtpmSetupCommandLines() throws {
        let (p, _) = try #require(
            CommandLineOptions.scan([
                "socket", "--tpmstate", "backend-uri=file:///dev/pve/vm-101-disk-1,mode=0600", "--ctrl",
                "type=unixio,path=/var/run/qemu-server/101.swtpm,mode=0600", "--pid",
                "file=/var/run/qemu-server/101.swtpm.pid", "--terminate", "--daemon", "--log",
                "file=/run/qemu-server/101-swtpm.log,level=1,prefix=[id=1733490000]", "--tpm2",
            ])
        )
        #expect(p.daemon && p.terminate && p.pid == "file=/var/run/qemu-server/101.swtpm.pid")
        #expect(p.log == "file=/run/qemu-server/101-swtpm.log,level=1,prefix=[id=1733490000]")
        let (s, _) = try #require(
            CommandLineOptions.scan([
                "socket", "--flags", "not-need-init,startup-clear", "--tpmstate", "backend-uri=dir:///tmp/x",
                "--pid", "file=/tmp/x.pid", "--tpm2", "--log", "file=/tmp/x.log", "--server", "type=tcp,fd=7",
                "--ctrl", "type=unixio,clientfd=5",
            ])
        )
        #expect(s.server == "type=tcp,fd=7" && s.ctrl == "type=unixio,clientfd=5")
        let (c, chardev) = try #require(CommandLineOptions.scan(["chardev", "--fd", "9", "--tpm2", "-t"]))
        #expect(chardev && c.fd == 9 && c.terminate)
        let (e, _) = try #require(
            CommandLineOptions.scan(["socket", "--tpm2", "-p", "2321", "--vm-id=101", "--config=/etc/x.conf"])
        )
        #expect(e.port == 2321 && e.vmID == "101" && e.config == "/etc/x.conf")
    }

    @Test(arguments: [
        ["socket", "--help"], ["socket", "-h"], ["socket", "--version"], ["socket", "--print-capabilities"],
        ["socket", "--tpm2", "--print-states"], ["socket", "--tpm2", "--bogus", "x"], ["socket", "--tpm2", "--tpm2"],
        ["socket", "--ctrl", "a", "--ctrl", "b"], ["socket", "--ctrl"], ["socket", "--port", "x"],
        ["socket", "-dt"], ["socket", "--tpmstate", "-x"], ["socket", "--tpm2=yes"], ["chardev", "--server", "x"],
        ["other"], [], ["--tpm2"], ["socket", "positional"],
    ])
    func everythingElseGoesToArgumentParser(_ arguments: [String]) {
        #expect(CommandLineOptions.scan(arguments) == nil)
    }
}
