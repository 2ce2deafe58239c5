import Foundation
import TPMWire
import TestSupport
import Testing

/// Three hosts on this machine (each a directory with its own CA and host key) sharing one real PostgreSQL
/// registry, driving vtpmd over its control channel as QEMU's savevm, loadvm and migration do.
@Suite(.serialized, .enabled(if: PostgresServer.isAvailable))
struct ClusterRegistryWireTests {
    typealias Node = CloneRekeyWireTests.Node

    /// The three hosts' directories.
    static func hosts(_ root: String) throws -> [String] {
        try (1...3).map { n in
            let host = "\(root)/host\(n)"
            try FileManager.default.createDirectory(atPath: host, withIntermediateDirectories: true)
            return host
        }
    }

    @Test func migrationIsAMoveAStaleSnapshotOnAThirdHostARollbackAndACopyAClone() throws {
        let server = try PostgresServer()
        let url = server.url + "&connect_timeout=2"
        try withTemporaryDirectory { root in
            let hosts = try Self.hosts(root)
            let vm = "c1c1c1c1-0000-4000-8000-0000000000c1"
            let a1 = try Node(hosts[0], vmID: vm, name: "a", registry: url)
            try a1.start()
            let ek = try a1.ekPublic(root)
            let snapshot = try a1.blobs()
            _ = try a1.tool("tpm2_getrandom", ["8"])
            // Migration host 1 → host 2: the same VM, its newest state.
            let outgoing = try a1.blobs()
            let a2 = try Node(hosts[1], vmID: vm, name: "a", registry: url)
            #expect(try a2.load(outgoing) == 0)
            #expect(a2.logText.contains("decision=move"), "\(a2.logText)")
            #expect(try a2.ekPublic(root) == ek)
            // Host 1's older snapshot loaded on host 3: the cluster registry saw newer states.
            let a3 = try Node(hosts[2], vmID: vm, name: "a", registry: url)
            #expect(try a3.load(snapshot) == 0)
            #expect(a3.logText.contains("decision=rollback"), "\(a3.logText)")
            #expect(try a3.ekPublic(root) != ek)
            // A's state started on host 2 as another VM: a clone.
            let b = try Node(hosts[1], vmID: "c2c2c2c2-0000-4000-8000-0000000000c2", name: "b", registry: url)
            #expect(try b.load(try a2.blobs()) == 0)
            #expect(b.logText.contains("decision=clone"), "\(b.logText)")
            // The whole cluster's lineage, and every host registered.
            let lineage = try runCommand(Binaries.vtpmState, ["lineage", "--registry", url, "--format", "json"])
            #expect(lineage.status == 0, "\(lineage.output)")
            #expect(lineage.stdout.contains("c2c2c2c2") && lineage.stdout.contains("rollback"), "\(lineage.stdout)")
            let list = try runCommand(Binaries.vtpmState, ["hosts", "list", "--registry", url])
            #expect(list.status == 0 && list.stdout.split(separator: "\n").count == 4, "\(list.output)")
        }
    }

    /// The same three with a SQLite registry per host (and the host key file copied to every host, the only
    /// way their claims verify there): the migration is a move and the copy a clone (the claim names another VM,
    /// which needs no history), but the stale snapshot on host 3 is taken for a move: host 3's registry never
    /// saw the newer states.
    @Test func perHostRegistriesMissTheCrossHostRollback() throws {
        try withTemporaryDirectory { root in
            let hosts = try Self.hosts(root)
            let vm = "c3c3c3c3-0000-4000-8000-0000000000c3"
            let a1 = try Node(hosts[0], vmID: vm, name: "a")
            try a1.start()
            for host in hosts.dropFirst() {
                #expect(try runCommand("cp", ["-p", "\(hosts[0])/host.key", "\(host)/host.key"]).status == 0)
            }
            let ek = try a1.ekPublic(root)
            let snapshot = try a1.blobs()
            _ = try a1.tool("tpm2_getrandom", ["8"])
            let a2 = try Node(hosts[1], vmID: vm, name: "a")
            #expect(try a2.load(try a1.blobs()) == 0)
            #expect(a2.logText.contains("decision=move"), "\(a2.logText)")
            let a3 = try Node(hosts[2], vmID: vm, name: "a")
            #expect(try a3.load(snapshot) == 0)
            #expect(a3.logText.contains("decision=move"), "\(a3.logText)")
            #expect(try a3.ekPublic(root) == ek)
            let b = try Node(hosts[1], vmID: "c6c6c6c6-0000-4000-8000-0000000000c6", name: "b")
            #expect(try b.load(try a2.blobs()) == 0)
            #expect(b.logText.contains("decision=clone"), "\(b.logText)")
        }
    }

