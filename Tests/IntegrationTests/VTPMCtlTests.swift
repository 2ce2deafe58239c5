import Foundation
import TPMWire
import TestSupport
import Testing
import _VTPMPosix

/// The built vtpmctl against real vtpmd and swtpm processes, over UNIX and TCP control channels.
@Suite(.serialized)
struct VTPMCtlTests {
    /// A backend (vtpmd or swtpm) with a control channel and a TCP data port.
    final class Backend {
        let state: String
        let dataPort: UInt16
        let connection: [String]
        let daemon: Daemon

        /// `tcp`: the control channel is TCP (port = data port + 1), else a UNIX socket in `dir`.
        init(_ binary: String, dir: String, name: String = "tpm", tcp: Bool = false, extra: [String] = []) throws {
            self.state = "\(dir)/\(name)"
            try FileManager.default.createDirectory(atPath: self.state, withIntermediateDirectories: true)
            let ctrl: String
            if tcp {
                self.dataPort = try freePortPair()
                ctrl = "type=tcp,port=\(self.dataPort + 1)"
                self.connection = ["--tcp", "127.0.0.1:\(self.dataPort + 1)"]
            } else {
                self.dataPort = try freePort()
                let path = "\(dir)/\(name).sock"
                ctrl = "type=unixio,path=\(path)"
                self.connection = ["--unix", path]
            }
            self.daemon = try Daemon(
                binary,
                [
                    "socket", "--tpm2", "--tpmstate", "dir=\(self.state)", "--ctrl", ctrl,
                    "--server", "type=tcp,port=\(self.dataPort)", "--log", "file=\(dir)/\(name).log,level=2",
                ] + extra,
                waitForPort: self.dataPort
            )
        }

        /// Runs `vtpmctl <subcommand> <connection> <arguments>`.
        func ctl(_ subcommand: String, _ arguments: String...) throws -> CommandResult {
            try runCommand(Binaries.vtpmctl, [subcommand] + self.connection + arguments, timeout: .seconds(30))
        }

        /// Runs vtpmctl and expects success.
        @discardableResult
        func ok(
            _ subcommand: String,
            _ arguments: String...,
            sourceLocation: SourceLocation = #_sourceLocation
        )
            throws -> String
        {
            let r = try runCommand(Binaries.vtpmctl, [subcommand] + self.connection + arguments, timeout: .seconds(30))
            #expect(r.status == 0, "vtpmctl \(subcommand) \(arguments): \(r.output)", sourceLocation: sourceLocation)
            return r.stdout
        }

        func data() throws -> DataClient { try DataClient(tcpPort: self.dataPort) }
    }

    static func vmNode(_ dir: String, name: String, vmID: String, tcp: Bool = false) throws -> Backend {
        try Backend(
            Binaries.vtpmd,
            dir: dir,
            name: name,
            tcp: tcp,
            extra: [
                "--vm-id", vmID, "--ca", "\(dir)/ca", "--registry", "\(dir)/registry.sqlite",
                "--host-key", "\(dir)/host.key",
            ]
        )
    }

    static func jsonObject(_ text: String) throws -> [String: Any] {
        let object = try JSONSerialization.jsonObject(with: Data(text.utf8))
        return try #require(object as? [String: Any], "not a JSON object: \(text)")
    }

