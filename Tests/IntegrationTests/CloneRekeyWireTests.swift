import EndorsementCA
import Foundation
import Registry
import StateStore
import TPMWire
import TestSupport
import Testing
import VMIdentity

/// Clone-rekey over the control channel, the way QEMU drives it (GET_STATEBLOB on the source,
/// STOP + SET_STATEBLOB + INIT on the destination), with real vtpmd processes, tpm2-tools and openssl.
@Suite(.serialized)
struct CloneRekeyWireTests {
    /// A vtpmd with clone-rekey on, TCP data and control (so tpm2-tools' swtpm TCTI works).
    final class Node: Sendable {
        let vmID: String
        let state: String
        let port: UInt16
        let daemon: Daemon
        let log: String

        /// A vtpmd of `host` (a directory: its CA, host key and, unless `registry` names another, its SQLite registry).
        init(
            _ host: String,
            vmID: String,
            name: String,
            extra: [String] = [],
            withCA: Bool = true,
            registry: String? = nil,
            niceness: Int = 0,
            environment: [String: String] = [:]
        ) throws {
            self.vmID = vmID
            self.state = "\(host)/\(name)"
            self.log = "\(host)/\(name).log"
            try FileManager.default.createDirectory(atPath: self.state, withIntermediateDirectories: true)
            self.port = try freePortPair()
            self.daemon = try Daemon(
                niceness == 0 ? Binaries.vtpmd : "nice",
                (niceness == 0 ? [] : ["-n", "\(niceness)", Binaries.vtpmd]) + [
                    "socket", "--tpm2", "--tpmstate", "dir=\(self.state)", "--server", "type=tcp,port=\(self.port)",
                    "--ctrl", "type=tcp,port=\(self.port + 1)", "--vm-id", vmID,
                    "--registry", registry ?? "\(host)/registry.sqlite", "--host-key", "\(host)/host.key",
                    "--log", "file=\(self.log),level=2",
                ] + (withCA ? ["--ca", "\(host)/ca"] : []) + extra,
                waitForPort: self.port,
                environment: environment
            )
        }

        func control() throws -> ControlClient { try ControlClient(tcpPort: self.port + 1) }
        var env: [String: String] { ["TPM2TOOLS_TCTI": "swtpm:host=127.0.0.1,port=\(self.port)"] }
        var logText: String { (try? String(contentsOfFile: self.log, encoding: .utf8)) ?? "" }

        func tool(_ name: String, _ args: [String]) throws -> CommandResult {
            let r = try runCommand(name, args, environment: self.env)
            #expect(r.status == 0, "\(name) \(args): \(r.output)")
            return r
        }

        /// The RSA EK's public area, as tpm2_createek writes it.
        func ekPublic(_ work: String) throws -> [UInt8] {
            _ = try self.tool("tpm2_createek", ["-c", "\(work)/ek.ctx", "-G", "rsa", "-u", "\(work)/ek.pub"])
            _ = try self.tool("tpm2_flushcontext", ["-t"])
            return fileBytes("\(work)/ek.pub") ?? []
        }

        func nv(_ index: String, _ work: String) throws -> [UInt8] {
            let r = try runCommand("tpm2_nvread", [index, "-o", "\(work)/nv.bin"], environment: self.env)
            guard r.status == 0 else { return [] }
            return fileBytes("\(work)/nv.bin") ?? []
        }

