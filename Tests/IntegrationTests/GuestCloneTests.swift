import EndorsementCA
import Foundation
import TPMWire
import TestSupport
import Testing
import VMIdentity

/// Issue 3's guest-visible acceptance: VM A builds an identity (EK, AK persisted under the EK, a
/// sealed object persisted under the SRK), `savevm s1`; clone B starts from a copy of A's disk with
/// `-loadvm s1`, its own vtpmd and vm-id. B gets a new certified EK, loses the AK, keeps the sealed
/// data, sees the counter one higher and another history value; A, restarted, is unchanged.
@Suite(.serialized, .enabled(if: GuestImage.hostCanRunGuests))
struct GuestCloneTests {
    static let vmA = "aaaaaaaa-1111-4111-8111-aaaaaaaaaaaa"
    static let vmB = "bbbbbbbb-2222-4222-8222-bbbbbbbbbbbb"

    /// Clone-rekey on, with `host`'s CA and host key, and its SQLite registry unless `registry` names another.
    static func identityArguments(_ host: String, vm: String, registry: String? = nil) -> [String] {
        [
            "--vm-id", vm, "--ca", "\(host)/ca", "--registry", registry ?? "\(host)/registry.sqlite", "--host-key",
            "\(host)/host.key",
        ]
    }

    /// Hex bytes printed by `od` in the guest, back to bytes.
    static func bytes(fromOD text: String) -> [UInt8] {
        [UInt8](hexString: text.filter { $0.isHexDigit }) ?? []
    }

