import Foundation
import TestSupport
import Testing

/// State directories move between swtpm 0.7.1 and vtpmd in both directions, plain and with --key:
/// the EK certificate (NV 0x01C00002) and the EK read back identical.
@Suite(.serialized)
struct StateCompatibilityTests {
    /// Starts `binary` on the directory `state` and reads its endorsement.
    static func readIdentity(_ binary: String, state: String, work: String, extra: [String]) throws -> Endorsement {
        try Endorsement.read(binary, tpmstate: "dir=\(state)", work: work, extra: extra)
    }

    static let keyVariants: [String] = ["plain", "key"]

    @Test(arguments: keyVariants)
    func swtpmStateRunsOnVTPMD(variant: String) throws {
        try withTemporaryDirectory { dir in
            let extra = try Self.keyArguments(variant, dir: dir)
            let state = "\(dir)/state"
            try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
            let setup = try runCommand(
                "swtpm_setup",
                ["--tpm2", "--tpmstate", state, "--create-ek-cert", "--overwrite"] + Self.setupKey(extra)
            )
            try #require(setup.status == 0, "\(setup.output)")
            let before = try Self.readIdentity("swtpm", state: state, work: dir, extra: extra)
            let after = try Self.readIdentity(Binaries.vtpmd, state: state, work: dir, extra: extra)
            #expect(!before.ekCertificate.isEmpty && before == after)
            // And back to swtpm after vtpmd wrote the state.
            let again = try Self.readIdentity("swtpm", state: state, work: dir, extra: extra)
            #expect(again == before)
        }
    }

    @Test(arguments: keyVariants)
    func vtpmdStateRunsOnSwtpm(variant: String) throws {
        try withTemporaryDirectory { dir in
            let extra = try Self.keyArguments(variant, dir: dir)
            let state = "\(dir)/state"
            try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
            let setup = try runCommand(
                "swtpm_setup",
                ["--tpm2", "--tpm", "\(Binaries.vtpmd) socket", "--tpmstate", state, "--create-ek-cert", "--overwrite"]
                    + Self.setupKey(extra)
            )
            try #require(setup.status == 0, "\(setup.output)")
            let before = try Self.readIdentity(Binaries.vtpmd, state: state, work: dir, extra: extra)
            let after = try Self.readIdentity("swtpm", state: state, work: dir, extra: extra)
            #expect(!before.ekCertificate.isEmpty && before == after)
            if variant == "key" {
                // The file on disk really is encrypted (header flag 0x01).
                let permall = fileBytes("\(state)/tpm2-00.permall") ?? []
                #expect(permall.count > 10 && permall[5] & 0x01 == 0x01)
            }
        }
    }

    static func keyArguments(_ variant: String, dir: String) throws -> [String] {
        guard variant == "key" else { return [] }
        try Data("correct horse battery staple\n".utf8).write(to: URL(fileURLWithPath: "\(dir)/pass"))
        return ["--key", "pwdfile=\(dir)/pass,mode=aes-256-cbc"]
    }

    /// swtpm_setup spells the key option `--pwdfile F --cipher aes-256-cbc`.
    static func setupKey(_ extra: [String]) -> [String] {
        guard extra.count == 2 else { return [] }
        let file = extra[1].split(separator: ",")[0].dropFirst("pwdfile=".count)
        return ["--pwdfile", String(file), "--cipher", "aes-256-cbc"]
    }

    /// A state vtpmd provisioned with an identity (the record 0x7E03 in the permanent state) runs on swtpm
    /// with the same EK and certificate; swtpm rewrites the file without the record, and vtpmd, back on it,
    /// finds the identity in the marker: its own current state, nothing rekeyed.
    @Test func aStateWithAnIdentityRecordRunsOnSwtpmAndComesBack() throws {
        try withTemporaryDirectory { dir in
            let state = "\(dir)/state"
            try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
            let ca = try runCommand(Binaries.vtpmState, ["ca", "init", "--ca", "\(dir)/ca"])
            try #require(ca.status == 0, "\(ca.output)")
            let identity = [
                "--vm-id", "6f1c1a52-3c1e-4a57-9d0e-4f3b2a1c0d9e", "--ca", "\(dir)/ca", "--registry",
                "\(dir)/registry.sqlite", "--host-key", "\(dir)/host.key", "--log", "file=\(dir)/vtpmd.log,level=2",
            ]
            let provisioned = try Self.readIdentity(Binaries.vtpmd, state: state, work: dir, extra: identity)
            #expect(provisioned.ekCertificate.count > 500)
            let permall = try #require(fileBytes("\(state)/tpm2-00.permall"))
            #expect(permall.count > 4 && Self.contains(permall, Array("VTPD".utf8)))
            let onSwtpm = try Self.readIdentity("swtpm", state: state, work: dir, extra: [])
            #expect(onSwtpm == provisioned)
            // swtpm rewrote the permanent state without vtpmd's records: only the marker names the VM now.
            #expect(!Self.contains(try #require(fileBytes("\(state)/tpm2-00.permall")), Array("VTPD".utf8)))
            let back = try Self.readIdentity(Binaries.vtpmd, state: state, work: dir, extra: identity)
            #expect(back == provisioned)
            // And it stays this VM's current state on later starts (its writes are numbered past the
            // registry's record, which the file swtpm wrote does not carry).
            let later = try Self.readIdentity(Binaries.vtpmd, state: state, work: dir, extra: identity)
            #expect(later == provisioned)
            let log = (try? String(contentsOfFile: "\(dir)/vtpmd.log", encoding: .utf8)) ?? ""
            #expect(log.components(separatedBy: "clone-rekey decision").count == 2, "\(log)")
        }
    }

    static func contains(_ bytes: [UInt8], _ needle: [UInt8]) -> Bool {
        guard bytes.count >= needle.count else { return false }
        return (0...(bytes.count - needle.count)).contains { Array(bytes[$0..<($0 + needle.count)]) == needle }
    }
}
