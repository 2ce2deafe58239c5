import Foundation
import TestSupport
import Testing

/// QEMU guests on three hosts of one cluster (each host a directory with its own CA and host key, one real
/// PostgreSQL registry): a live migration host 1 → host 2 keeps the identity (an AK made before still
/// signs); host 1's older snapshot loaded on host 3 is a rollback (new EK, the AK gone); A's disk copied and
/// started on host 2 as B is a clone.
@Suite(.serialized, .enabled(if: GuestImage.hostCanRunGuests && PostgresServer.isAvailable))
struct GuestClusterTests {
    static let vmA = "a7a7a7a7-0000-4000-8000-0000000000a7"
    static let vmB = "b7b7b7b7-0000-4000-8000-0000000000b7"
    static let signWithAK = "cd /data && echo hello > m && tpm2_sign -c 0x81010002 -g sha256 -s rsassa -o sig m"

    /// VM `vm` on `host` (its CA and host key, the cluster's `registry`): a vtpmd in `directory`, then QEMU on
    /// `disk` with `extra` arguments.
    static func start(
        _ directory: String,
        host: String,
        vm: String,
        registry: String,
        disk: String,
        extra: [String] = []
    ) throws -> (backend: TPMBackendProcess, guest: QEMUGuest) {
        let backend = try TPMBackendProcess(
            directory: directory,
            extraArguments: GuestCloneTests.identityArguments(host, vm: vm, registry: registry)
        )
        let guest = try QEMUGuest.launch(
            .init(
                directory: directory,
                image: try GuestImage.locate(),
                tpmSocket: backend.controlSocket,
                disk: disk,
                extraArguments: extra
            )
        )
        return (backend, guest)
    }

    @Test(.timeLimit(.minutes(10)))
    func migrationKeepsTheIdentityAStaleSnapshotElsewhereIsARollbackACopyAClone() throws {
        let server = try PostgresServer()
        let registry = server.url + "&connect_timeout=2"
        let root = "/tmp/vtpm-cluster-\(UInt32.random(in: 0...UInt32.max))"
        let hosts = (1...3).map { "\(root)/host\($0)" }
        for host in hosts {
            try FileManager.default.createDirectory(atPath: "\(host)/a", withIntermediateDirectories: true)
        }
        defer { try? FileManager.default.removeItem(atPath: root) }

        // VM A on host 1: an EK, an AK under it (persistent), a snapshot s1, then the TPM runs on.
        let diskA = "\(root)/disk-a.qcow2"
        try QEMUGuest.createDisk(at: diskA)
        let (backend1, a1) = try Self.start(
            "\(hosts[0])/a",
            host: hosts[0],
            vm: Self.vmA,
            registry: registry,
            disk: diskA
        )
        try a1.waitForReady()
        try a1.check(GuestCommands.createEK)
        let ekA = try a1.check("sha256sum /data/ek.pub | cut -c1-64")
        try a1.check(GuestCommands.persistAK, timeout: .seconds(120))
        try a1.check("sync")
        try a1.savevm("s1")
        try a1.check("tpm2_getrandom 8 > /dev/null")

        // Live migration to host 2 (shared storage: the same disk).
        let (backend2, a2) = try Self.start(
            "\(hosts[1])/a",
            host: hosts[1],
            vm: Self.vmA,
            registry: registry,
            disk: diskA,
            extra: ["-incoming", "unix:\(root)/migrate.sock"]
        )
        try a1.migrate(to: "unix:\(root)/migrate.sock")
        try a2.waitForRunState("running")
        try a2.waitForShell()
        #expect(backend2.log.contains("decision=move"), "\(backend2.log)")
        #expect(try a2.run(Self.signWithAK, timeout: .seconds(120)).status == 0)
        try a2.check("cd /data && tpm2_createek -c ek2.ctx -G rsa -u ek2.pub -Q && tpm2_flushcontext -t")
        #expect(try a2.check("sha256sum /data/ek2.pub | cut -c1-64") == ekA)
        try a2.check("sync")
        #expect(try a2.quit() == 0)
        #expect(try backend2.waitForExit() == 0)
        _ = try? a1.quit()
        _ = try? backend1.waitForExit()

        // Host 1's snapshot s1 loaded on host 3 (a copy of the disk): the cluster saw newer states of A.
        let diskA3 = "\(hosts[2])/a/disk.qcow2"
        try FileManager.default.copyItem(atPath: diskA, toPath: diskA3)
        let (backend3, a3) = try Self.start(
            "\(hosts[2])/a",
            host: hosts[2],
            vm: Self.vmA,
            registry: registry,
            disk: diskA3,
            extra: ["-loadvm", "s1"]
        )
        try a3.waitForShell()
        #expect(backend3.log.contains("decision=rollback"), "\(backend3.log)")
        #expect(try a3.run("tpm2_readpublic -c 0x81010002 -Q").status != 0)
        #expect(try a3.quit() == 0)
        #expect(try backend3.waitForExit() == 0)

        // A's disk copied and started on host 2 as B.
        try FileManager.default.createDirectory(atPath: "\(hosts[1])/b", withIntermediateDirectories: true)
        let diskB = "\(hosts[1])/b/disk.qcow2"
        try FileManager.default.copyItem(atPath: diskA, toPath: diskB)
        let (backendB, b) = try Self.start(
            "\(hosts[1])/b",
            host: hosts[1],
            vm: Self.vmB,
            registry: registry,
            disk: diskB,
            extra: ["-loadvm", "s1"]
        )
        try b.waitForShell()
        #expect(backendB.log.contains("decision=clone"), "\(backendB.log)")
        try b.check("cd /data && tpm2_createek -c ekb.ctx -G rsa -u ekb.pub -Q && tpm2_flushcontext -t")
        #expect(try b.check("sha256sum /data/ekb.pub | cut -c1-64") != ekA)
        #expect(try b.quit() == 0)
        #expect(try backendB.waitForExit() == 0)

        // The cluster's lineage: A's rollback generation and B's clone, recorded by hosts 3 and 2.
        let lineage = try runCommand(Binaries.vtpmState, ["lineage", "--registry", registry, "--format", "json"])
        #expect(lineage.status == 0, "\(lineage.output)")
        #expect(lineage.stdout.contains(Self.vmB) && lineage.stdout.contains("rollback"), "\(lineage.stdout)")
    }

