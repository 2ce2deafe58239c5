import Foundation
import StateStore
import TPMWire
import TestSupport
import Testing

/// `--tpmstate backend-uri=file://PATH` (swtpm's single "linear" state file): a file written by
/// vtpmd runs on Debian's swtpm 0.7.1 and the reverse, `--print-states` agrees with swtpm's, and
/// the file is locked.
@Suite(.serialized)
struct FileBackendTests {
    static let nvIndex = "0x1500020"
    static let secret = Array("file-backend".utf8)

    /// Starts `binary` on the linear file `path` with TCP data (`port`) and control (`port + 1`).
    static func start(
        _ binary: String,
        _ path: String,
        port: UInt16,
        flags: String = "not-need-init,startup-clear"
    ) throws -> Daemon {
        try Daemon(
            binary,
            [
                "socket", "--tpm2", "--tpmstate", "backend-uri=file://\(path)", "--flags", flags,
                "--server", "type=tcp,port=\(port)", "--ctrl", "type=tcp,port=\(port + 1)",
            ],
            waitForPort: port
        )
    }

    static func tool(_ tool: String, _ arguments: [String], port: UInt16) throws -> CommandResult {
        try runCommand(tool, arguments, environment: ["TPM2TOOLS_TCTI": "swtpm:host=127.0.0.1,port=\(port)"])
    }

    static func ioctl(_ flag: String, port: UInt16) throws -> CommandResult {
        try runCommand("swtpm_ioctl", ["--tcp", "127.0.0.1:\(port + 1)", flag])
    }

    /// Defines and writes the NV index, saves the volatile state, and stops the TPM.
    static func writeIndex(_ binary: String, _ path: String, dir: String) throws {
        let port = try freePortPair()
        let daemon = try Self.start(binary, path, port: port)
        let define = try Self.tool(
            "tpm2_nvdefine",
            [Self.nvIndex, "-C", "o", "-s", "\(Self.secret.count)", "-a", "ownerread|ownerwrite"],
            port: port
        )
        try #require(define.status == 0, "nvdefine on \(binary): \(define.output)")
        let input = "\(dir)/nv.in"
        try Data(Self.secret).write(to: URL(fileURLWithPath: input))
        let write = try Self.tool("tpm2_nvwrite", [Self.nvIndex, "-C", "o", "-i", input], port: port)
        try #require(write.status == 0, "nvwrite on \(binary): \(write.output)")
        let store = try Self.ioctl("-v", port: port)
        #expect(store.status == 0, "\(store.output)")
        let stop = try Self.ioctl("-s", port: port)
        #expect(stop.status == 0, "\(stop.output)")
        #expect(daemon.waitForExit() == 0, "\(binary): \(daemon.output)")
    }

    /// Reads the NV index back (twice: before and after a fresh CMD_INIT) and stops the TPM.
    static func readIndex(
        _ binary: String,
        _ path: String,
        dir: String,
        flags: String = "not-need-init,startup-clear"
    ) throws -> String {
        let port = try freePortPair()
        let daemon = try Self.start(binary, path, port: port, flags: flags)
        let output = "\(dir)/nv.out"
        for round in 0..<2 {
            try? FileManager.default.removeItem(atPath: output)
            let read = try Self.tool("tpm2_nvread", [Self.nvIndex, "-C", "o", "-o", output], port: port)
            #expect(read.status == 0, "nvread \(round) on \(binary): \(read.output)")
            #expect(fileBytes(output) == Self.secret, "round \(round) on \(binary)")
            if round == 0 {
                let initialize = try Self.ioctl("-i", port: port)
                #expect(initialize.status == 0, "\(initialize.output)")
                let startup = try Self.tool("tpm2_startup", ["-c"], port: port)
                #expect(startup.status == 0, "\(startup.output)")
            }
        }
        let stop = try Self.ioctl("-s", port: port)
        #expect(stop.status == 0, "\(stop.output)")
        #expect(daemon.waitForExit() == 0, "\(binary): \(daemon.output)")
        return daemon.output
    }

    static func printStates(_ binary: String, _ path: String) throws -> CommandResult {
        try runCommand(binary, ["socket", "--tpm2", "--tpmstate", "backend-uri=file://\(path)", "--print-states"])
    }

