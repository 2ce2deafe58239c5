import Testing
import VTPMServer

/// `vtpmd cuse` and `vtpmd chardev --vtpm-proxy`: what their options turn into, and what they refuse.
@Suite struct CommandLineModeTests {
    private func options(_ change: (inout CommandLineOptions) -> Void) -> CommandLineOptions {
        var o = CommandLineOptions()
        o.tpm2 = true
        o.tpmstate = "dir=/var/lib/vtpm/test"
        o.defaultConfigPath = "/nonexistent/vtpmd.conf"
        change(&o)
        return o
    }

    @Test func cuseTakesNameAndNumbers() throws {
        let c = try self.options {
            $0.cuseName = "vtpm7"
            $0.cuseMajor = 10
            $0.cuseMinor = 224
        }.configuration(chardev: false, cuse: true)
        #expect(c.cuse?.name == "vtpm7" && c.cuse?.major == 10 && c.cuse?.minor == 224)
        #expect(c.server == nil && c.control == nil)
        // Without -M the kernel chooses the numbers.
        let d = try self.options { $0.cuseName = "vtpm0" }.configuration(chardev: false, cuse: true)
        #expect(d.cuse?.major == 0 && d.cuse?.minor == 0)
    }

    @Test(arguments: [
        ("", "needs -n/--name"),
        ("../tpm0", "not a device name"),
        ("a/b", "not a device name"),
    ])
    func cuseRefusesBadNames(_ name: String, _ message: String) {
        let o = self.options { $0.cuseName = name }
        #expect {
            try o.configuration(chardev: false, cuse: true)
        } throws: { "\($0)".contains(message) }
    }

    @Test func cuseRefusesChannelsAndBadNumbers() {
        let cases: [(CommandLineOptions, String)] = [
            (
                self.options {
                    $0.cuseName = "v"
                    $0.ctrl = "type=unixio,path=/tmp/c"
                }, "has no --server"
            ),
            (
                self.options {
                    $0.cuseName = "v"
                    $0.fd = 5
                }, "has no --server"
            ),
            (
                self.options {
                    $0.cuseName = "v"
                    $0.cuseMajor = 5000
                }, "not a major number"
            ),
            (
                self.options {
                    $0.cuseName = "v"
                    $0.cuseMinor = 3
                }, "--min needs --maj"
            ),
        ]
        for (o, message) in cases {
            #expect {
                try o.configuration(chardev: false, cuse: true)
            } throws: { "\($0)".contains(message) }
        }
        // -n belongs to cuse mode only.
        #expect {
            try self.options {
                $0.cuseName = "v"
                $0.fd = 5
            }.configuration(chardev: true)
        } throws: { "\($0)".contains("options of cuse mode") }
    }

    @Test func vtpmProxyIsSwtpmsChardevMode() throws {
        let c = try self.options { $0.vtpmProxy = true }.configuration(chardev: true)
        #expect(c.server == .vtpmProxy)
        #expect(c.dataIsCharacterDevice && c.notNeedInit && c.allowSetLocality)
        // swtpm sends TPM2_Startup(CLEAR) itself, unless --flags names another startup.
        #expect(c.startup == .clear)
        let none = try self.options {
            $0.vtpmProxy = true
            $0.flags = "startup-none"
        }.configuration(chardev: true)
        #expect(none.startup == nil && none.notNeedInit)
        // reject-locality-4 is kept beside the in-band locality the kernel uses.
        let rejecting = try self.options {
            $0.vtpmProxy = true
            $0.locality = "reject-locality-4"
        }.configuration(chardev: true)
        #expect(rejecting.rejectLocality4 && rejecting.allowSetLocality)
    }

    @Test func vtpmProxyRefusesADescriptorAndSocketMode() {
        #expect {
            try self.options {
                $0.vtpmProxy = true
                $0.fd = 5
            }.configuration(chardev: true)
        } throws: { "\($0)".contains("cannot be combined") }
        #expect {
            try self.options { $0.vtpmProxy = true }.configuration(chardev: false)
        } throws: { "\($0)".contains("chardev mode") }
    }
}
