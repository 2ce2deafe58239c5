import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `vtpm-state` as operators run it: the built binary (libtpms is process-global, so every engine lives
/// in its own process) on state made by vtpmd, by swtpm_setup and by `vtpm-state create`.
@Suite(.serialized)
struct StateToolCLITests {
    static let vmA = "11111111-1111-4111-8111-111111111111"
    static let vmB = "22222222-2222-4222-8222-222222222222"

    @discardableResult
    func tool(_ arguments: [String]) throws -> CommandResult {
        try runCommand(Binaries.vtpmState, arguments)
    }

    func json(_ result: CommandResult) throws -> [String: Any] {
        let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8))
        return try #require(object as? [String: Any])
    }

    /// Every file of a directory with its size and an FNV-1a digest of its bytes, for "nothing changed" checks.
    func snapshot(_ directory: String) -> [String: String] {
        var result: [String: String] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            let bytes = fileBytes("\(directory)/\(name)") ?? []
            var hash: UInt64 = 0xcbf2_9ce4_8422_2325
            for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
            result[name] = "\(bytes.count):\(String(hash, radix: 16))"
        }
        return result
    }

    /// vtpmd with clone-rekey on, over TCP data and control channels.
    func startVTPMD(_ host: String, state: String, vmID: String) throws -> (Daemon, UInt16) {
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        // Suites run in parallel: a port pair found free can be taken before vtpmd binds it; retry.
        var attempt = 0
        while true {
            attempt += 1
            let port = try freePortPair()
            do {
                let daemon = try Daemon(
                    Binaries.vtpmd,
                    [
                        "socket", "--tpm2", "--tpmstate", "dir=\(state)", "--server", "type=tcp,port=\(port)",
                        "--ctrl", "type=tcp,port=\(port + 1)", "--flags", "not-need-init,startup-clear",
                        "--vm-id", vmID, "--ca", "\(host)/ca", "--registry", "\(host)/registry.sqlite",
                        "--host-key", "\(host)/host.key",
                    ],
                    waitForPort: port
                )
                return (daemon, port)
            } catch  where attempt < 3 {
                continue
            }
        }
    }

    func stopVTPMD(_ daemon: Daemon, port: UInt16) throws {
        #expect(try runCommand("swtpm_ioctl", ["--tcp", "127.0.0.1:\(port + 1)", "-s"]).status == 0)
        _ = daemon.waitForExit()
    }

    // MARK: ca init

    @Test func caInitCreatesACAAndRefusesToOverwriteIt() throws {
        try withTemporaryDirectory { host in
            let created = try self.tool(["ca", "init", "--ca", "\(host)/ca"])
            #expect(created.status == 0, "\(created.output)")
            #expect(created.stdout.contains("created CA"))
            let attributes = try FileManager.default.attributesOfItem(atPath: "\(host)/ca/ca-key.pem")
            #expect((attributes[.posixPermissions] as? Int) == 0o600)
            let before = self.snapshot("\(host)/ca")
            let again = try self.tool(["ca", "init", "--ca", "\(host)/ca"])
            #expect(again.status == 1)
            #expect(again.stderr.contains("refusing to overwrite"))
            #expect(self.snapshot("\(host)/ca") == before)
            let openssl = try runCommand(
                "openssl",
                ["x509", "-in", "\(host)/ca/ca.pem", "-noout", "-subject"]
            )
            #expect(openssl.stdout.contains("swift-vtpm"))
        }
    }

    // MARK: inspect

    @Test func inspectsAStateMadeByVTPMDAndReadsItWithoutWritingWhileVTPMDRuns() throws {
        try withTemporaryDirectory { host in
            let state = "\(host)/a"
            let (daemon, port) = try self.startVTPMD(host, state: state, vmID: Self.vmA)
            // vtpmd provisions the TPM at startup (not-need-init); wait for its state.
            for _ in 0..<500 where !FileManager.default.fileExists(atPath: "\(state)/tpm2-00.permall") {
                Thread.sleep(forTimeInterval: 0.01)
            }
            Thread.sleep(forTimeInterval: 0.2)
            // Locked by the running vtpmd: read without the lock, nothing changed; a rekey is refused.
            let before = self.snapshot(state)
            let running = try self.tool(["inspect", "--state", state])
            #expect(running.status == 0, "\(running.output)")
            #expect(running.stdout.contains("in use by a running vtpmd"), "\(running.output)")
            #expect(running.stdout.contains("identity: vm \(Self.vmA) generation 0"), "\(running.output)")
            let rekey = try self.tool(["rekey", "--state", state, "--ca", "\(host)/ca"])
            #expect(rekey.status == 1 && rekey.stderr.contains("locked"), "\(rekey.output)")
            #expect(self.snapshot(state) == before)
            try self.stopVTPMD(daemon, port: port)

            let stopped = self.snapshot(state)
            let result = try self.tool(["inspect", "--state", state, "--json"])
            #expect(result.status == 0, "\(result.output)")
            #expect(self.snapshot(state) == stopped, "inspect wrote to the directory")
            let report = try self.json(result)
            #expect(report["formatVersion"] as? Int == 1)
            let identity = try #require(report["identity"] as? [String: Any])
            #expect(identity["recorded"] as? Bool == true)
            #expect(identity["vmID"] as? String == Self.vmA)
            #expect(identity["generation"] as? Int == 0)
            let files = try #require(report["files"] as? [[String: Any]])
            #expect(files.allSatisfy { $0["status"] as? String == "ok" })
            let keys = try #require(report["endorsementKeys"] as? [[String: Any]])
            #expect(keys.count == 2)
            for key in keys {
                #expect((key["publicKeySHA256"] as? String)?.count == 64)
                #expect(key["certificateMatchesKey"] as? Bool == true)
                let certificate = try #require(key["certificate"] as? [String: Any])
                #expect((certificate["subject"] as? String)?.contains("\(Self.vmA) gen 0") == true)
                #expect(certificate["vmID"] as? String == Self.vmA)
            }
            let indices = try #require(report["nvIndices"] as? [[String: Any]]).compactMap { $0["index"] as? String }
            #expect(indices.contains("0x01400001") && indices.contains("0x01c00002") && indices.contains("0x01c0000a"))
            let banks = try #require(report["pcrBanks"] as? [[String: Any]])
            #expect(banks.contains { $0["algorithm"] as? String == "sha256" })
            let libtpms = try #require(report["libtpms"] as? [String: Any])
            #expect(libtpms["recognized"] as? Bool == true)
            // No secret material: no field carries the seeds or the permanent state.
            #expect(!result.stdout.lowercased().contains("seed"))

            let text = try self.tool(["inspect", "--state", state])
            #expect(text.status == 0)
            #expect(text.stdout.contains("identity: vm \(Self.vmA) generation 0"))
            #expect(text.stdout.split(separator: "\n").allSatisfy { $0.count <= 160 })
        }
    }

    @Test func inspectsAStateMadeBySwtpmSetupWithIdentityUnknown() throws {
        try withTemporaryDirectory { host in
            let state = "\(host)/sw"
            try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
            let setup = try runCommand("swtpm_setup", ["--tpm2", "--tpmstate", state, "--create-ek-cert"])
            try #require(setup.status == 0, "\(setup.output)")
            let result = try self.tool(["inspect", "--state", state, "--json"])
            #expect(result.status == 0, "\(result.output)")
            let report = try self.json(result)
            let identity = try #require(report["identity"] as? [String: Any])
            #expect(identity["recorded"] as? Bool == false)
            #expect(identity["vmID"] == nil)
            let files = try #require(report["files"] as? [[String: Any]])
            #expect(files.first?["writer"] as? String == "swtpm")
            let keys = try #require(report["endorsementKeys"] as? [[String: Any]])
            let rsa = try #require(keys.first { $0["type"] as? String == "rsa2048" })
            #expect(rsa["certificateMatchesKey"] as? Bool == true)
            let text = try self.tool(["inspect", "--state", state])
            #expect(text.stdout.contains("identity: unknown"))
        }
    }

    // MARK: create, verify, clone, rekey, lineage

    @Test func createThenVerifyCloneThenVerifyWithAnotherEKAndLineage() throws {
        try withTemporaryDirectory { host in
            try #require(try self.tool(["ca", "init", "--ca", "\(host)/ca"]).status == 0)
            let registry = "\(host)/registry.sqlite"
            let created = try self.tool([
                "create", "--state", "\(host)/a", "--vm-id", Self.vmA, "--ca", "\(host)/ca", "--registry", registry,
            ])
            #expect(created.status == 0, "\(created.output)")
            let verified = try self.tool(["verify", "--state", "\(host)/a", "--ca", "\(host)/ca"])
            #expect(verified.status == 0, "\(verified.output)")
            #expect(verified.stdout.contains("verify: OK"))

            let source = self.snapshot("\(host)/a")
            let cloned = try self.tool([
                "clone", "--from", "\(host)/a", "--to", "\(host)/b", "--vm-id", Self.vmB, "--ca", "\(host)/ca",
                "--registry", registry,
            ])
            #expect(cloned.status == 0, "\(cloned.output)")
            #expect(self.snapshot("\(host)/a") == source, "clone changed its source")
            let verifiedClone = try self.tool(["verify", "--state", "\(host)/b", "--ca", "\(host)/ca"])
            #expect(verifiedClone.status == 0, "\(verifiedClone.output)")

            let a = try self.json(try self.tool(["inspect", "--state", "\(host)/a", "--json"]))
            let b = try self.json(try self.tool(["inspect", "--state", "\(host)/b", "--json"]))
            func fingerprints(_ report: [String: Any]) -> [String] {
                ((report["endorsementKeys"] as? [[String: Any]]) ?? []).compactMap { $0["publicKeySHA256"] as? String }
            }
            #expect(fingerprints(a).count == 2 && fingerprints(b).count == 2)
            #expect(Set(fingerprints(a)).isDisjoint(with: fingerprints(b)), "the clone kept an EK of its source")
            let identityB = try #require(b["identity"] as? [String: Any])
            #expect(identityB["parent"] as? String == Self.vmA)

            // Offline rekey: next generation, new EKs, still verifies.
            let rekeyed = try self.tool([
                "rekey", "--state", "\(host)/b", "--ca", "\(host)/ca", "--registry", registry,
            ])
            #expect(rekeyed.status == 0, "\(rekeyed.output)")
            let b1 = try self.json(try self.tool(["inspect", "--state", "\(host)/b", "--json"]))
            #expect((b1["identity"] as? [String: Any])?["generation"] as? Int == 1)
            #expect(Set(fingerprints(b1)).isDisjoint(with: fingerprints(b)))
            #expect(try self.tool(["verify", "--state", "\(host)/b", "--ca", "\(host)/ca"]).status == 0)

            let tree = try self.tool(["lineage", "--registry", registry])
            #expect(tree.status == 0, "\(tree.output)")
            #expect(tree.stdout.contains("\(Self.vmA) gen 0 manufacture"))
            #expect(tree.stdout.contains("└── \(Self.vmB) gen 0 clone"))
            let dot = try self.tool(["lineage", "--registry", registry, "--format", "dot", "--vm-id", Self.vmB])
            #expect(dot.stdout.hasPrefix("digraph lineage {"))
            #expect(dot.stdout.contains("\"\(Self.vmA)/0\" -> \"\(Self.vmB)/0\""))
            let json = try self.tool(["lineage", "--registry", registry, "--format", "json"])
            let lineage = try self.json(json)
            #expect((lineage["generations"] as? [Any])?.count == 3)
            #expect((lineage["edges"] as? [Any])?.count == 2)
        }
    }

    @Test func verifyFailsWhenAnEKCertificateComesFromAnotherState() throws {
        try withTemporaryDirectory { host in
            try #require(try self.tool(["ca", "init", "--ca", "\(host)/ca"]).status == 0)
            for (name, vm) in [("a", Self.vmA), ("b", Self.vmB)] {
                let r = try self.tool(["create", "--state", "\(host)/\(name)", "--vm-id", vm, "--ca", "\(host)/ca"])
                try #require(r.status == 0, "\(r.output)")
            }
            // B's RSA EK certificate, read through vtpmd.
            var (daemon, port) = try self.startVTPMD(host, state: "\(host)/b", vmID: Self.vmB)
            var env = ["TPM2TOOLS_TCTI": "swtpm:host=127.0.0.1,port=\(port)"]
            let read = try runCommand(
                "tpm2_nvread",
                ["0x01c00002", "-C", "o", "-o", "\(host)/b-rsa.der"],
                environment: env
            )
            try #require(read.status == 0, "\(read.output)")
            try self.stopVTPMD(daemon, port: port)
            let certificateB = try #require(fileBytes("\(host)/b-rsa.der"))

            // Into A's RSA certificate index, with platform authorization, as a provisioning tool would.
            (daemon, port) = try self.startVTPMD(host, state: "\(host)/a", vmID: Self.vmA)
            env = ["TPM2TOOLS_TCTI": "swtpm:host=127.0.0.1,port=\(port)"]
            for arguments in [
                ["tpm2_nvundefine", "0x01c00002", "-C", "p"],
                [
                    "tpm2_nvdefine", "0x01c00002", "-C", "p", "-s", "\(certificateB.count)", "-a",
                    "ppwrite|writedefine|ppread|ownerread|authread|no_da|platformcreate",
                ],
                ["tpm2_nvwrite", "0x01c00002", "-C", "p", "-i", "\(host)/b-rsa.der"],
            ] {
                let r = try runCommand(arguments[0], Array(arguments.dropFirst()), environment: env)
                try #require(r.status == 0, "\(arguments): \(r.output)")
            }
            try self.stopVTPMD(daemon, port: port)

            let before = self.snapshot("\(host)/a")
            let verified = try self.tool(["verify", "--state", "\(host)/a", "--ca", "\(host)/ca"])
            #expect(verified.status == 1, "\(verified.output)")
            #expect(verified.stdout.contains("rsa2048: FAILED: the certificate"))
            #expect(verified.stdout.contains("certifies another key than this state's EK"))
            #expect(verified.stdout.contains("ecc-nist-p256: ok"))
            #expect(verified.stdout.contains("verify: FAILED"))
            #expect(self.snapshot("\(host)/a") == before)
            #expect(try self.tool(["verify", "--state", "\(host)/b", "--ca", "\(host)/ca"]).status == 0)
        }
    }

    /// The PCR banks with PCRs allocated, from `inspect --json`.
    func activePCRBanks(_ report: [String: Any]) -> [String] {
        ((report["pcrBanks"] as? [[String: Any]]) ?? []).compactMap { bank in
            ((bank["pcrs"] as? [Any])?.isEmpty ?? true) ? nil : bank["algorithm"] as? String
        }
    }

    func nvIndices(_ report: [String: Any]) -> [String] {
        ((report["nvIndices"] as? [[String: Any]]) ?? []).compactMap { $0["index"] as? String }
    }

    @Test func createActivatesTheRequestedPCRBanksAndCertifiesOnlyTheRequestedEK() throws {
        try withTemporaryDirectory { host in
            try #require(try self.tool(["ca", "init", "--ca", "\(host)/ca"]).status == 0)
            let created = try self.tool([
                "create", "--state", "\(host)/a", "--vm-id", Self.vmA, "--ca", "\(host)/ca",
                "--pcr-banks", "sha256,sha384", "--ek", "rsa",
            ])
            #expect(created.status == 0, "\(created.output)")
            let report = try self.json(try self.tool(["inspect", "--state", "\(host)/a", "--json"]))
            #expect(self.activePCRBanks(report) == ["sha256", "sha384"])
            for bank in (report["pcrBanks"] as? [[String: Any]]) ?? [] where bank["algorithm"] as? String == "sha384" {
                #expect((bank["pcrs"] as? [Int]) == Array(0..<24))
            }
            let indices = self.nvIndices(report)
            #expect(indices.contains("0x01c00002"))
            #expect(!indices.contains("0x01c0000a"), "an ECC EK certificate was written: \(indices)")
            #expect(indices.contains("0x01400001") && indices.contains("0x01400002"))
            let keys = try #require(report["endorsementKeys"] as? [[String: Any]])
            #expect(keys.count == 2, "both EKs exist")
            let ecc = try #require(keys.first { $0["type"] as? String == "ecc-nist-p256" })
            #expect(ecc["certificate"] == nil)
            // The certificate that is there verifies; the missing one is no failure.
            let verified = try self.tool(["verify", "--state", "\(host)/a", "--ca", "\(host)/ca"])
            #expect(verified.status == 0, "\(verified.output)")
            #expect(verified.stdout.contains("ecc-nist-p256: ok: no EK certificate in NV"))

            // sha256 only, like Debian's swtpm_setup.conf; the default keeps libtpms' banks.
            let sha256 = try self.tool([
                "create", "--state", "\(host)/b", "--vm-id", Self.vmB, "--ca", "\(host)/ca", "--pcr-banks", "sha256",
            ])
            #expect(sha256.status == 0, "\(sha256.output)")
            let b = try self.json(try self.tool(["inspect", "--state", "\(host)/b", "--json"]))
            #expect(self.activePCRBanks(b) == ["sha256"])
            #expect(self.nvIndices(b).contains("0x01c0000a") && self.nvIndices(b).contains("0x01c00002"))
            #expect(try self.tool(["verify", "--state", "\(host)/b", "--ca", "\(host)/ca"]).status == 0)
            let defaults = try self.tool([
                "create", "--state", "\(host)/b", "--vm-id", Self.vmB, "--ca", "\(host)/ca", "--overwrite",
            ])
            #expect(defaults.status == 0, "\(defaults.output)")
            let d = try self.json(try self.tool(["inspect", "--state", "\(host)/b", "--json"]))
            #expect(Set(self.activePCRBanks(d)).isSuperset(of: ["sha256", "sha384"]), "\(self.activePCRBanks(d))")
        }
    }

    @Test func createWithoutACAMakesABlankTPMWithItsIdentity() throws {
        try withTemporaryDirectory { host in
            let created = try self.tool([
                "create", "--state", "\(host)/a", "--vm-id", Self.vmA, "--pcr-banks", "sha256",
            ])
            #expect(created.status == 0, "\(created.output)")
            let report = try self.json(try self.tool(["inspect", "--state", "\(host)/a", "--json"]))
            let identity = try #require(report["identity"] as? [String: Any])
            #expect(identity["recorded"] as? Bool == true)
            #expect(identity["vmID"] as? String == Self.vmA)
            #expect(identity["generation"] as? Int == 0)
            #expect(self.activePCRBanks(report) == ["sha256"])
            #expect(self.nvIndices(report).isEmpty, "\(self.nvIndices(report))")
            let keys = try #require(report["endorsementKeys"] as? [[String: Any]])
            #expect(keys.count == 2 && keys.allSatisfy { $0["certificate"] == nil })

            // Without any certificate, verify fails with the reason.
            try #require(try self.tool(["ca", "init", "--ca", "\(host)/ca"]).status == 0)
            let verified = try self.tool(["verify", "--state", "\(host)/a", "--ca", "\(host)/ca"])
            #expect(verified.status == 1)
            #expect(verified.stdout.contains("rsa2048: FAILED: no EK certificate in NV"), "\(verified.output)")

            // Provisioned later with the CA (--overwrite): verifies.
            let before = self.snapshot("\(host)/a")
            let refused = try self.tool(["create", "--state", "\(host)/a", "--vm-id", Self.vmA, "--ca", "\(host)/ca"])
            #expect(refused.status == 1)
            #expect(refused.stderr.contains("without --overwrite"))
            #expect(self.snapshot("\(host)/a") == before)
            let replaced = try self.tool([
                "create", "--state", "\(host)/a", "--vm-id", Self.vmA, "--ca", "\(host)/ca", "--overwrite",
            ])
            #expect(replaced.status == 0, "\(replaced.output)")
            #expect(try self.tool(["verify", "--state", "\(host)/a", "--ca", "\(host)/ca"]).status == 0)
        }
    }

    @Test func createRefusesBadBanksAndEKListsWithoutTouchingTheDisk() throws {
        try withTemporaryDirectory { host in
            try #require(try self.tool(["ca", "init", "--ca", "\(host)/ca"]).status == 0)
            let cases: [([String], String)] = [
                (["--pcr-banks", "sha256,md5", "--ca", "\(host)/ca"], "unknown value 'md5'"),
                (["--pcr-banks", "", "--ca", "\(host)/ca"], "--pcr-banks needs a comma-separated list"),
                (["--pcr-banks", "sha256,", "--ca", "\(host)/ca"], "--pcr-banks needs a comma-separated list"),
                (["--ek", "rsa,dsa", "--ca", "\(host)/ca"], "unknown value 'dsa'"),
                (["--ek", "rsa"], "--ek needs --ca"),
                (["--ca", "\(host)/no-ca"], "cannot load the CA"),
            ]
            for (arguments, message) in cases {
                let result = try self.tool(["create", "--state", "\(host)/c", "--vm-id", Self.vmA] + arguments)
                #expect(result.status != 0, "\(arguments)")
                #expect(result.stderr.contains(message), "\(arguments): \(result.output)")
                #expect(!FileManager.default.fileExists(atPath: "\(host)/c"), "\(arguments) created the directory")
            }
            // An existing TPM with a bad option: unchanged.
            try #require(try self.tool(["create", "--state", "\(host)/a", "--vm-id", Self.vmA]).status == 0)
            let before = self.snapshot("\(host)/a")
            let bad = try self.tool([
                "create", "--state", "\(host)/a", "--vm-id", Self.vmA, "--overwrite", "--pcr-banks", "sha3",
            ])
            #expect(bad.status != 0)
            #expect(self.snapshot("\(host)/a") == before)
        }
    }

    // MARK: bad input

    @Test func refusesBadInputWithAClearErrorAndChangesNothing() throws {
        try withTemporaryDirectory { host in
            try #require(try self.tool(["ca", "init", "--ca", "\(host)/ca"]).status == 0)
            try #require(try self.tool(["ca", "init", "--ca", "\(host)/other-ca"]).status == 0)
            try #require(
                try self.tool(["create", "--state", "\(host)/a", "--vm-id", Self.vmA, "--ca", "\(host)/ca"]).status
                    == 0
            )
            let a = self.snapshot("\(host)/a")

            // Missing directory.
            let missing = try self.tool(["inspect", "--state", "\(host)/nope"])
            #expect(missing.status == 1)
            #expect(missing.stderr.contains("does not exist"))
            #expect(!FileManager.default.fileExists(atPath: "\(host)/nope"))

            // Empty directory: no TPM, and no .lock left behind.
            try FileManager.default.createDirectory(atPath: "\(host)/empty", withIntermediateDirectories: true)
            let empty = try self.tool(["verify", "--state", "\(host)/empty", "--ca", "\(host)/ca"])
            #expect(empty.status == 1)
            #expect(empty.stderr.contains("holds no TPM state"))
            #expect(self.snapshot("\(host)/empty").isEmpty)

            // Wrong CA: the certificates do not chain.
            let wrongCA = try self.tool(["verify", "--state", "\(host)/a", "--ca", "\(host)/other-ca"])
            #expect(wrongCA.status == 1)
            #expect(wrongCA.stdout.contains("does not chain to the CA"))
            // No CA at all.
            let noCA = try self.tool(["verify", "--state", "\(host)/a", "--ca", "\(host)/no-ca"])
            #expect(noCA.status == 1)
            #expect(noCA.stderr.contains("cannot load the CA"))

            // Bad vm-id: nothing created.
            let badVM = try self.tool([
                "create", "--state", "\(host)/c", "--vm-id", "not/a-vm-id", "--ca", "\(host)/ca",
            ])
            #expect(badVM.status == 1)
            #expect(badVM.stderr.contains("is not a UUID"))
            #expect(!FileManager.default.fileExists(atPath: "\(host)/c"))

            // An existing TPM is not replaced without --overwrite; a clone needs a new directory.
            let exists = try self.tool(["create", "--state", "\(host)/a", "--vm-id", Self.vmB, "--ca", "\(host)/ca"])
            #expect(exists.status == 1)
            #expect(exists.stderr.contains("without --overwrite"))
            let sameVM = try self.tool([
                "clone", "--from", "\(host)/a", "--to", "\(host)/d", "--vm-id", Self.vmA, "--ca", "\(host)/ca",
            ])
            #expect(sameVM.status == 1)
            #expect(sameVM.stderr.contains("another vm-id"))
            let conflicting = try self.tool([
                "clone", "--from", "\(host)/a", "--to", "\(host)/a", "--vm-id", Self.vmB, "--ca", "\(host)/ca",
            ])
            #expect(conflicting.status != 0)
            #expect(self.snapshot("\(host)/a") == a)

            // Corrupt permanent state: reported as damaged, exit 1, nothing written.
            try FileManager.default.copyItem(atPath: "\(host)/a", toPath: "\(host)/corrupt")
            var bytes = try #require(fileBytes("\(host)/corrupt/tpm2-00.permall"))
            bytes[bytes.count / 2] ^= 0x01
            try Data(bytes).write(to: URL(fileURLWithPath: "\(host)/corrupt/tpm2-00.permall"))
            let corrupt = self.snapshot("\(host)/corrupt")
            let inspected = try self.tool(["inspect", "--state", "\(host)/corrupt"])
            #expect(inspected.status == 1)
            #expect(inspected.stdout.contains("tpm2-00.permall"))
            #expect(inspected.stdout.contains("damaged"))
            let verified = try self.tool(["verify", "--state", "\(host)/corrupt", "--ca", "\(host)/ca"])
            #expect(verified.status == 1)
            #expect(verified.stderr.contains("SHA-256 mismatch"), "\(verified.output)")
            let rekeyed = try self.tool(["rekey", "--state", "\(host)/corrupt", "--ca", "\(host)/ca"])
            #expect(rekeyed.status == 1)
            #expect(self.snapshot("\(host)/corrupt") == corrupt)

            // Unknown lineage format and vm-id.
            #expect(try self.tool(["lineage", "--registry", "\(host)/r.sqlite", "--format", "png"]).status == 64)
            let noRegistry = try self.tool(["lineage", "--registry", "\(host)/r.sqlite"])
            #expect(noRegistry.status == 1)
            #expect(!FileManager.default.fileExists(atPath: "\(host)/r.sqlite"))
        }
    }

    /// Root working on a directory the emulator's user owns (libvirt's tss-owned `tpm2/`): the files it writes
    /// go back to that user, through descriptors (a symbolic link planted in the directory is not followed).
    static var rootWithTSSUser: Bool { getuid() == 0 && (try? runCommand("id", ["-u", "tss"]))?.status == 0 }

    @Test(.enabled(if: Self.rootWithTSSUser))
    func rootsRekeyLeavesTheFilesToTheDirectorysOwner() throws {
        try withTemporaryDirectory { host in
            let state = "\(host)/tpm2"
            try #require(try self.tool(["ca", "init", "--ca", "\(host)/ca"]).status == 0)
            try #require(
                try self.tool(["create", "--state", state, "--vm-id", Self.vmA, "--ca", "\(host)/ca"]).status == 0
            )
            #expect(try runCommand("chown", ["-R", "tss:tss", state]).status == 0)
            try FileManager.default.createSymbolicLink(
                atPath: "\(state)/planted",
                withDestinationPath: "\(host)/ca/ca.pem"
            )
            let rekey = try self.tool(["rekey", "--state", state, "--ca", "\(host)/ca"])
            #expect(rekey.status == 0, "\(rekey.output)")
            for name in try FileManager.default.contentsOfDirectory(atPath: state) where name != "planted" {
                let attributes = try FileManager.default.attributesOfItem(atPath: "\(state)/\(name)")
                #expect(attributes[.ownerAccountName] as? String == "tss", "\(name) is not tss's")
            }
            let target = try FileManager.default.attributesOfItem(atPath: "\(host)/ca/ca.pem")
            #expect(target[.ownerAccountName] as? String == "root")
        }
    }

}