    @Test func vtpmdFileRunsOnSwtpm() throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            try Self.writeIndex(Binaries.vtpmd, path, dir: dir)
            let file = try LinearStateFile(decoding: try #require(fileBytes(path)))
            #expect(file.blobs["permall"] != nil)
            let attributes = try FileManager.default.attributesOfItem(atPath: path)
            #expect(attributes[.posixPermissions] as? Int == 0o600)
            #expect(!FileManager.default.fileExists(atPath: "\(dir)/\(StateDirectory.instanceName)"))

            let swtpmOutput = try Self.readIndex("swtpm", path, dir: dir)
            #expect(!swtpmOutput.contains("Formatting"), "swtpm reformatted vtpmd's file: \(swtpmOutput)")
            // And back: vtpmd reads what swtpm updated in place.
            _ = try Self.readIndex(Binaries.vtpmd, path, dir: dir)
        }
    }

    @Test func swtpmFileRunsOnVtpmd() throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            try Self.writeIndex("swtpm", path, dir: dir)
            let before = try LinearStateFile(decoding: try #require(fileBytes(path)))
            #expect(before.blobs["volatilestate"] != nil)
            // The TPM resumes from swtpm's volatile state (a TPM2_Startup would fail with
            // TPM_RC_INITIALIZE, which swtpm ignores and vtpmd reports), so no startup here.
            _ = try Self.readIndex(Binaries.vtpmd, path, dir: dir, flags: "not-need-init")
            let after = try LinearStateFile(decoding: try #require(fileBytes(path)))
            #expect(after.blobs["permall"] != nil)
            // And back to swtpm after vtpmd rewrote the file.
            let swtpmOutput = try Self.readIndex("swtpm", path, dir: dir)
            #expect(!swtpmOutput.contains("Formatting"), "\(swtpmOutput)")
        }
    }

    @Test func printStatesMatchesSwtpm() throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            // A new file: created, formatted, no states.
            let empty = try Self.printStates(Binaries.vtpmd, path)
            #expect(empty.status == 0, "\(empty.output)")
            #expect(empty.stdout == "{ \"type\": \"swtpm\", \"states\": [] }")
            #expect(fileBytes(path) == (try LinearStateFile().encoded))

            try Self.writeIndex(Binaries.vtpmd, path, dir: dir)
            let ours = try Self.printStates(Binaries.vtpmd, path)
            #expect(ours.status == 0, "\(ours.output)")
            let file = try LinearStateFile(decoding: try #require(fileBytes(path)))
            let permall = try #require(file.blobs["permall"]).count
            let volatile = try #require(file.blobs["volatilestate"]).count
            #expect(
                ours.stdout == "{ \"type\": \"swtpm\", \"states\": [ {\"name\": \"permall\", \"size\": \(permall)}, "
                    + "{\"name\": \"volatilestate\", \"size\": \(volatile)} ] }"
            )
            let theirs = try Self.printStates("swtpm", path)
            #expect(theirs.status == 0, "\(theirs.output)")
            #expect(theirs.stdout == ours.stdout)
        }
    }

    @Test func printStatesRefusesADamagedFile() throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            let junk = Array("not a linear state file".utf8)
            try Data(junk).write(to: URL(fileURLWithPath: path))
            let result = try Self.printStates(Binaries.vtpmd, path)
            #expect(result.status != 0, "\(result.output)")
            #expect(fileBytes(path) == junk)
        }
    }

    @Test func otherBackendURIsAreRejected() throws {
        for uri in ["ftp://x", "file://", "nvram://x"] {
            let result = try runCommand(
                Binaries.vtpmd,
                ["socket", "--tpm2", "--tpmstate", "backend-uri=\(uri)", "--print-states"]
            )
            #expect(result.status != 0 && result.stderr.contains("backend-uri"), "\(uri): \(result.output)")
        }
    }

    @Test func secondVtpmdOnTheSameFileIsLockedOut() throws {
        try withTemporaryDirectory { dir in
            let path = "\(dir)/state.bin"
            let port = try freePortPair()
            let first = try Self.start(Binaries.vtpmd, path, port: port)
            // The port listens before the TPM is up: a served command proves the state was written.
            let data = try DataClient(tcpPort: port)
            #expect(TPMFrame.responseCode(try data.transmit(TPMCommands.getRandom(8))) == 0)
            let before = try #require(fileBytes(path))
            let states = try Self.printStates(Binaries.vtpmd, path)
            #expect(states.status != 0 && states.output.contains("locked"), "\(states.output)")
            let secondPort = try freePortPair()
            let second = try Daemon(
                Binaries.vtpmd,
                [
                    "socket", "--tpm2", "--tpmstate", "backend-uri=file://\(path)",
                    "--server", "type=tcp,port=\(secondPort)", "--ctrl", "type=tcp,port=\(secondPort + 1)",
                ],
                waitForPort: secondPort
            )
            let initialize = try runCommand("swtpm_ioctl", ["--tcp", "127.0.0.1:\(secondPort + 1)", "-i"])
            #expect(initialize.status != 0, "second INIT succeeded: \(initialize.output)")
            _ = try runCommand("swtpm_ioctl", ["--tcp", "127.0.0.1:\(secondPort + 1)", "-s"])
            #expect(second.waitForExit() != nil)
            #expect(fileBytes(path) == before)
            let stop = try Self.ioctl("-s", port: port)
            #expect(stop.status == 0, "\(stop.output)")
            #expect(first.waitForExit() == 0, "\(first.output)")
        }
    }
}
