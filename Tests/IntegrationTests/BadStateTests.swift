import Foundation
import StateStore
import TPMWire
import TestSupport
import Testing

/// Hostile or damaged state directories: CMD_INIT fails with an error, the daemon keeps running,
/// and nothing on disk changes.
@Suite(.serialized)
struct BadStateTests {
    /// Makes a state directory with a permall written by vtpmd.
    static func makeState(_ dir: String, extra: [String] = []) throws -> String {
        let state = "\(dir)/state"
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        let v = try VTPMDInstance(dir: "\(dir)", extra: extra, state: state)
        let c = try v.control()
        try #require(try c.result(.initialize(flags: 0)) == 0)
        let d = try v.data()
        #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.startup())) == 0)
        #expect(try c.result(.shutdown) == 0)
        _ = v.daemon.waitForExit()
        return state
    }

    static let damages = [
        "truncated", "bitflip", "unknown-version", "symlink", "fifo", "missing-permall", "world-writable",
    ]

    @Test(arguments: damages)
    func damagedStateFailsInitAndIsLeftAlone(damage: String) throws {
        try withTemporaryDirectory { dir in
            let state = try Self.makeState(dir)
            let permall = "\(state)/tpm2-00.permall"
            var original = try #require(fileBytes(permall))
            let fm = FileManager.default
            switch damage {
            case "truncated":
                original = Array(original.prefix(original.count / 2))
                try Data(original).write(to: URL(fileURLWithPath: permall))
            case "bitflip":
                original[original.count / 2] ^= 0x10
                try Data(original).write(to: URL(fileURLWithPath: permall))
            case "unknown-version":
                original[1] = 9  // min_version
                try Data(original).write(to: URL(fileURLWithPath: permall))
            case "symlink":
                try fm.moveItem(atPath: permall, toPath: "\(dir)/elsewhere")
                try fm.createSymbolicLink(atPath: permall, withDestinationPath: "\(dir)/elsewhere")
            case "fifo":
                try fm.removeItem(atPath: permall)
                #expect(try runCommand("mkfifo", ["-m", "600", permall]).status == 0)
            case "missing-permall":
                try fm.removeItem(atPath: permall)
            case "world-writable":
                try fm.setAttributes([.posixPermissions: 0o666], ofItemAtPath: permall)
            default:
                Issue.record("unknown damage \(damage)")
            }
            let snapshot = try Self.snapshot(state)
            let v = try VTPMDInstance(dir: dir, state: state)
            let c = try v.control()
            let rc = try c.result(.initialize(flags: 0))
            #expect(rc != 0, "INIT accepted a \(damage) permall")
            #expect(v.daemon.isRunning)
            let d = try v.data()
            #expect(try d.transmit(TPMCommands.getRandom(8)) == TPMFrame.errorResponse(0x101))
            #expect(try Self.snapshot(state) == snapshot, "\(damage): the state directory changed")
            if damage == "symlink" { #expect(fileBytes("\(dir)/elsewhere") == original) }
            #expect(v.log.contains("error"), "the log names the failure")
        }
    }

    /// The input `make fuzz` found (Fuzz/regressions/libtpms-state): a permanent state whose command-audit hash
    /// algorithm libtpms does not have, with commands marked for audit. libtpms loads it and crashes at the first
    /// audited command; vtpmd refuses it at SET_STATEBLOB and serves on.
    @Test func aStateBlobLibtpmsWouldCrashOnIsRefused() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../Fuzz/regressions/libtpms-state/audit-hash-alg-null-deref")
        let permanent = Array([UInt8](try Data(contentsOf: url)).dropFirst())
        let blob = try MigrationBlob.encode(permanent, stateKey: nil, keepStateKeyLayer: false, migrationKey: nil)
        try withTemporaryDirectory { dir in
            let v = try VTPMDInstance(dir: dir)
            let c = try v.control()
            var w = ByteWriter()
            w.write(ControlCode.setStateBlob.rawValue)
            w.write(UInt32(0))
            w.write(UInt32(1))
            w.write(UInt32(blob.count))
            w.write(bytes: blob)
            #expect(try c.exchange(w.bytes, replySize: 4) == ControlReply.result(ControlResult.fail))
            #expect(v.log.contains("command-audit hash algorithm 0x6f"), "\(v.log)")
            // The daemon serves on: a TPM of its own, commands answered.
            #expect(try c.result(.initialize(flags: 0)) == 0)
            let d = try v.data()
            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.startup())) == 0)
            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.getRandom(8))) == 0)
            #expect(v.daemon.isRunning)
        }
    }

    @Test func wrongKeyFailsInit() throws {
        try withTemporaryDirectory { dir in
            try Data(String(repeating: "ab", count: 16).utf8).write(to: URL(fileURLWithPath: "\(dir)/k1"))
            try Data(String(repeating: "cd", count: 16).utf8).write(to: URL(fileURLWithPath: "\(dir)/k2"))
            let state = try Self.makeState(dir, extra: ["--key", "file=\(dir)/k1"])
            let snapshot = try Self.snapshot(state)
            for extra in [["--key", "file=\(dir)/k2"], []] {
                let v = try VTPMDInstance(dir: dir, extra: extra, state: state)
                #expect(try v.control().result(.initialize(flags: 0)) != 0)
                v.daemon.stop()
                #expect(try Self.snapshot(state) == snapshot)
            }
            let v = try VTPMDInstance(dir: dir, extra: ["--key", "file=\(dir)/k1"], state: state)
            #expect(try v.control().result(.initialize(flags: 0)) == 0)
        }
    }

    @Test func secondDaemonOnTheSameDirectoryIsRefused() throws {
        try withTemporaryDirectory { dir in
            let state = "\(dir)/state"
            let first = try VTPMDInstance(dir: "\(dir)", state: state)
            #expect(try first.control().result(.initialize(flags: 0)) == 0)
            try FileManager.default.createDirectory(atPath: "\(dir)/b", withIntermediateDirectories: true)
            let second = try VTPMDInstance(dir: "\(dir)/b", state: state)
            #expect(try second.control().result(.initialize(flags: 0)) == ControlResult.fail)
            #expect(second.log.contains("locked by another process"))
            // swtpm is excluded too (its fcntl lock conflicts with vtpmd's OFD lock).
            let ctrl = "\(dir)/sw.sock"
            let swtpm = try Daemon(
                "swtpm",
                ["socket", "--tpm2", "--tpmstate", "dir=\(state)", "--ctrl", "type=unixio,path=\(ctrl)"],
                waitFor: ctrl
            )
            #expect(try ControlClient(unixPath: ctrl).result(.initialize(flags: 0)) == ControlResult.fail)
            swtpm.stop()
        }
    }

    /// Every entry of the directory with its type and contents (the lock file is excluded).
    static func snapshot(_ dir: String) throws -> [String: String] {
        var result: [String: String] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: dir) where name != ".lock" {
            let path = "\(dir)/\(name)"
            let attributes = try FileManager.default.attributesOfItem(atPath: path)
            let type = (attributes[.type] as? FileAttributeType)?.rawValue ?? "?"
            let mode = (attributes[.posixPermissions] as? Int) ?? -1
            let contents: String
            if type == FileAttributeType.typeRegular.rawValue {
                contents = (fileBytes(path) ?? []).hexString
            } else if type == FileAttributeType.typeSymbolicLink.rawValue {
                contents = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? ""
            } else {
                contents = ""
            }
            result[name] = "\(type) \(mode) \(contents)"
        }
        return result
    }
}
