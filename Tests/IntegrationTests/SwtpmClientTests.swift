import Foundation
import TPMWire
import TestSupport
import Testing

/// Debian's swtpm_ioctl, swtpm_bios, swtpm_setup and tpm2-tools (swtpm TCTI) against vtpmd.
@Suite(.serialized)
struct SwtpmClientTests {
    @Test(arguments: ["unix", "tcp"])
    func swtpmIoctlDrivesVTPMD(transport: String) throws {
        try withTemporaryDirectory { dir in
            let port = try freePortPair()
            let ctrlArgs: [String]
            let ioctlTarget: [String]
            if transport == "unix" {
                ctrlArgs = ["--ctrl", "type=unixio,path=\(dir)/ctrl.sock"]
                ioctlTarget = ["--unix", "\(dir)/ctrl.sock"]
            } else {
                ctrlArgs = ["--ctrl", "type=tcp,port=\(port + 1)"]
                ioctlTarget = ["--tcp", "127.0.0.1:\(port + 1)"]
            }
            let daemon = try Daemon(
                Binaries.vtpmd,
                ["socket", "--tpm2", "--tpmstate", "dir=\(dir)", "--server", "type=tcp,port=\(port)"] + ctrlArgs,
                waitForPort: port
            )
            func ioctl(_ args: [String]) throws -> CommandResult {
                try runCommand("swtpm_ioctl", args + ioctlTarget)
            }
            let caps = try ioctl(["-c"])
            #expect(caps.status == 0 && caps.stdout.contains("ptm capability is 0xffff"), "\(caps.output)")
            #expect(try ioctl(["-i"]).status == 0)
            let info = try ioctl(["--info", "3"])
            #expect(info.stdout.contains("\"TPMSpecification\"") && info.stdout.contains("\"TPMAttributes\""))
            #expect(try ioctl(["-e"]).stdout.contains("tpmEstablished is 0"))
            #expect(try ioctl(["-l", "3"]).status == 0)
            #expect(try ioctl(["-l", "5"]).status != 0)
            #expect(try ioctl(["-l", "0"]).status == 0)
            // swtpm_bios sends TPM2_Startup and more over the data channel.
            let bios = try runCommand("swtpm_bios", ["--tpm2", "--tcp", "127.0.0.1:\(port)"])
            #expect(bios.status == 0, "\(bios.output)")
            // Save the state blobs, stop, load them back, re-init.
            let save = try ioctl(["--save", "permanent", "\(dir)/perm.blob"])
            #expect(save.status == 0, "\(save.output)")
            #expect(try ioctl(["--save", "volatile", "\(dir)/vol.blob"]).status == 0)
            #expect(try ioctl(["--stop"]).status == 0)
            #expect(try ioctl(["--load", "permanent", "\(dir)/perm.blob"]).status == 0)
            #expect(try ioctl(["--load", "volatile", "\(dir)/vol.blob"]).status == 0)
            #expect(try ioctl(["-i"]).status == 0)
            // The volatile state was resumed: the TPM is already started (TPM_RC_INITIALIZE).
            let data = try DataClient(tcpPort: port)
            #expect(TPMFrame.responseCode(try data.transmit(TPMCommands.startup())) == 0x100)
            #expect(try ioctl(["-s"]).status == 0)
            #expect(daemon.waitForExit() == 0)
        }
    }

    @Test func tpm2ToolsOverTheSwtpmTCTI() throws {
        try withTemporaryDirectory { dir in
            let port = try freePortPair()
            let daemon = try Daemon(
                Binaries.vtpmd,
                [
                    "socket", "--tpm2", "--tpmstate", "dir=\(dir)", "--server", "type=tcp,port=\(port)",
                    "--ctrl", "type=tcp,port=\(port + 1)", "--flags", "not-need-init,startup-clear",
                ],
                waitForPort: port
            )
            let env = ["TPM2TOOLS_TCTI": "swtpm:host=127.0.0.1,port=\(port)"]
            func tool(_ name: String, _ args: [String]) throws -> CommandResult {
                let r = try runCommand(name, args, environment: env)
                #expect(r.status == 0, "\(name) \(args): \(r.output)")
                return r
            }
            let random = try tool("tpm2_getrandom", ["16", "--hex"])
            #expect(random.stdout.count == 32)
            _ = try tool("tpm2_pcrextend", ["16:sha256=" + String(repeating: "ab", count: 32)])
            let pcr = try tool("tpm2_pcrread", ["sha256:16"])
            #expect(
                pcr.stdout.contains("16:")
                    && !pcr.stdout.contains("0x0000000000000000000000000000000000000000000000000000000000000000")
            )
            try Data("sealed secret".utf8).write(to: URL(fileURLWithPath: "\(dir)/secret"))
            _ = try tool("tpm2_createprimary", ["-C", "o", "-c", "\(dir)/primary.ctx", "-Q"])
            _ = try tool(
                "tpm2_create",
                ["-C", "\(dir)/primary.ctx", "-u", "\(dir)/k.pub", "-r", "\(dir)/k.priv", "-i", "\(dir)/secret", "-Q"]
            )
            _ = try tool("tpm2_flushcontext", ["-t"])
            _ = try tool(
                "tpm2_load",
                ["-C", "\(dir)/primary.ctx", "-u", "\(dir)/k.pub", "-r", "\(dir)/k.priv", "-c", "\(dir)/k.ctx", "-Q"]
            )
            let unsealed = try tool("tpm2_unseal", ["-c", "\(dir)/k.ctx"])
            #expect(unsealed.stdout == "sealed secret")
            _ = try tool("tpm2_flushcontext", ["-t"])
            _ = try tool("tpm2_nvdefine", ["0x1500016", "-C", "o", "-s", "16", "-a", "ownerread|ownerwrite"])
            try Data("nv-content-1234".utf8).write(to: URL(fileURLWithPath: "\(dir)/nv.in"))
            _ = try tool("tpm2_nvwrite", ["0x1500016", "-C", "o", "-i", "\(dir)/nv.in"])
            let nv = try tool("tpm2_nvread", ["0x1500016", "-C", "o", "-s", "15"])
            #expect(nv.stdout == "nv-content-1234")
            #expect(try runCommand("swtpm_ioctl", ["--tcp", "127.0.0.1:\(port + 1)", "-s"]).status == 0)
            #expect(daemon.waitForExit() == 0)
        }
    }

    @Test func swtpmSetupManufacturesThroughVTPMD() throws {
        try withTemporaryDirectory { dir in
            let r = try runCommand(
                "swtpm_setup",
                ["--tpm2", "--tpm", "\(Binaries.vtpmd) socket", "--tpmstate", dir, "--create-ek-cert", "--overwrite"]
            )
            #expect(r.status == 0, "\(r.output)")
            let files = try FileManager.default.contentsOfDirectory(atPath: dir)
            #expect(files.contains("tpm2-00.permall") && files.contains("vtpm-instance.permall"))
            let attributes = try FileManager.default.attributesOfItem(atPath: "\(dir)/tpm2-00.permall")
            #expect((attributes[.posixPermissions] as? Int) == 0o600)
        }
    }
}