    /// PostgreSQL stops while the guest runs: its TPM keeps answering and savevm works; a loadvm is refused
    /// (QEMU reports the error and keeps the VM); with PostgreSQL back the same loadvm goes through.
    @Test(.timeLimit(.minutes(10)))
    func anOutageLeavesTheGuestsTPMAloneAndRefusesOnlyLoadvm() throws {
        let server = try PostgresServer()
        let registry = server.url + "&connect_timeout=1"
        let root = "/tmp/vtpm-outage-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: "\(root)/a", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let disk = "\(root)/disk.qcow2"
        try QEMUGuest.createDisk(at: disk)
        let (backend, guest) = try Self.start("\(root)/a", host: root, vm: Self.vmA, registry: registry, disk: disk)
        try guest.waitForReady()
        try server.stop()
        // The guest's TPM during the outage: nothing waits on the registry (1 s timeout per attempt).
        let started = ContinuousClock.now
        for round in 0..<5 {
            try guest.check("tpm2_pcrextend 16:sha256=\(String(repeating: "4\(round)", count: 32))")
        }
        let pcr = try guest.check("tpm2_pcrread sha256:16")
        print("GuestClusterTests: 5 PCR extends and a read during the outage took \(ContinuousClock.now - started)")
        try guest.check("sync")
        try guest.savevm("s2")
        #expect(throws: QEMUGuestError.self) { try guest.loadvm("s2") }
        #expect(backend.log.contains("registry is unavailable"), "\(backend.log)")
        // QEMU keeps the VM stopped after a failed loadvm; a loadvm of a stopped VM leaves it stopped.
        #expect(try guest.runState() != "running")
        try server.start()
        try guest.loadvm("s2")
        _ = try guest.qmp("cont")
        try guest.waitForShell()
        // The snapshot's TPM state, decided with the registry back (a move, or a rollback if the guest's kernel
        // used the TPM between savevm and loadvm).
        let decisions = backend.log.split(separator: "\n").filter { $0.contains("clone-rekey decision") }
        #expect(decisions.last.map { $0.contains("decision=move") || $0.contains("decision=rollback") } == true)
        #expect(try guest.check("tpm2_pcrread sha256:16") == pcr)
        #expect(try guest.quit() == 0)
        #expect(try backend.waitForExit() == 0)
    }
}
