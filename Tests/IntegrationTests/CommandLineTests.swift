import Foundation
import TestSupport
import Testing

/// vtpmd's command line: swtpm's syntax, clear errors for everything else.
@Suite
struct CommandLineTests {
    @Test(arguments: [
        (["socket", "--tpmstate", "dir=/tmp", "--ctrl", "type=unixio,path=/tmp/x.sock"], "TPM 2.0 only"),
        (["socket", "--tpm2", "--no-such-option"], "--no-such-option"),
        (["socket", "--tpm2", "--ctrl", "type=carrier-pigeon,path=/x"], "type must be unixio or tcp"),
        (["socket", "--tpm2", "--ctrl", "type=unixio,path=/tmp/a.sock,colour=blue"], "unknown parameter 'colour'"),
        (["socket", "--tpm2", "--server", "type=tcp,port=99999"], "port=99999"),
        (["socket", "--tpm2", "--tpmstate", "dir=/tmp,mode=999", "--server", "type=tcp,port=1"], "octal mode"),
        (
            ["socket", "--tpm2", "--flags", "startup-clear,startup-state", "--server", "type=tcp,port=1"],
            "only one startup"
        ),
        (["socket", "--tpm2", "--key", "file=/nonexistent/key", "--server", "type=tcp,port=1"], "cannot read the key"),
        (["socket", "--tpm2", "--key", "pwdfile=/etc/hostname,kdf=md5", "--server", "type=tcp,port=1"], "unknown kdf"),
        (["socket", "--tpm2", "--tpmstate", "dir=/tmp"], "needs --server, --port, --fd or --ctrl"),
        (["socket", "--tpm2", "--log", "level=3", "--server", "type=tcp,port=1"], "needs file= or fd="),
        (["chardev", "--tpm2", "--tpmstate", "dir=/tmp"], "needs --fd"),
        (["socket", "--tpm2", "--seccomp", "action=maybe", "--server", "type=tcp,port=1"], "action must be"),
    ])
    func rejectsBadOptions(arguments: [String], message: String) throws {
        let r = try runCommand(Binaries.vtpmd, arguments)
        #expect(r.status != 0)
        #expect(r.stderr.contains(message), "stderr: \(r.stderr)")
    }

    @Test func printsCapabilitiesAsSwtpmDoes() throws {
        let r = try runCommand(Binaries.vtpmd, ["socket", "--print-capabilities"])
        #expect(r.status == 0)
        let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        #expect(json?["type"] as? String == "swtpm")
        let features = json?["features"] as? [String] ?? []
        #expect(
            features.contains("tpm-2.0") && features.contains("cmdarg-pwd-fd") && features.contains("rsa-keysize-2048")
        )
        // swtpm's order: cmdarg-seccomp (vtpmd installs a filter) between flags-opt-startup and cmdarg-key-fd.
        #expect(!features.contains("tpm-1.2"))
        let seccomp = features.firstIndex(of: "cmdarg-seccomp")
        #expect(seccomp != nil && seccomp == features.firstIndex(of: "flags-opt-startup").map { $0 + 1 })
    }

    @Test func printsStates() throws {
        try withTemporaryDirectory { dir in
            let empty = try runCommand(
                Binaries.vtpmd,
                ["socket", "--tpm2", "--tpmstate", "dir=\(dir)", "--print-states"]
            )
            #expect(empty.status == 0 && empty.stdout == "{ \"type\": \"swtpm\", \"states\": [] }")
            let setup = try runCommand("swtpm_setup", ["--tpm2", "--tpmstate", dir, "--overwrite"])
            try #require(setup.status == 0)
            let size = (try FileManager.default.attributesOfItem(atPath: "\(dir)/tpm2-00.permall")[.size] as? Int) ?? 0
            let full = try runCommand(
                Binaries.vtpmd,
                ["socket", "--tpm2", "--tpmstate", "dir=\(dir)", "--print-states"]
            )
            #expect(
                full.stdout == "{ \"type\": \"swtpm\", \"states\": [ {\"name\": \"permall\", \"size\": \(size)} ] }"
            )
            let missing = try runCommand(
                Binaries.vtpmd,
                ["socket", "--tpm2", "--tpmstate", "dir=\(dir)/nope", "--print-states"]
            )
            #expect(missing.status != 0)
        }
    }

    @Test func daemonModeWritesPidFileAndExitsOnSIGTERM() throws {
        try withTemporaryDirectory { dir in
            let r = try runCommand(
                Binaries.vtpmd,
                [
                    "socket", "--tpm2", "--tpmstate", "dir=\(dir)", "--ctrl", "type=unixio,path=\(dir)/c.sock",
                    "--pid", "file=\(dir)/pid", "--daemon",
                ]
            )
            #expect(r.status == 0)
            let pidText = try String(contentsOfFile: "\(dir)/pid", encoding: .utf8)
            let pid = try #require(Int32(pidText))
            #expect(kill(pid, 0) == 0)
            #expect(FileManager.default.fileExists(atPath: "\(dir)/c.sock"))
            #expect(kill(pid, SIGTERM) == 0)
            // The daemon is re-parented; where nobody reaps it, it stays a zombie: that counts as gone.
            func alive() -> Bool {
                guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return false }
                return !stat.contains(") Z ")
            }
            var gone = false
            for _ in 0..<200 where !gone {
                gone = !alive()
                Thread.sleep(forTimeInterval: 0.02)
            }
            #expect(gone)
            #expect(!FileManager.default.fileExists(atPath: "\(dir)/pid"))
            #expect(!FileManager.default.fileExists(atPath: "\(dir)/c.sock"))
        }
    }

    @Test func daemonReportsStartupFailureWithItsExitStatus() throws {
        try withTemporaryDirectory { dir in
            // The control socket path's directory does not exist: bind fails after the fork.
            let r = try runCommand(
                Binaries.vtpmd,
                [
                    "socket", "--tpm2", "--tpmstate", "dir=\(dir)", "--ctrl", "type=unixio,path=\(dir)/no/such/c.sock",
                    "--daemon",
                ]
            )
            #expect(r.status != 0)
        }
    }
}