    @Test(.timeLimit(.minutes(10)))
    func cloneFromASnapshotGetsItsOwnIdentity() throws {
        let host = "/tmp/vtpm-clone-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: "\(host)/a", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "\(host)/b", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: host) }
        let image = try GuestImage.locate()
        let diskA = "\(host)/a/disk.qcow2"
        try QEMUGuest.createDisk(at: diskA)

        // VM A.
        let backendA = try TPMBackendProcess(
            directory: "\(host)/a",
            extraArguments: Self.identityArguments(host, vm: Self.vmA)
        )
        let a = try QEMUGuest.launch(
            .init(directory: "\(host)/a", image: image, tpmSocket: backendA.controlSocket, disk: diskA)
        )
        try a.waitForReady()
        try a.check(GuestCommands.createEK)
        let ekA = try a.check("sha256sum /data/ek.pub | cut -c1-64")
        try a.check(GuestCommands.persistAK, timeout: .seconds(120))
        try a.check(GuestCommands.seal, timeout: .seconds(120))
        #expect(try a.check("tpm2_unseal -c 0x81000010") == "A secret")
        // A signing key whose policy is PolicyNV(counter == its value now).
        try a.check(
            "cd /data && tpm2_nvread 0x1400001 -s 8 -o cnt0.bin && tpm2_startauthsession -S t.ctx"
                + " && tpm2_policynv -S t.ctx -i cnt0.bin -L pnv.policy 0x1400001 eq -Q && tpm2_flushcontext t.ctx"
                + " && tpm2_create -C 0x81000001 -G ecc -u pk.pub -r pk.priv -L pnv.policy"
                + " -a 'fixedtpm|fixedparent|sensitivedataorigin|sign' -Q && tpm2_flushcontext -t && echo hello > msg",
            timeout: .seconds(120)
        )
        #expect(try a.run(Self.policyNVSign, timeout: .seconds(120)).status == 0)
        let counterA = Self.bytes(fromOD: try a.check("tpm2_nvread 0x1400001 -s 8 | od -An -tx1"))
        let historyA = try a.check("tpm2_nvread 0x1400002 -s 32 | od -An -tx1")
        #expect(counterA.count == 8)
        try a.check("sync")
        try a.savevm("s1")
        #expect(try a.quit() == 0)
        #expect(try backendA.waitForExit() == 0)

        // Clone B: a copy of A's disk, -loadvm s1, its own vtpmd and vm-id.
        let diskB = "\(host)/b/disk.qcow2"
        try FileManager.default.copyItem(atPath: diskA, toPath: diskB)
        let backendB = try TPMBackendProcess(
            directory: "\(host)/b",
            extraArguments: Self.identityArguments(host, vm: Self.vmB)
        )
        let b = try QEMUGuest.launch(
            .init(
                directory: "\(host)/b",
                image: image,
                tpmSocket: backendB.controlSocket,
                disk: diskB,
                extraArguments: ["-loadvm", "s1"]
            )
        )
        try b.waitForShell()
        #expect(backendB.log.contains("decision=clone"), "\(backendB.log)")
        // The storage hierarchy came along: the sealed object unseals.
        #expect(try b.check("tpm2_unseal -c 0x81000010") == "A secret")
        // The key bound to A's counter value still loads (storage hierarchy) but cannot sign in the clone.
        #expect(
            try b.run(
                "(cd /data && tpm2_load -C 0x81000001 -u pk.pub -r pk.priv -c pk.ctx -Q; rc=$?; tpm2_flushcontext -t; exit $rc)"
            ).status == 0
        )
        let refused = try b.run(Self.policyNVSign, timeout: .seconds(120))
        #expect(
            refused.status != 0 && (refused.output.contains("policynv") || refused.output.contains("PolicyNV")),
            "\(refused.output)"
        )
        // The AK under A's EK is gone.
        #expect(try b.run("tpm2_readpublic -c 0x81010002 -Q").status != 0)
        // A new EK, and its certificate names B (parent A), holds B's EK and chains to the CA.
        try b.check("cd /data && tpm2_createek -c ekb.ctx -G rsa -u ekb.pub -Q && tpm2_flushcontext -t")
        let ekB = try b.check("sha256sum /data/ekb.pub | cut -c1-64")
        #expect(ekB != ekA)
        // The counter is A's + 1 and the history changed.
        let counterB = Self.bytes(fromOD: try b.check("tpm2_nvread 0x1400001 -s 8 | od -An -tx1"))
        #expect(counterB.count == 8)
        #expect(counterB.readBigEndianUInt32(at: 4) == counterA.readBigEndianUInt32(at: 4) + 1)
        #expect(try b.check("tpm2_nvread 0x1400002 -s 32 | od -An -tx1") != historyA)
        #expect(try b.quit() == 0)
        #expect(try backendB.waitForExit() == 0)
        // B's certificate, read on the host from B's state (the serial console is not a reliable
        // channel for a kilobyte of hex): it names B (parent A), holds B's EK and chains to the CA.
        let port = try freePortPair()
        let hostSide = try Daemon(
            Binaries.vtpmd,
            [
                "socket", "--tpm2", "--tpmstate", "dir=\(backendB.stateDirectory)", "--server", "type=tcp,port=\(port)",
                "--ctrl", "type=tcp,port=\(port + 1)", "--flags", "not-need-init,startup-clear",
            ] + Self.identityArguments(host, vm: Self.vmB),
            waitForPort: port
        )
        let env = ["TPM2TOOLS_TCTI": "swtpm:host=127.0.0.1,port=\(port)"]
        #expect(try runCommand("tpm2_nvread", ["0x1c00002", "-o", "\(host)/b/ek.der"], environment: env).status == 0)
        #expect(
            try runCommand(
                "tpm2_createek",
                ["-c", "\(host)/b/ek.ctx", "-G", "rsa", "-u", "\(host)/b/ek.pub"],
                environment: env
            )
            .status == 0
        )
        _ = try runCommand("swtpm_ioctl", ["--tcp", "127.0.0.1:\(port + 1)", "-s"])
        _ = hostSide.waitForExit()
        let ekBPublic = try #require(fileBytes("\(host)/b/ek.pub"))
        let hostHash = try runCommand("sha256sum", ["\(host)/b/ek.pub"]).stdout.prefix(64)
        #expect(String(hostHash) == ekB.trimmingCharacters(in: .whitespacesAndNewlines))
        let info = try EKCertificateInfo(der: try #require(fileBytes("\(host)/b/ek.der")))
        #expect(info.vmID?.description == Self.vmB)
        #expect(info.parentVMID?.description == Self.vmA)
        #expect(try info.publicKey == EKPublicKey(tpm2bPublic: ekBPublic))
        _ = try runCommand(
            "openssl",
            ["x509", "-inform", "der", "-in", "\(host)/b/ek.der", "-out", "\(host)/b/ek.pem"]
        )
        #expect(
            try runCommand("openssl", ["verify", "-CAfile", "\(host)/ca/ca.pem", "\(host)/b/ek.pem"]).stdout.contains(
                "OK"
            )
        )

        // The offline tool agrees on states vtpmd wrote under QEMU: both verify against the CA, and
        // the inspection names B's identity and its parent.
        for state in [backendA.stateDirectory, backendB.stateDirectory] {
            let verify = try runCommand(Binaries.vtpmState, ["verify", "--state", state, "--ca", "\(host)/ca"])
            #expect(verify.status == 0, "vtpm-state verify \(state): \(verify.output)")
        }
        let inspect = try runCommand(Binaries.vtpmState, ["inspect", "--state", backendB.stateDirectory])
        #expect(
            inspect.status == 0 && inspect.stdout.contains(Self.vmB) && inspect.stdout.contains(Self.vmA),
            "\(inspect.output)"
        )

        // A, restarted on its own state: EK and AK unchanged and working.
        let backendA2 = try TPMBackendProcess(
            directory: "\(host)/a",
            stateDirectory: backendA.stateDirectory,
            extraArguments: Self.identityArguments(host, vm: Self.vmA)
        )
        let a2 = try QEMUGuest.launch(
            .init(directory: "\(host)/a", image: image, tpmSocket: backendA2.controlSocket, disk: diskA)
        )
        try a2.waitForReady()
        try a2.check("cd /data && tpm2_createek -c ek2.ctx -G rsa -u ek2.pub -Q && tpm2_flushcontext -t")
        #expect(try a2.check("sha256sum /data/ek2.pub | cut -c1-64") == ekA)
        try a2.check(
            "cd /data && echo hello > msg && tpm2_sign -c 0x81010002 -g sha256 -s rsassa -o sig msg"
                + " && tpm2_verifysignature -c 0x81010002 -g sha256 -m msg -s sig",
            timeout: .seconds(120)
        )
        #expect(try a2.run(Self.policyNVSign, timeout: .seconds(120)).status == 0)
        #expect(try a2.quit() == 0)
    }

    /// Signs /data/msg with the PolicyNV key (policy session: counter == the value saved at creation).
    static let policyNVSign =
        "(cd /data && tpm2_flushcontext -t; tpm2_load -C 0x81000001 -u pk.pub -r pk.priv -c pk.ctx -Q"
        + " && tpm2_startauthsession --policy-session -S ps.ctx"
        + " && tpm2_policynv -S ps.ctx -i cnt0.bin 0x1400001 eq -Q"
        + " && tpm2_sign -c pk.ctx -p session:ps.ctx -g sha256 -o pnv.sig msg; rc=$?;"
        + " tpm2_flushcontext ps.ctx 2>/dev/null; tpm2_flushcontext -t; exit $rc)"

    @Test(.timeLimit(.minutes(5)), arguments: ["rekey", "keep"])
    func rollbackWithLoadvm(policy: String) throws {
        let host = "/tmp/vtpm-rollback-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: "\(host)/a", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: host) }
        let disk = "\(host)/a/disk.qcow2"
        try QEMUGuest.createDisk(at: disk)
        let backend = try TPMBackendProcess(
            directory: "\(host)/a",
            extraArguments: Self.identityArguments(host, vm: Self.vmA) + ["--on-rollback", policy]
        )
        let a = try QEMUGuest.launch(
            .init(directory: "\(host)/a", image: try GuestImage.locate(), tpmSocket: backend.controlSocket, disk: disk)
        )
        try a.waitForReady()
        let ekCommand =
            "tpm2_createek -c /tmp/ek.ctx -G rsa -u /tmp/ek.pub -Q && tpm2_flushcontext -t && sha256sum /tmp/ek.pub | cut -c1-64"
        let before = try a.check(ekCommand)
        try a.savevm("s1")
        // A runs on after the snapshot...
        try a.check("tpm2_pcrextend 16:sha256=\(String(repeating: "42", count: 32))")
        // ...and is rolled back to it.
        try a.loadvm("s1")
        try a.waitForShell()
        #expect(backend.log.contains("decision=rollback"), "\(backend.log)")
        let after = try a.check(ekCommand)
        if policy == "rekey" {
            #expect(after != before)
        } else {
            #expect(after == before)
        }
        #expect(try a.quit() == 0)
    }

    @Test(.timeLimit(.minutes(5)))
    func liveMigrationKeepsTheIdentity() throws {
        let host = "/tmp/vtpm-migrate-\(UInt32.random(in: 0...UInt32.max))"
        for dir in ["a", "dest"] {
            try FileManager.default.createDirectory(atPath: "\(host)/\(dir)", withIntermediateDirectories: true)
        }
        defer { try? FileManager.default.removeItem(atPath: host) }
        let image = try GuestImage.locate()
        let source = try TPMBackendProcess(
            directory: "\(host)/a",
            extraArguments: Self.identityArguments(host, vm: Self.vmA)
        )
        let a = try QEMUGuest.launch(.init(directory: "\(host)/a", image: image, tpmSocket: source.controlSocket))
        try a.waitForReady()
        let ekCommand =
            "tpm2_createek -c /tmp/ek.ctx -G rsa -u /tmp/ek.pub -Q && tpm2_flushcontext -t && sha256sum /tmp/ek.pub | cut -c1-64"
        let ek = try a.check(ekCommand)
        try a.check(
            "cd /tmp && tpm2_createak -C ek.ctx -c ak.ctx -G rsa -g sha256 -s rsassa -u ak.pub -n ak.name -Q"
                + " && tpm2_evictcontrol -C o -c ak.ctx 0x81010002 -Q && tpm2_flushcontext -t",
            timeout: .seconds(120)
        )
        let destination = try TPMBackendProcess(
            directory: "\(host)/dest",
            extraArguments: Self.identityArguments(host, vm: Self.vmA)
        )
        let target = try QEMUGuest.launch(
            .init(
                directory: "\(host)/dest",
                image: image,
                tpmSocket: destination.controlSocket,
                extraArguments: ["-incoming", "unix:\(host)/migrate.sock"]
            )
        )
        try a.migrate(to: "unix:\(host)/migrate.sock")
        try target.waitForRunState("running")
        try target.waitForShell()
        #expect(destination.log.contains("decision=move"), "\(destination.log)")
        #expect(try target.check(ekCommand) == ek)
        try target.check(
            "cd /tmp && echo hello > msg && tpm2_sign -c 0x81010002 -g sha256 -s rsassa -o sig msg"
                + " && tpm2_verifysignature -c 0x81010002 -g sha256 -m msg -s sig",
            timeout: .seconds(120)
        )
        try a.quit()
        try target.quit()
    }

    @Test(.timeLimit(.minutes(5)))
    func aTamperedSnapshotIsRefusedAndTouchesNothing() throws {
        let host = "/tmp/vtpm-tamper-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: "\(host)/a", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: host) }
        let image = try GuestImage.locate()
        let disk = "\(host)/a/disk.qcow2"
        try QEMUGuest.createDisk(at: disk)
        let backend = try TPMBackendProcess(
            directory: "\(host)/a",
            extraArguments: Self.identityArguments(host, vm: Self.vmA)
        )
        let a = try QEMUGuest.launch(
            .init(directory: "\(host)/a", image: image, tpmSocket: backend.controlSocket, disk: disk)
        )
        try a.waitForReady()
        try a.check("tpm2_getrandom 8 --hex")
        try a.savevm("s1")
        #expect(try a.quit() == 0)
        _ = try backend.waitForExit()

        // Flip one byte of the source claim's MAC inside the snapshot stored in the qcow2 image.
        var image2 = try #require(fileBytes(disk))
        let magic: [UInt8] = Array("VTPB".utf8)
        let at = try #require(
            (0..<(image2.count - 80)).first { image2[$0] == magic[0] && Array(image2[$0..<($0 + 4)]) == magic }
        )
        image2[at + 4 + 2 + 16 + 8 + 8 + 5] ^= 0x01
        try Data(image2).write(to: URL(fileURLWithPath: disk))

        let backend2 = try TPMBackendProcess(
            directory: "\(host)/a",
            stateDirectory: backend.stateDirectory,
            extraArguments: Self.identityArguments(host, vm: Self.vmA)
        )
        let guest = try QEMUGuest.launch(
            .init(directory: "\(host)/a", image: image, tpmSocket: backend2.controlSocket, disk: disk)
        )
        try guest.waitForReady()
        // (QEMU's loadvm resets the machine, STOP/INIT write the TPM's own state: the identity is
        // what must not change.)
        let marker = "\(backend.stateDirectory)/vtpm-instance.permall"
        let before = fileBytes(marker)
        let reply = try guest.hmp("loadvm s1")
        #expect(!reply.isEmpty, "QEMU reported no error for a tampered TPM blob")
        #expect(backend2.log.contains("does not verify"), "\(backend2.log)")
        #expect(fileBytes(marker) == before)
        #expect(!backend2.log.contains("decision=rollback") && !backend2.log.contains("decision=clone"))
        guest.kill()
    }
}
