import Foundation
import Registry
import TPMWire
import TestSupport
import Testing
import VMIdentity
import _VTPMPosix

/// vtpmd's seccomp filter (`--seccomp action=kill|log|none`, kill by default) and what `--runas` drops.
@Suite(.serialized)
struct LeastPrivilegeTests {
    /// One line of /proc/PID/status, e.g. `Seccomp` → `2`.
    static func status(_ pid: Int32, _ field: String) -> String? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
            return line.dropFirst(field.count + 1).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }

    /// The kernel's seccomp audit records (type 1326) for `pid`, as "syscall=N sig=S" pairs.
    static func auditRecords(pid: Int32) -> [(syscall: Int, signal: Int)] {
        guard let r = try? runCommand("dmesg", []), r.status == 0 else { return [] }
        return r.stdout.split(separator: "\n").compactMap { line -> (Int, Int)? in
            guard line.contains("type=1326"), line.contains(" pid=\(pid) ") else { return nil }
            func field(_ name: String) -> Int? {
                guard let range = line.range(of: " \(name)=") else { return nil }
                return Int(line[range.upperBound...].prefix { $0.isNumber })
            }
            guard let call = field("syscall"), let signal = field("sig") else { return nil }
            return (call, signal)
        }
    }

    static let canReadKernelLog = ((try? runCommand("dmesg", []))?.status ?? 1) == 0
    static let isRoot = ProcessControl.effectiveUserID == 0
    /// personality(2) on x86_64: the call the probe makes.
    static let personality = 135

    /// The TPM answers through the filter (startup, random numbers, state written on shutdown).
    static func exerciseTPM(_ v: VTPMDInstance) throws {
        let c = try v.control()
        #expect(try c.result(.initialize(flags: 0)) == 0)
        let d = try v.data()
        #expect(try TPMFrame.responseCode(d.transmit(TPMCommands.startup())) == 0)
        let random = try d.transmit(TPMCommands.getRandom(16))
        #expect(TPMFrame.responseCode(random) == 0 && random.count == 10 + 2 + 16)
        #expect(try TPMFrame.responseCode(d.transmit(TPMCommands.shutdown())) == 0)
        #expect(try c.result(.stop) == 0)
    }

    @Test func theFilterIsOnByDefaultAndTheTPMWorksUnderIt() throws {
        try withTemporaryDirectory { dir in
            let v = try VTPMDInstance(dir: dir)
            try Self.exerciseTPM(v)
            #expect(Self.status(v.daemon.pid, "Seccomp") == "2")
            #expect(Self.status(v.daemon.pid, "Seccomp_filters") == "1")
            #expect(Self.status(v.daemon.pid, "NoNewPrivs") == "1")
            #expect(v.log.contains("seccomp filter: action=kill"))
            #expect(v.daemon.isRunning)
            #expect(FileManager.default.fileExists(atPath: "\(dir)/state/tpm2-00.permall"))
        }
    }

    /// `vtpmd chardev --fd 3`: socat hands it one end of a connection to a UNIX socket, as a character device
    /// would be handed over; TPM commands on it are answered under the filter.
    @Test func chardevRunsUnderTheFilterToo() throws {
        try withTemporaryDirectory { dir in
            try FileManager.default.createDirectory(atPath: "\(dir)/state", withIntermediateDirectories: true)
            let script = "\(dir)/chardev.sh"
            try """
            #!/bin/sh
            exec \(Binaries.vtpmd) chardev --tpm2 --fd 3 --tpmstate dir=\(dir)/state --ctrl type=unixio,path=\(dir)/ctrl.sock \
                --flags not-need-init,startup-clear --log file=\(dir)/vtpmd.log,level=20

            """.write(toFile: script, atomically: true, encoding: .utf8)
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: script)
            let socat = try Daemon(
                "socat",
                ["UNIX-LISTEN:\(dir)/data.socket", "EXEC:\(script),fdin=3,fdout=3"],
                waitFor: "\(dir)/data.socket"
            )
            let data = DataClient(descriptor: try Socket.connectUnix(path: "\(dir)/data.socket"))
            let random = try data.transmit(TPMCommands.getRandom(8))
            #expect(TPMFrame.responseCode(random) == 0 && random.count == 10 + 2 + 8)
            let found = try runCommand("pgrep", ["-f", "chardev --tpm2 --fd 3 --tpmstate dir=\(dir)/state"])
            let pid = try #require(found.stdout.split(separator: "\n").first.flatMap { Int32($0) })
            #expect(Self.status(pid, "Seccomp") == "2")
            #expect(Self.status(pid, "NoNewPrivs") == "1")
            let c = try ControlClient(unixPath: "\(dir)/ctrl.sock")
            #expect(try c.result(.shutdown) == 0)
            _ = socat.waitForExit(timeout: .seconds(5))
        }
    }

    /// The registry's connections are made under the filter (the first at the first decision, again after an
    /// outage): a PostgreSQL registry named by host (glibc's resolver), over TLS with the server's certificate
    /// checked, with a password file — what the package's configuration suggests.
    @Test(.enabled(if: PostgresServer.isAvailable)) func aPostgreSQLRegistryByHostNameOverTLSWorksUnderTheFilter()
        throws
    {
        let server = try PostgresServer(tlsOnly: true)
        try withTemporaryDirectory { dir in
            let passfile = "\(dir)/pgpass"
            try "localhost:\(server.port):\(server.database):postgres:unused\n".write(
                toFile: passfile,
                atomically: true,
                encoding: .utf8
            )
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: passfile)
            let url =
                "postgresql://postgres@localhost:\(server.port)/\(server.database)?sslmode=verify-full"
                + "&sslrootcert=\(server.certificate)&connect_timeout=5"
            let vm = "6f1c1a52-3c1e-4a57-9d0e-4f3b2a1c0d9e"
            let v = try VTPMDInstance(
                dir: dir,
                extra: ["--vm-id", vm, "--registry", url, "--host-key", "\(dir)/host.key", "--ca", "\(dir)/ca"],
                environment: ["PGPASSFILE": passfile]
            )
            let c = try v.control()
            #expect(try c.result(.initialize(flags: 0)) == 0)
            let d = try v.data()
            #expect(try TPMFrame.responseCode(d.transmit(TPMCommands.startup())) == 0)
            // A snapshot: its checkpoint goes to the registry from the writer's thread.
            #expect(try c.stateBlob(type: 1).result == 0)
            #expect(try c.result(.shutdown) == 0)
            #expect(v.daemon.waitForExit() == 0, "\(v.log)")
            #expect(v.log.contains("seccomp filter: action=kill"))
            #expect(!v.log.contains("unavailable"), "\(v.log)")
            let registry = RegistryDatabase(postgres: try PostgresSettings(url: url, environment: [:]))
            #expect(try registry.currentGeneration(vmID: try #require(VMID(vm)))?.generation == 0)
        }
    }

    @Test func actionNoneInstallsNoFilter() throws {
        try withTemporaryDirectory { dir in
            let v = try VTPMDInstance(dir: dir, extra: ["--seccomp", "action=none"])
            try Self.exerciseTPM(v)
            #expect(Self.status(v.daemon.pid, "Seccomp") == "0")
        }
    }

    @Test(.enabled(if: canReadKernelLog)) func aForbiddenCallIsLoggedWithActionLog() throws {
        try withTemporaryDirectory { dir in
            let v = try VTPMDInstance(
                dir: dir,
                extra: ["--seccomp", "action=log"],
                environment: ["VTPMD_TEST_SECCOMP_PROBE": "1"]
            )
            // The probe ran (allowed, but logged) and vtpmd serves on.
            try Self.exerciseTPM(v)
            #expect(v.daemon.isRunning)
            #expect(v.log.contains("seccomp probe: personality(2) ran"))
            #expect(Self.status(v.daemon.pid, "Seccomp") == "2")
            let records = Self.auditRecords(pid: v.daemon.pid)
            #expect(records.contains { $0.syscall == Self.personality && $0.signal == 0 })
            // Nothing else vtpmd did was outside the list.
            #expect(records.allSatisfy { $0.syscall == Self.personality }, "\(records)")
        }
    }

    @Test func aForbiddenCallKillsWithActionKill() throws {
        try withTemporaryDirectory { dir in
            let ctrl = "\(dir)/ctrl.sock"
            try FileManager.default.createDirectory(atPath: "\(dir)/state", withIntermediateDirectories: true)
            let daemon = try Daemon(
                Binaries.vtpmd,
                [
                    "socket", "--tpm2", "--tpmstate", "dir=\(dir)/state", "--ctrl", "type=unixio,path=\(ctrl)",
                    "--server", "type=tcp,port=\(try freePort())", "--flags", "not-need-init",
                    "--seccomp", "action=kill",
                ],
                environment: ["VTPMD_TEST_SECCOMP_PROBE": "1"]
            )
            let status = daemon.waitForExit(timeout: .seconds(10))
            // Killed by SIGSYS (Foundation reports a signal's number as the status).
            #expect(status == SIGSYS)
            if Self.canReadKernelLog {
                #expect(
                    Self.auditRecords(pid: daemon.pid).contains {
                        $0.syscall == Self.personality && $0.signal == SIGSYS
                    }
                )
            }
        }
    }

    @Test(.enabled(if: isRoot && ProcessControl.groupID("tss") != nil))
    func runasDropsSupplementaryGroupsAndCapabilities() throws {
        try withTemporaryDirectory { dir in
            // The state directory and the directory of the sockets belong to tss, as libvirt arranges it.
            try FileManager.default.createDirectory(atPath: "\(dir)/state", withIntermediateDirectories: true)
            _ = try runCommand("chown", ["tss:tss", dir, "\(dir)/state"])
            let v = try VTPMDInstance(dir: dir, extra: ["--runas", "tss"])
            try Self.exerciseTPM(v)
            let pid = v.daemon.pid
            let tssGID = ProcessControl.groupID("tss").map(String.init) ?? "?"
            #expect(Self.status(pid, "Uid")?.split(separator: "\t").allSatisfy { $0 != "0" } == true)
            #expect(Self.status(pid, "Gid")?.split(separator: "\t").allSatisfy { String($0) == tssGID } == true)
            // Only the user's primary group, no supplementary group of root's or tss's.
            #expect(Self.status(pid, "Groups") == tssGID)
            for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
                #expect(Self.status(pid, set) == "0000000000000000", "\(set)")
            }
            #expect(Self.status(pid, "Seccomp") == "2")
            #expect(Self.status(pid, "NoNewPrivs") == "1")
        }
    }
}