    @Test(arguments: [false, true])
    func capabilitiesInfoConfigAndBufferSize(tcp: Bool) throws {
        try withTemporaryDirectory { dir in
            let v = try Backend(Binaries.vtpmd, dir: dir, tcp: tcp)
            let caps = try v.ok("capabilities")
            #expect(caps.hasPrefix("capabilities 0xffff\n"))
            for name in ["INIT", "SET_DATAFD", "GET_INFO", "SEND_COMMAND_HEADER"] {
                #expect(caps.contains("  \(name)\n"), "\(caps)")
            }
            #expect(!caps.contains("LOCK_STORAGE"))
            let capsJSON = try Self.jsonObject(try v.ok("capabilities", "--json"))
            #expect(capsJSON["capabilities"] as? Int == 0xffff)
            #expect((capsJSON["names"] as? [String])?.count == 16)

            // GET_INFO works with the TPM stopped; readable output is indented JSON.
            let info = try v.ok("info")
            #expect(info.contains("\"TPMSpecification\""))
            #expect(info.contains("\n"))
            let infoJSON = try Self.jsonObject(try v.ok("info", "--flags", "1", "--json"))
            #expect((infoJSON["TPMSpecification"] as? [String: Any])?["family"] as? String == "2.0")
            #expect(infoJSON["TPMAttributes"] == nil)

            #expect(
                try v.ok("config")
                    == "state key (--key): not configured\nmigration key (--migration-key): not configured\n"
            )
            let config = try Self.jsonObject(try v.ok("config", "--json"))
            #expect(config["flags"] as? Int == 0 && config["state_key"] as? Bool == false)

            #expect(try v.ok("buffer-size") == "buffer size 4096 (minimum 2808, maximum 4096)\n")
            #expect(try v.ok("buffer-size", "100") == "buffer size 2808 (minimum 2808, maximum 4096)\n")
            let sizes = try Self.jsonObject(try v.ok("buffer-size", "4096", "--json"))
            #expect(sizes["size"] as? Int == 4096 && sizes["minimum"] as? Int == 2808)
        }
    }

    @Test(arguments: [false, true])
    func initStopLocalityAndShutdown(tcp: Bool) throws {
        try withTemporaryDirectory { dir in
            let v = try Backend(Binaries.vtpmd, dir: dir, tcp: tcp)
            // Commands that need a running TPM say so.
            let notRunning = try v.ctl("established")
            #expect(notRunning.status == 1)
            #expect(
                notRunning.stderr.contains(
                    "GET_TPMESTABLISHED failed: TPM_BAD_ORDINAL (0xa): the TPM is not running (send `init` first)"
                ),
                "\(notRunning.output)"
            )
            #expect(try v.ok("init") == "TPM initialized\n")
            let d = try v.data()
            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.startup())) == 0)
            #expect(try v.ok("established") == "TPM established: no\n")
            #expect(try Self.jsonObject(try v.ok("established", "--json"))["established"] as? Bool == false)

            // Localities: the backend's refusal, named; ArgumentParser's for a non-number.
            let five = try v.ctl("locality", "5")
            #expect(five.status == 1)
            #expect(five.stderr.contains("SET_LOCALITY failed: TPM_BAD_LOCALITY (0x3d)"), "\(five.output)")
            #expect(try v.ctl("locality", "300").status == 64)
            #expect(try v.ctl("locality").status == 64)
            #expect(try v.ok("locality", "3") == "locality set to 3\n")
            #expect(try v.ok("locality", "0", "--json") == "{\"ok\":true}\n")
            let reset = try v.ctl("reset-established", "--locality", "1")
            #expect(reset.status == 1 && reset.stderr.contains("only localities 3 and 4"), "\(reset.output)")
            #expect(try v.ok("reset-established", "--locality", "3") == "TPM established flag reset\n")

            #expect(try v.ok("store-volatile") == "volatile state stored\n")
            #expect(FileManager.default.fileExists(atPath: "\(v.state)/tpm2-00.volatilestate"))
            // Buffer size can only be set with the TPM stopped.
            let running = try v.ctl("buffer-size", "3000")
            #expect(running.status == 1 && running.stderr.contains("send `stop` first"), "\(running.output)")
            #expect(try v.ok("stop") == "TPM stopped\n")
            #expect(try v.ok("buffer-size", "3000") == "buffer size 3000 (minimum 2808, maximum 4096)\n")
            #expect(try v.ok("init", "--delete-volatile", "--json") == "{\"ok\":true}\n")
            #expect(!FileManager.default.fileExists(atPath: "\(v.state)/tpm2-00.volatilestate"))
            #expect(try v.ok("shutdown") == "backend shut down\n")
            #expect(v.daemon.waitForExit() == 0)
            // Nobody listens any more: a clear error, exit 1.
            let gone = try v.ctl("capabilities")
            #expect(gone.status == 1)
            #expect(gone.stderr.contains("cannot connect to the control channel"), "\(gone.output)")
        }
    }

    @Test func usageErrorsExit64() throws {
        for arguments in [
            ["capabilities"], ["capabilities", "--unix", "/x", "--tcp", "127.0.0.1:1"],
            ["capabilities", "--tcp", "host"],
            ["capabilities", "--tcp", "example.com:80"], ["save", "--unix", "/x", "savestate", "/tmp/f"],
            ["reset-established", "--unix", "/x"], ["nonsense"],
        ] {
            let r = try runCommand(Binaries.vtpmctl, arguments)
            #expect(r.status == 64, "\(arguments): \(r.output)")
        }
        let help = try runCommand(Binaries.vtpmctl, ["--help"])
        #expect(help.status == 0 && help.stdout.contains("identity"))
    }

    /// savevm / loadvm by hand: save both blobs, change the TPM, stop, load, init: the PCR is back.
    @Test(arguments: [false, true])
    func saveAndLoadRoundTrip(tcp: Bool) throws {
        try withTemporaryDirectory { dir in
            let v = try Backend(Binaries.vtpmd, dir: dir, tcp: tcp)
            let stopped = try v.ctl("save", "permanent", "\(dir)/p.blob")
            #expect(stopped.status == 1 && stopped.stderr.contains("the TPM is not running"), "\(stopped.output)")
            #expect(!FileManager.default.fileExists(atPath: "\(dir)/p.blob"))
            try v.ok("init")
            let d = try v.data()
            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.startup())) == 0)
            let digest = [UInt8](repeating: 0x42, count: 32)
            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.pcrExtend(16, digest: digest))) == 0)
            let pcrBefore = try d.transmit(TPMCommands.pcrRead(16))

            let saved = try v.ok("save", "permanent", "\(dir)/p.blob")
            #expect(saved.hasPrefix("saved the permanent blob ("), "\(saved)")
            let volatile = try Self.jsonObject(try v.ok("save", "volatile", "\(dir)/v.blob", "--json"))
            #expect(volatile["type"] as? String == "volatile" && volatile["file"] as? String == "\(dir)/v.blob")
            let permanent = try #require(fileBytes("\(dir)/p.blob"))
            #expect((volatile["bytes"] as? Int ?? 0) == fileBytes("\(dir)/v.blob")?.count)
            #expect(permanent.count > 1000)
            let attributes = try FileManager.default.attributesOfItem(atPath: "\(dir)/p.blob")
            #expect((attributes[.posixPermissions] as? Int) == 0o600)

            // SET_STATEBLOB needs a stopped TPM.
            let running = try v.ctl("load", "permanent", "\(dir)/p.blob")
            #expect(running.status == 1, "\(running.output)")
            #expect(running.stderr.contains("SET_STATEBLOB failed: TPM_BAD_ORDINAL (0xa): the TPM is running"))

            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.pcrExtend(16, digest: digest))) == 0)
            #expect(try d.transmit(TPMCommands.pcrRead(16)) != pcrBefore)
            try v.ok("stop")
            #expect(try v.ok("load", "permanent", "\(dir)/p.blob").contains("loaded the permanent blob"))
            let loaded = try Self.jsonObject(try v.ok("load", "volatile", "\(dir)/v.blob", "--json"))
            #expect(loaded["bytes"] as? Int == fileBytes("\(dir)/v.blob")?.count)
            try v.ok("init", "--delete-volatile")
            // (One data connection at a time: the one opened before keeps working across STOP/INIT.)
            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.startup())) == 0x100)
            #expect(try d.transmit(TPMCommands.pcrRead(16)) == pcrBefore)

            // Garbage and missing files: clear errors, the TPM untouched.
            try v.ok("stop")
            try Data("not a blob".utf8).write(to: URL(fileURLWithPath: "\(dir)/bad.blob"))
            let bad = try v.ctl("load", "permanent", "\(dir)/bad.blob")
            #expect(bad.status == 1 && bad.stderr.contains("SET_STATEBLOB failed"), "\(bad.output)")
            let missing = try v.ctl("load", "permanent", "\(dir)/missing.blob")
            #expect(missing.status == 1 && missing.stderr.contains("cannot read \(dir)/missing.blob"))
            try v.ok("init")
            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.startup())) == 0)
        }
    }

    @Test func identityFollowsAClone() throws {
        try withTemporaryDirectory { dir in
            let vmA = "0a0a0a0a-0000-4000-8000-00000000000a"
            let vmB = "0b0b0b0b-0000-4000-8000-00000000000b"
            let a = try Self.vmNode(dir, name: "a", vmID: vmA)
            let before = try a.ok("identity")
            #expect(before.contains("vm-id:                  \(vmA)\n"), "\(before)")
            // The generation is read from the registry at the first INIT (after --runas): unknown before it.
            #expect(before.contains("generation:             unknown\n"), "\(before)")
            #expect(before.contains("last decision:          none\n"))
            // Armed at start: whatever the TPM does first counts as "ran after" the registry's latest checkpoint.
            #expect(before.contains("checkpoint outstanding: yes\n"), "\(before)")
            let fresh = try Self.jsonObject(try a.ok("identity", "--json"))
            #expect(fresh["vm_id"] as? String == vmA && fresh["generation"] is NSNull)
            #expect(fresh["last_decision"] as? String == "none" && fresh["last_decision_at"] is NSNull)
            #expect(fresh["checkpoint_outstanding"] as? Bool == true)

            try a.ok("init")
            #expect(try Self.jsonObject(try a.ok("identity", "--json"))["generation"] as? Int == 0)
            #expect(TPMFrame.responseCode(try a.data().transmit(TPMCommands.startup())) == 0)
            // The TPM ran: nothing outstanding until blobs are handed out.
            #expect(try Self.jsonObject(try a.ok("identity", "--json"))["checkpoint_outstanding"] as? Bool == false)
            try a.ok("save", "permanent", "\(dir)/p.blob")
            try a.ok("save", "volatile", "\(dir)/v.blob")
            // Handing out blobs leaves a checkpoint outstanding until the TPM runs again.
            let saved = try Self.jsonObject(try a.ok("identity", "--json"))
            #expect(saved["checkpoint_outstanding"] as? Bool == true)

            // loadvm of A's blobs on B (over TCP this time): a clone, rekeyed into generation 1.
            let b = try Self.vmNode(dir, name: "b", vmID: vmB, tcp: true)
            try b.ok("init")
            try b.ok("stop")
            try b.ok("load", "permanent", "\(dir)/p.blob")
            try b.ok("load", "volatile", "\(dir)/v.blob")
            try b.ok("init", "--delete-volatile")
            let clone = try Self.jsonObject(try b.ok("identity", "--json"))
            #expect(clone["vm_id"] as? String == vmB)
            #expect(clone["generation"] as? Int == 1)
            #expect(clone["last_decision"] as? String == "clone")
            let at = try #require(clone["last_decision_at"] as? String)
            #expect(at.hasSuffix("Z") && at.contains("T"), "\(at)")
            let text = try b.ok("identity")
            #expect(text.contains("last decision:          clone at \(at)\n"), "\(text)")
            // The source did not change.
            #expect(try Self.jsonObject(try a.ok("identity", "--json"))["generation"] as? Int == 0)
        }
    }

    @Test func identityWithoutVMIDFailsClearly() throws {
        try withTemporaryDirectory { dir in
            let v = try Backend(Binaries.vtpmd, dir: dir)
            for extra in [[], ["--json"]] {
                let r = try runCommand(Binaries.vtpmctl, ["identity"] + v.connection + extra)
                #expect(r.status == 1)
                #expect(r.stdout.isEmpty)
                #expect(r.stderr == "vtpmctl: backend has no VM identity (vtpmd runs without a vm-id)\n", "\(r.output)")
            }
            // The raw reply: result 0, the length, {"vm_id": null}.
            let c = try ControlClient(unixPath: v.connection[1])
            let body = Array("{\"vm_id\": null}".utf8)
            let reply = try c.request(.vtpmGetIdentity, replySize: 8 + body.count)
            #expect(reply == [0, 0, 0, 0, 0, 0, 0, UInt8(body.count)] + body)
            // It has no payload: bytes behind it are the next message, answered after it.
            try c.send(ControlRequest.vtpmGetIdentity.encoded + ControlRequest.getCapability.encoded)
            #expect(try c.read(8 + body.count + 8) == reply + [0, 0, 0, 0, 0, 0, 0xff, 0xff])
        }
    }

    @Test func vendorCodeRoundTripsThroughTPMWire() throws {
        #expect(ControlRequest.vtpmGetIdentity.encoded == [0x76, 0x54, 0x00, 0x01])
        #expect(ControlCode.vtpmGetIdentity.description == "VTPM_GET_IDENTITY")
        #expect(ControlCode.vtpmGetIdentity.payloadRule == .fixed(0))
        #expect(try ControlRequest(code: .vtpmGetIdentity, payload: []) == .vtpmGetIdentity)
        // Not advertised: QEMU's view of the backend is swtpm 0.7.1's.
        #expect(ControlCapabilities.vtpmd.rawValue == 0xffff)
    }

    /// Debian's swtpm 0.7.1: everything but identity works, and identity is refused cleanly.
    @Test func againstSwtpm() throws {
        try withTemporaryDirectory { dir in
            let s = try Backend("swtpm", dir: dir)
            let identity = try s.ctl("identity")
            #expect(identity.status == 1)
            #expect(identity.stdout.isEmpty)
            #expect(
                identity.stderr == "vtpmctl: backend does not support identity (TPM_BAD_ORDINAL)\n",
                "\(identity.output)"
            )
            #expect(try s.ok("capabilities").hasPrefix("capabilities 0xffff\n"))
            #expect(try s.ok("info").contains("\"TPMSpecification\""))
            #expect(try s.ok("config").contains("not configured"))
            #expect(try s.ok("buffer-size").hasPrefix("buffer size 4096"))
            let five = try s.ctl("locality", "5")
            #expect(five.status == 1 && five.stderr.contains("TPM_BAD_LOCALITY (0x3d)"), "\(five.output)")
            try s.ok("init")
            let d = try s.data()
            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.startup())) == 0)
            let digest = [UInt8](repeating: 0x17, count: 32)
            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.pcrExtend(16, digest: digest))) == 0)
            let pcrBefore = try d.transmit(TPMCommands.pcrRead(16))
            #expect(try s.ok("established") == "TPM established: no\n")
            try s.ok("store-volatile")
            try s.ok("save", "permanent", "\(dir)/p.blob")
            try s.ok("save", "volatile", "\(dir)/v.blob")
            // The connection survived the unknown command: identity again, then a normal command.
            #expect(try s.ctl("identity").status == 1)
            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.pcrExtend(16, digest: digest))) == 0)
            try s.ok("stop")
            try s.ok("load", "permanent", "\(dir)/p.blob")
            try s.ok("load", "volatile", "\(dir)/v.blob")
            try s.ok("init")
            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.startup())) == 0x100)
            #expect(try d.transmit(TPMCommands.pcrRead(16)) == pcrBefore)
            // swtpm's blobs load into vtpmd too.
            let v = try Backend(Binaries.vtpmd, dir: dir, name: "vtpmd")
            try v.ok("load", "permanent", "\(dir)/p.blob")
            try v.ok("load", "volatile", "\(dir)/v.blob")
            try v.ok("init")
            let d3 = try v.data()
            #expect(TPMFrame.responseCode(try d3.transmit(TPMCommands.startup())) == 0x100)
            #expect(try d3.transmit(TPMCommands.pcrRead(16)) == pcrBefore)
            try s.ok("shutdown")
            #expect(s.daemon.waitForExit() == 0)
        }
    }

    /// What QEMU and swtpm_ioctl see is unchanged by the vendor command.
    @Test func swtpmIoctlStillSeesSwtpmCapabilities() throws {
        try withTemporaryDirectory { dir in
            let v = try Self.vmNode(dir, name: "a", vmID: "0c0c0c0c-0000-4000-8000-00000000000c")
            try v.ok("identity")
            let caps = try runCommand("swtpm_ioctl", ["--unix", v.connection[1], "-c"])
            #expect(caps.status == 0)
            #expect(caps.stdout.contains("ptm capability is 0xffff"), "\(caps.output)")
            #expect(try runCommand("swtpm_ioctl", ["--unix", v.connection[1], "-i"]).status == 0)
            try v.ok("identity")
            #expect(try runCommand("swtpm_ioctl", ["--unix", v.connection[1], "-s"]).status == 0)
            #expect(v.daemon.waitForExit() == 0)
        }
    }
}