    @Test func aHostOutsideTheClusterOrARevokedOneCannotPassBlobsOffAsAMove() throws {
        let server = try PostgresServer()
        let url = server.url + "&connect_timeout=2"
        try withTemporaryDirectory { root in
            let hosts = try Self.hosts(root)
            let vm = "c4c4c4c4-0000-4000-8000-0000000000c4"
            let a1 = try Node(hosts[0], vmID: vm, name: "a", registry: url)
            try a1.start()
            // An outsider (its own SQLite and key) runs a TPM under the cluster VM's vm-id and hands out newer
            // blobs: signed by a host the cluster registry does not know.
            let outsider = try Node(hosts[2], vmID: vm, name: "x")
            try outsider.start()
            let forged = try outsider.blobs()
            let a2 = try Node(hosts[1], vmID: vm, name: "a", registry: url)
            #expect(try a2.load(forged) == ControlResult.decryptError)
            #expect(a2.logText.contains("does not know"), "\(a2.logText)")
            // Host 1 is revoked: its blobs are refused from then on, with the reason.
            let blobs = try a1.blobs()
            let list = try runCommand(Binaries.vtpmState, ["hosts", "list", "--registry", url, "--json"])
            let host1 =
                try #require(
                    try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as? [[String: Any]]
                ).first?["hostID"] as? String
            let revoke = try runCommand(
                Binaries.vtpmState,
                ["hosts", "revoke", "--registry", url, try #require(host1), "--reason", "stolen disk"]
            )
            #expect(revoke.status == 0, "\(revoke.output)")
            #expect(try a2.load(blobs) == ControlResult.decryptError)
            #expect(a2.logText.contains("revoked: stolen disk"), "\(a2.logText)")
        }
    }

    /// PostgreSQL stops while a guest's TPM runs: TPM commands and savevm go on, a loadvm is refused (QEMU can
    /// retry); started again, the registry catches up with what happened meanwhile, so an older snapshot is
    /// still a rollback.
    @Test func anOutageNeverStallsTheTPMAndLosesNothing() throws {
        let server = try PostgresServer()
        let url = server.url + "&connect_timeout=1"
        try withTemporaryDirectory { root in
            let hosts = try Self.hosts(root)
            let vm = "c5c5c5c5-0000-4000-8000-0000000000c5"
            let a = try Node(hosts[0], vmID: vm, name: "a", registry: url)
            try a.start()
            _ = try a.blobs()
            try server.stop()
            var slowest = Duration.zero
            let during: [[UInt8]]
            do {
                let data = try DataClient(tcpPort: a.port)
                for _ in 0..<20 {
                    let started = ContinuousClock.now
                    let reply = try data.transmit(TPMCommands.getRandom(16))
                    slowest = max(slowest, ContinuousClock.now - started)
                    #expect(TPMFrame.responseCode(reply) == 0)
                }
                during = try a.blobs()
                let started = ContinuousClock.now
                #expect(TPMFrame.responseCode(try data.transmit(TPMCommands.getRandom(16))) == 0)
                slowest = max(slowest, ContinuousClock.now - started)
            }
            // Nothing waits on the registry's timeout (1 s).
            #expect(slowest < .milliseconds(500), "slowest GetRandom during the outage: \(slowest)")
            // A loadvm needs a decision, which needs the registry: refused, nothing changed.
            #expect(try a.load(during) == TPMFrame.rcFailure)
            #expect(a.logText.contains("registry is unavailable"), "\(a.logText)")
            try server.start()
            // Back: the writes queued meanwhile (checkpoint 2 handed out during the outage, and that the TPM ran
            // after checkpoints 1 and 2) reach the registry without anyone asking.
            let deadline = ContinuousClock.now + .seconds(20)
            var ran = ""
            while ContinuousClock.now < deadline {
                ran = try server.sql(
                    "SELECT string_agg(checkpoint || ':' || ran_after, ',' ORDER BY checkpoint) FROM checkpoint "
                        + "WHERE vm_id = '\(vm)'"
                )
                if ran == "1:true,2:true" { break }
                Thread.sleep(forTimeInterval: 0.2)
            }
            #expect(ran == "1:true,2:true")
            #expect(a.logText.contains("available again"), "\(a.logText)")
            // The TPM the refused loadvm stopped starts again from its state at rest.
            #expect(try a.control().result(.initialize(flags: 0)) == 0)
            #expect(TPMFrame.responseCode(try DataClient(tcpPort: a.port).transmit(TPMCommands.startup())) == 0)
            let ek = try a.ekPublic(root)
            let b = try Node(hosts[1], vmID: vm, name: "a", registry: url)
            #expect(try b.load(try a.blobs()) == 0)
            #expect(b.logText.contains("decision=move"), "\(b.logText)")
            #expect(try b.ekPublic(root) == ek)
            let c = try Node(hosts[2], vmID: vm, name: "a", registry: url)
            #expect(try c.load(during) == 0)
            #expect(c.logText.contains("decision=rollback"), "\(c.logText)")
        }
    }
}