        func start() throws {
            let c = try self.control()
            try #require(try c.result(.initialize(flags: 0)) == 0)
            let d = try DataClient(tcpPort: self.port)
            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.startup())) == 0)
        }

        func blobs() throws -> [[UInt8]] {
            let c = try self.control()
            return try [1, 2].map { (type: UInt32) in
                let reply = try c.exchange(
                    ControlRequest.getStateBlob(flags: 1, type: type, offset: 0).encoded,
                    replySize: 600_000,
                    timeout: 500
                )
                try #require(reply.count > 16 && reply.readBigEndianUInt32(at: 0) == 0)
                return Array(reply[16...])
            }
        }

        /// loadvm: STOP, SET_STATEBLOB ×2, INIT(delete volatile). Returns the INIT result (or the SET error).
        func load(_ blobs: [[UInt8]]) throws -> UInt32 {
            let c = try self.control()
            #expect(try c.result(.stop) == 0)
            for (i, blob) in blobs.enumerated() {
                var w = ByteWriter()
                w.write(ControlCode.setStateBlob.rawValue)
                w.write(UInt32(0))
                w.write(UInt32(i + 1))
                w.write(UInt32(blob.count))
                w.write(bytes: blob)
                let rc = try c.exchange(w.bytes, replySize: 4).readBigEndianUInt32(at: 0)
                if rc != 0 { return rc }
            }
            return try c.result(.initialize(flags: 1))
        }
    }

    @Test func cloneGetsANewCertifiedEKAndKeepsTheStorageHierarchy() throws {
        try withTemporaryDirectory { host in
            let a = try Node(host, vmID: "0a0a0a0a-0000-4000-8000-00000000000a", name: "a")
            try a.start()
            let ekA = try a.ekPublic(host)
            _ = try a.tool("tpm2_createprimary", ["-C", "o", "-c", "\(host)/srk.ctx", "-Q"])
            try Data("sealed under A".utf8).write(to: URL(fileURLWithPath: "\(host)/secret"))
            _ = try a.tool(
                "tpm2_create",
                ["-C", "\(host)/srk.ctx", "-u", "\(host)/k.pub", "-r", "\(host)/k.priv", "-i", "\(host)/secret", "-Q"]
            )
            _ = try a.tool("tpm2_flushcontext", ["-t"])
            let blobs = try a.blobs()

            let b = try Node(host, vmID: "0b0b0b0b-0000-4000-8000-00000000000b", name: "b")
            try b.start()
            // (STOP itself writes: the automatic TPM2_Shutdown.)
            #expect(try b.control().result(.stop) == 0)
            let stateBefore = try BadStateTests.snapshot(b.state)
            // Tampered, truncated and foreign-key blobs are refused before anything happens.
            var flipped = blobs[0]
            flipped[flipped.count / 2] ^= 0x40
            #expect(try b.load([flipped, blobs[1]]) == ControlResult.decryptError)
            #expect(try b.load([Array(blobs[0].dropLast(20)), blobs[1]]) != 0)
            #expect(try BadStateTests.snapshot(b.state) == stateBefore)

            let started = ContinuousClock.now
            #expect(try b.load(blobs) == 0)
            let rekeyTime = ContinuousClock.now - started
            print("CloneRekeyWireTests: loadvm with rekey took \(rekeyTime)")
            #expect(b.logText.contains("decision=clone"), "\(b.logText)")
            let ekB = try b.ekPublic(host)
            #expect(!ekB.isEmpty && ekB != ekA)
            // The storage hierarchy is A's: the object sealed on A unseals on B.
            _ = try b.tool("tpm2_createprimary", ["-C", "o", "-c", "\(host)/srk.ctx", "-Q"])
            _ = try b.tool(
                "tpm2_load",
                ["-C", "\(host)/srk.ctx", "-u", "\(host)/k.pub", "-r", "\(host)/k.priv", "-c", "\(host)/k.ctx", "-Q"]
            )
            _ = try b.tool("tpm2_flushcontext", ["-t"])
            #expect(try b.tool("tpm2_unseal", ["-c", "\(host)/k.ctx"]).stdout == "sealed under A")
            _ = try b.tool("tpm2_flushcontext", ["-t"])
            // The EK certificate names B, its parent A, holds B's EK and chains to the CA.
            let certificate = try b.nv("0x1c00002", host)
            let info = try EKCertificateInfo(der: certificate)
            #expect(info.vmID?.description == b.vmID && info.generation == 1)
            #expect(info.parentVMID?.description == a.vmID)
            #expect(try info.publicKey == EKPublicKey(tpm2bPublic: ekB))
            try Data(certificate).write(to: URL(fileURLWithPath: "\(host)/ek.der"))
            _ = try runCommand(
                "openssl",
                ["x509", "-inform", "der", "-in", "\(host)/ek.der", "-out", "\(host)/ek.pem"]
            )
            let verify = try runCommand("openssl", ["verify", "-CAfile", "\(host)/ca/ca.pem", "\(host)/ek.pem"])
            #expect(verify.stdout.contains("OK"), "\(verify.output)")
            // The guest-readable counter went up and the history index exists.
            let counter = try b.nv("0x1400001", host)
            #expect(counter.count == 8 && counter.last ?? 0 >= 1)
            #expect(try b.nv("0x1400002", host).count == 32)
            // The state directory records B's new generation and its parent.
            let marker = try #require(fileBytes("\(b.state)/\(StateDirectory.instanceName)"))
            #expect(!marker.isEmpty)

            // A itself is untouched: same EK.
            #expect(try a.ekPublic(host) == ekA)
        }
    }

    @Test func migrationKeepsTheIdentityAndRollbackRekeys() throws {
        try withTemporaryDirectory { host in
            let vm = "0c0c0c0c-0000-4000-8000-00000000000c"
            let a = try Node(host, vmID: vm, name: "a")
            try a.start()
            let ek = try a.ekPublic(host)
            // Migration: the blobs go to a fresh vtpmd with the same vm-id, nothing ran since.
            let outgoing = try a.blobs()
            let a2 = try Node(host, vmID: vm, name: "a2")
            #expect(try a2.load(outgoing) == 0)
            #expect(a2.logText.contains("decision=move"), "\(a2.logText)")
            #expect(try a2.ekPublic(host) == ek)
            // Rollback: a snapshot, the TPM runs on, the snapshot is loaded again.
            let snapshot = try a2.blobs()
            _ = try a2.tool("tpm2_getrandom", ["8"])
            #expect(try a2.load(snapshot) == 0)
            #expect(a2.logText.contains("decision=rollback"), "\(a2.logText)")
            #expect(try a2.ekPublic(host) != ek)
        }
    }

    /// A state that migrated into a fresh directory (its writes there start from nothing) is this VM's current
    /// state at the next start, although the registry saw the source commit further: not a rollback.
    @Test func aMigratedStateRestartsAsTheCurrentOne() throws {
        try withTemporaryDirectory { host in
            let vm = "0c0c0c0c-0000-4000-8000-0000000000c1"
            let a = try Node(host, vmID: vm, name: "a")
            try a.start()
            _ = try a.tool("tpm2_nvdefine", ["0x1500016", "-C", "o", "-s", "8"])
            let ek = try a.ekPublic(host)
            let outgoing = try a.blobs()
            #expect(try a.control().result(.shutdown) == 0)
            #expect(a.daemon.waitForExit() == 0)
            let b = try Node(host, vmID: vm, name: "b")
            #expect(try b.load(outgoing) == 0)
            #expect(b.logText.contains("decision=move"), "\(b.logText)")
            #expect(try b.control().result(.shutdown) == 0)
            #expect(b.daemon.waitForExit() == 0)
            let again = try Node(host, vmID: vm, name: "b")
            try again.start()
            #expect(!again.logText.contains("decision=rollback"), "\(again.logText)")
            #expect(try again.ekPublic(host) == ek)
        }
    }

    @Test func rollbackKeepPolicyKeepsTheEK() throws {
        try withTemporaryDirectory { host in
            let a = try Node(
                host,
                vmID: "0d0d0d0d-0000-4000-8000-00000000000d",
                name: "a",
                extra: ["--on-rollback", "keep"]
            )
            try a.start()
            let ek = try a.ekPublic(host)
            let snapshot = try a.blobs()
            _ = try a.tool("tpm2_getrandom", ["8"])
            #expect(try a.load(snapshot) == 0)
            #expect(a.logText.contains("decision=rollback"))
            #expect(try a.ekPublic(host) == ek)
        }
    }

    @Test func aNewTPMIsProvisionedAndACopiedDirectoryIsRekeyedAtStartup() throws {
        try withTemporaryDirectory { host in
            let a = try Node(host, vmID: "01010101-0000-4000-8000-000000000001", name: "a")
            try a.start()
            #expect(a.logText.contains("decision=manufacture"), "\(a.logText)")
            let ekA = try a.ekPublic(host)
            let certA = try EKCertificateInfo(der: try a.nv("0x1c00002", host))
            #expect(certA.vmID?.description == a.vmID && certA.generation == 0)
            #expect(try certA.publicKey == EKPublicKey(tpm2bPublic: ekA))
            #expect(try !a.nv("0x1c0000a", host).isEmpty)
            let counterA = try a.nv("0x1400001", host)
            #expect(counterA.count == 8)
            #expect(try runCommand("swtpm_ioctl", ["--tcp", "127.0.0.1:\(a.port + 1)", "-s"]).status == 0)
            _ = a.daemon.waitForExit()

            // virt-clone / cp -a of the state directory, started with another vm-id.
            let copy = "\(host)/b"
            #expect(try runCommand("cp", ["-a", a.state, copy]).status == 0)
            let sourceBefore = try BadStateTests.snapshot(a.state)
            let b = try Node(host, vmID: "02020202-0000-4000-8000-000000000002", name: "b")
            try b.start()
            #expect(b.logText.contains("decision=clone"), "\(b.logText)")
            let ekB = try b.ekPublic(host)
            #expect(ekB != ekA)
            let certB = try EKCertificateInfo(der: try b.nv("0x1c00002", host))
            #expect(
                certB.vmID?.description == b.vmID && certB.parentVMID?.description == a.vmID
            )
            #expect(try certB.publicKey == EKPublicKey(tpm2bPublic: ekB))
            let counterB = try b.nv("0x1400001", host)
            #expect(counterB.count == 8 && counterB.hexString > counterA.hexString)
            #expect(try BadStateTests.snapshot(a.state) == sourceBefore)
        }
    }

    @Test func cloneOfACloneAndTwoClonesOfOneSnapshotAreAllDistinct() throws {
        try withTemporaryDirectory { host in
            let a = try Node(host, vmID: "03030303-0000-4000-8000-000000000003", name: "a")
            try a.start()
            let ekA = try a.ekPublic(host)
            let snapshot = try a.blobs()
            let b = try Node(host, vmID: "04040404-0000-4000-8000-000000000004", name: "b")
            let c = try Node(host, vmID: "05050505-0000-4000-8000-000000000005", name: "c")
            #expect(try b.load(snapshot) == 0)
            #expect(try c.load(snapshot) == 0)
            let ekB = try b.ekPublic(host)
            let ekC = try c.ekPublic(host)
            // A clone of the clone B.
            let d = try Node(host, vmID: "06060606-0000-4000-8000-000000000006", name: "d")
            #expect(try d.load(try b.blobs()) == 0)
            let ekD = try d.ekPublic(host)
            #expect(Set([ekA, ekB, ekC, ekD]).count == 4)
            // The registry knows the parents.
            let registry = try RegistryDatabase(sqlitePath: "\(host)/registry.sqlite")
            defer { try? registry.close() }
            func parent(_ node: Node) throws -> String? {
                try registry.currentGeneration(vmID: try #require(VMID(node.vmID)))?.parent?.vmID.description
            }
            #expect(try parent(b) == a.vmID && parent(c) == a.vmID && parent(d) == b.vmID)
            let tree = try registry.lineageTree().renderText()
            for node in [a, b, c, d] { #expect(tree.contains(node.vmID), "\(tree)") }
        }
    }

    @Test(arguments: ["adopt", "rekey"])
    func swtpmStateIsAdoptedOrRekeyed(policy: String) throws {
        try withTemporaryDirectory { host in
            let state = "\(host)/a"
            try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
            let setup = try runCommand(
                "swtpm_setup",
                ["--tpm2", "--tpmstate", state, "--create-ek-cert", "--overwrite"]
            )
            try #require(setup.status == 0, "\(setup.output)")
            let port = try freePortPair()
            let swtpm = try Daemon(
                "swtpm",
                [
                    "socket", "--tpm2", "--tpmstate", "dir=\(state)", "--server", "type=tcp,port=\(port)",
                    "--ctrl", "type=tcp,port=\(port + 1)", "--flags", "not-need-init,startup-clear",
                ],
                waitForPort: port
            )
            let env = ["TPM2TOOLS_TCTI": "swtpm:host=127.0.0.1,port=\(port)"]
            #expect(
                try runCommand(
                    "tpm2_createek",
                    ["-c", "\(host)/ek.ctx", "-G", "rsa", "-u", "\(host)/ek0.pub"],
                    environment: env
                )
                .status == 0
            )
            _ = try runCommand("swtpm_ioctl", ["--tcp", "127.0.0.1:\(port + 1)", "-s"])
            _ = swtpm.waitForExit()
            let ekSwtpm = try #require(fileBytes("\(host)/ek0.pub"))

            let node = try Node(
                host,
                vmID: "07070707-0000-4000-8000-000000000007",
                name: "a",
                extra: ["--foreign-state", policy]
            )
            try node.start()
            #expect(
                node.logText.contains("decision=\(policy == "adopt" ? "adopt" : "rekey-foreign")"),
                "\(node.logText)"
            )
            let ek = try node.ekPublic(host)
            if policy == "adopt" {
                #expect(ek == ekSwtpm)
            } else {
                #expect(ek != ekSwtpm)
                let info = try EKCertificateInfo(der: try node.nv("0x1c00002", host))
                #expect(info.vmID?.description == node.vmID)
            }
        }
    }

    @Test func withoutACATheTPMIsBlankAndARekeyLeavesNoStaleCertificate() throws {
        try withTemporaryDirectory { host in
            let a = try Node(host, vmID: "08080808-0000-4000-8000-000000000008", name: "a", withCA: false)
            try a.start()
            #expect(try a.nv("0x1c00002", host).isEmpty)
            let ekA = try a.ekPublic(host)
            let b = try Node(host, vmID: "09090909-0000-4000-8000-000000000009", name: "b", withCA: false)
            #expect(try b.load(try a.blobs()) == 0)
            #expect(b.logText.contains("decision=clone"))
            #expect(try b.ekPublic(host) != ekA)
            #expect(try b.nv("0x1c00002", host).isEmpty)
            #expect(try b.nv("0x1400001", host).count == 8)
            #expect(!FileManager.default.fileExists(atPath: "\(host)/ca"))
        }
    }

    @Test func reloadingAnUntouchedSnapshotIsAMoveAndGenerationsFollowTheState() throws {
        try withTemporaryDirectory { host in
            let vm = "10101010-0000-4000-8000-000000000010"
            let a = try Node(host, vmID: vm, name: "a")
            try a.start()
            let ek0 = try a.ekPublic(host)
            // Snapshot, nothing runs, revert: the same state, no rekey.
            let untouched = try a.blobs()
            #expect(try a.load(untouched) == 0)
            #expect(a.logText.contains("decision=move") && !a.logText.contains("decision=rollback"), "\(a.logText)")
            #expect(try a.ekPublic(host) == ek0)
            // A rollback makes generation 1; the state then migrates to a fresh process, whose claims
            // must say generation 1: reloading its own fresh snapshot is again a move.
            let snapshot = try a.blobs()
            _ = try a.tool("tpm2_getrandom", ["8"])
            #expect(try a.load(snapshot) == 0)
            #expect(a.logText.contains("decision=rollback"))
            let ek1 = try a.ekPublic(host)
            let a2 = try Node(host, vmID: vm, name: "a2")
            #expect(try a2.load(try a.blobs()) == 0)
            let own = try a2.blobs()
            #expect(try a2.load(own) == 0)
            #expect(!a2.logText.contains("decision=rollback"), "\(a2.logText)")
            #expect(try a2.ekPublic(host) == ek1)
        }
    }

    @Test func aRollbackAcrossProcessRestartsIsDetected() throws {
        try withTemporaryDirectory { host in
            let vm = "11111111-0000-4000-8000-000000000011"
            let a = try Node(host, vmID: vm, name: "a")
            try a.start()
            let s1 = try a.blobs()
            #expect(try runCommand("swtpm_ioctl", ["--tcp", "127.0.0.1:\(a.port + 1)", "-s"]).status == 0)
            _ = a.daemon.waitForExit()
            // Restored in a new process, the TPM runs, a new snapshot, then S1 again.
            let b = try Node(host, vmID: vm, name: "b")
            #expect(try b.load(s1) == 0)
            _ = try b.tool("tpm2_getrandom", ["8"])
            _ = try b.blobs()
            #expect(try b.load(s1) == 0)
            #expect(b.logText.contains("decision=rollback"), "\(b.logText)")
        }
    }

    @Test func aCopiedDirectoryWithAStoredVolatileStateStillBoots() throws {
        try withTemporaryDirectory { host in
            let a = try Node(host, vmID: "12121212-0000-4000-8000-000000000012", name: "a")
            try a.start()
            #expect(try a.control().result(.storeVolatile) == 0)
            a.daemon.stop()
            #expect(try runCommand("cp", ["-a", a.state, "\(host)/b"]).status == 0)
            let b = try Node(host, vmID: "13131313-0000-4000-8000-000000000013", name: "b")
            let c = try b.control()
            #expect(try c.result(.initialize(flags: 0)) == 0)
            #expect(b.logText.contains("decision=clone"))
            #expect(!FileManager.default.fileExists(atPath: "\(b.state)/tpm2-00.volatilestate"))
            // A power cycle later the TPM still comes up.
            #expect(try c.result(.initialize(flags: 0)) == 0)
            let d = try DataClient(tcpPort: b.port)
            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.startup())) == 0)
        }
    }

    @Test func blobsFromAHostTheRegistryDoesNotKnowAreRefused() throws {
        try withTemporaryDirectory { host in
            let a = try Node(host, vmID: "0e0e0e0e-0000-4000-8000-00000000000e", name: "a")
            try a.start()
            let blobs = try a.blobs()
            try FileManager.default.createDirectory(atPath: "\(host)/other", withIntermediateDirectories: true)
            let b = try Node("\(host)/other", vmID: "0f0f0f0f-0000-4000-8000-00000000000f", name: "b")
            #expect(try b.load(blobs) == ControlResult.decryptError)
            // Another host key, another registry: the signer is a host this registry has never heard of.
            #expect(b.logText.contains("is signed by host") && b.logText.contains("does not know"), "\(b.logText)")
        }
    }
}
