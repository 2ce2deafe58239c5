import EndorsementCA
import Foundation
import TPMWire
import TestSupport
import Testing

/// Crash points: vtpmd ends at once (`VTPM_FAULTS=any:crash`, the process exits before the call as if the
/// power went, with the page cache kept) at each step that changes the disk, one run per step, during an NV
/// commit and during a clone's rekey. After a restart the state is the old or the new one, never torn or
/// missing, and the state's identity and the registry agree.
@Suite(.serialized)
struct CrashPointTests {
    static let index: UInt32 = 0x0150_0001
    /// The exit status of a crash point (``FaultInjection``).
    static let crashStatus: Int32 = 86

    static func crashAt(_ step: Int, object: String) -> [String: String] {
        ["VTPM_FAULTS": "any:crash:when=serving:skip=\(step):object=\(object)"]
    }

    static func nvRead(_ d: DataClient) throws -> String {
        let r = try d.transmit(TPM2Commands.nvRead(index: Self.index, size: 8, offset: 0))
        return String(decoding: try TPM2Responses.parseNVRead(r), as: UTF8.self)
    }

    @Test func anNVCommitCrashedAtAnyStepLeavesTheOldOrTheNewState() throws {
        try withTemporaryDirectory { dir in
            let source = "\(dir)/source"
            do {
                let v = try VTPMDInstance(dir: dir, extra: ["--flags", "not-need-init,startup-clear"], state: source)
                let d = try v.data()
                let nvPublic = NVPublic(
                    index: Self.index,
                    attributes: [.ppWrite, .ppRead, .authRead, .authWrite, .noDA, .platformCreate],
                    dataSize: 8
                )
                try #require(TPMFrame.responseCode(try d.transmit(TPM2Commands.nvDefineSpace(nvPublic: nvPublic))) == 0)
                let w = TPM2Commands.nvWrite(index: Self.index, data: Array("AAAAAAAA".utf8), offset: 0)
                try #require(TPMFrame.responseCode(try d.transmit(w)) == 0)
                try #require(try v.control().result(.shutdown) == 0)
                _ = v.daemon.waitForExit()
            }
            var outcomes: [String: Int] = [:]
            var step = 0
            while step < 100 {
                let state = "\(dir)/s\(step)"
                #expect(try runCommand("cp", ["-a", source, state]).status == 0)
                let v = try VTPMDInstance(
                    dir: dir,
                    extra: ["--flags", "not-need-init,startup-clear"],
                    state: state,
                    environment: Self.crashAt(step, object: state)
                )
                let d = try v.data()
                let w = TPM2Commands.nvWrite(index: Self.index, data: Array("BBBBBBBB".utf8), offset: 0)
                let response = try? d.transmit(w, timeout: 5000)
                if let response, TPMFrame.responseCode(response) == 0 {
                    // Past the last step: the commit completed (and is kept, whatever a later write does).
                    v.daemon.kill()
                    let again = try VTPMDInstance(
                        dir: dir,
                        extra: ["--flags", "not-need-init,startup-clear"],
                        state: state
                    )
                    #expect(try Self.nvRead(try again.data()) == "BBBBBBBB")
                    break
                }
                #expect(v.daemon.waitForExit() == Self.crashStatus, "step \(step): \(v.log)")
                // Restarted: the state loads and holds the old or the new value.
                let again = try VTPMDInstance(
                    dir: dir,
                    extra: ["--flags", "not-need-init,startup-clear"],
                    state: state
                )
                let value = try Self.nvRead(try again.data())
                #expect(value == "AAAAAAAA" || value == "BBBBBBBB", "step \(step): \(value)")
                outcomes[value, default: 0] += 1
                _ = try again.control().result(.shutdown)
                _ = again.daemon.waitForExit()
                step += 1
            }
            print("NV commit: \(step) crash points, outcomes \(outcomes)")
            #expect(step >= 5, "fewer crash points than the steps of one commit")
            #expect(outcomes["AAAAAAAA", default: 0] > 0 && outcomes["BBBBBBBB", default: 0] > 0)
        }
    }

    @Test func aRekeyCrashedAtAnyStepEndsInOneAgreedIdentity() throws {
        try withTemporaryDirectory { host in
            let vmA = Self.vmA
            let a = try CloneRekeyWireTests.Node(host, vmID: vmA, name: "a")
            try a.start()
            #expect(try runCommand("swtpm_ioctl", ["--tcp", "127.0.0.1:\(a.port + 1)", "-s"]).status == 0)
            _ = a.daemon.waitForExit()
            var step = 0
            var crashedOld = 0
            var crashedNew = 0
            while step < 200 {
                let name = "b\(step)"
                let state = "\(host)/\(name)"
                let vmB = String(format: "02020202-0000-4000-8000-%012d", step)
                #expect(try runCommand("cp", ["-a", a.state, state]).status == 0)
                let b = try CloneRekeyWireTests.Node(
                    host,
                    vmID: vmB,
                    name: name,
                    environment: Self.crashAt(step, object: state)
                )
                let rc = try? b.control().result(.initialize(flags: 0))
                if rc == 0 {
                    // Past the last step: the rekey completed.
                    b.daemon.kill()
                    break
                }
                #expect(b.daemon.waitForExit() == Self.crashStatus, "step \(step): \(b.logText)")
                // Before any restart: the state on disk loads, as A's or as B's.
                let crashed = try runCommand(Binaries.vtpmState, ["inspect", "--state", state, "--json"])
                #expect(crashed.status == 0, "step \(step): \(crashed.output)")
                let before = try Self.identity(crashed.stdout)
                #expect(before.vm == vmA || before.vm == vmB, "step \(step): \(before)")
                if before.vm == vmA { crashedOld += 1 } else { crashedNew += 1 }
                // Restarted: INIT works, and it is B's state, at the generation the registry has.
                let again = try CloneRekeyWireTests.Node(host, vmID: vmB, name: name)
                try again.start()
                _ = try again.control().result(.shutdown)
                _ = again.daemon.waitForExit()
                let after = try Self.identity(
                    try runCommand(Binaries.vtpmState, ["inspect", "--state", state, "--json"]).stdout
                )
                let registry = try Self.registryGeneration(host, vmB)
                #expect(after.vm == vmB && after.generation == registry, "step \(step): \(after) registry \(registry)")
                step += 1
            }
            print("rekey: \(step) crash points; the crashed state was A's \(crashedOld) times, B's \(crashedNew) times")
            #expect(step >= 10 && crashedOld > 0 && crashedNew > 0)
        }
    }

    static let vmA = "01010101-0000-4000-8000-00000000000a"
    static let vmB = "02020202-0000-4000-8000-00000000000b"

    /// VM A's TPM made by vtpmd on `host` (its CA, registry and host key) and stopped, copied for another VM (the
    /// clone B starts from): the copy's path.
    static func copyOfA(_ host: String, as name: String) throws -> String {
        let a = try CloneRekeyWireTests.Node(host, vmID: Self.vmA, name: "a")
        try a.start()
        #expect(try runCommand("swtpm_ioctl", ["--tcp", "127.0.0.1:\(a.port + 1)", "-s"]).status == 0)
        _ = a.daemon.waitForExit()
        let state = "\(host)/\(name)"
        #expect(try runCommand("cp", ["-a", a.state, state]).status == 0)
        return state
    }

    static func identity(_ json: String) throws -> (vm: String, generation: Int) {
        let object = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        let identity = try #require(object?["identity"] as? [String: Any])
        return (identity["vmID"] as? String ?? "", identity["generation"] as? Int ?? -1)
    }

    /// The newest generation the registry holds for `vm` (-1: none).
    static func registryGeneration(_ host: String, _ vm: String) throws -> Int {
        let r = try runCommand(
            Binaries.vtpmState,
            ["lineage", "--registry", "\(host)/registry.sqlite", "--format", "json"]
        )
        #expect(r.status == 0, "\(r.output)")
        let object = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        let generations = (object?["generations"] as? [[String: Any]] ?? []).filter { $0["vmID"] as? String == vm }
        return generations.compactMap { $0["generation"] as? Int }.max() ?? -1
    }
}

/// Storage faults (``FaultInjection`` through `VTPM_FAULTS`) in each step of a clone's rekey at CMD_INIT:
/// the identity record (the instance marker) and the rekeyed permanent state. The INIT fails with
/// TPM_RC_FAILURE, the log names the errno, the directory still holds the clone as it came (all or
/// nothing), and once the fault has cleared the next INIT rekeys it, with the state and the registry agreed.
@Suite(.serialized)
struct RekeyFaultTests {
    static let steps: [(name: String, call: String, object: String, times: Int)] = [
        ("identity record: create", "openat", "/.spare.vtpm-instance.permall", 2),
        ("identity record: write", "write", "/.spare.vtpm-instance.permall", 1),
        ("identity record: short write", "write", "/.spare.vtpm-instance.permall", -1),
        ("identity record: fdatasync", "fdatasync", "/.spare.vtpm-instance.permall", 1),
        ("identity record: renameat2", "renameat2", "/vtpm-instance.permall", 1),
        ("state: write", "write", "/.spare.tpm2-00.permall", 1),
        ("state: fdatasync", "fdatasync", "/.spare.tpm2-00.permall", 1),
        ("state: renameat2", "renameat2", "/tpm2-00.permall", 1),
        ("directory fsync", "fsync", "", 1),
    ]

    static var cases: [(String, String)] {
        Self.steps.flatMap { step in ["ENOSPC", "EIO", "EDQUOT", "EROFS"].map { (step.name, $0) } }
    }

    @Test(arguments: Self.cases)
    func aFailedRekeyChangesNothingAndTheNextINITCompletesIt(step: String, errno: String) throws {
        let spec = try #require(Self.steps.first { $0.name == step })
        try withTemporaryDirectory { host in
            let vmB = CrashPointTests.vmB
            let state = try CrashPointTests.copyOfA(host, as: "b")
            let copied = try Self.stateFiles(state)
            let action = spec.times < 0 ? "short-\(errno)" : errno
            let rule = "\(spec.call):\(action):object=\(state)\(spec.object):when=serving:times=\(max(spec.times, 1))"
            let b = try CloneRekeyWireTests.Node(host, vmID: vmB, name: "b", environment: ["VTPM_FAULTS": rule])
            let c = try b.control()
            #expect(try c.result(.initialize(flags: 0)) == TPMFrame.rcFailure, "\(rule): \(b.logText)")
            #expect(b.logText.contains("(errno \(Self.number(errno)))"), "\(rule): \(b.logText)")
            // All or nothing: the directory holds the clone as it came, nothing left beside it.
            #expect(try Self.stateFiles(state) == copied, "\(rule)")
            // The fault was one-shot: the next INIT rekeys, and the state and the registry agree.
            #expect(try c.result(.initialize(flags: 0)) == 0, "\(rule): \(b.logText)")
            #expect(b.logText.contains("decision=clone"), "\(b.logText)")
            b.daemon.kill()
            let after = try CrashPointTests.identity(
                try runCommand(Binaries.vtpmState, ["inspect", "--state", state, "--json"]).stdout
            )
            let registry = try CrashPointTests.registryGeneration(host, vmB)
            #expect(after.vm == vmB && after.generation == registry, "\(rule): \(after), registry \(registry)")
        }
    }
}

extension RekeyFaultTests {
    /// The errno value of a name, for matching vtpmd's log ("(errno 5)").
    static func number(_ name: String) -> Int32 {
        ["ENOSPC": 28, "EIO": 5, "EDQUOT": 122, "EROFS": 30][name] ?? -1
    }

    /// The directory's files without the spare files a durable commit stages in (they hold no state of
    /// their own: a failed commit removes its spare).
    static func stateFiles(_ dir: String) throws -> [String: String] {
        try BadStateTests.snapshot(dir).filter { !$0.key.hasPrefix(".spare.") }
    }
}

/// The registry's own I/O failing (``FaultInjection`` through SQLite's VFS) while a clone is rekeyed: the state
/// is committed first and stays so, the registry keeps what it had (its transactions are all or nothing), the
/// log says what was not recorded, and the next start records it: the state and the registry agree.
@Suite(.serialized)
struct RegistryFaultTests {
    @Test(arguments: ["write:EIO", "write:ENOSPC", "fdatasync:EIO"])
    func aRegistryThatCannotBeWrittenLosesNothing(fault: String) throws {
        try withTemporaryDirectory { host in
            let vmB = CrashPointTests.vmB
            let state = try CrashPointTests.copyOfA(host, as: "b")
            let rule = "\(fault):object=\(host)/registry.sqlite:when=serving:times=0"
            let b = try CloneRekeyWireTests.Node(host, vmID: vmB, name: "b", environment: ["VTPM_FAULTS": rule])
            #expect(try b.control().result(.initialize(flags: 0)) == 0)
            b.daemon.kill()
            // The state is committed; the registry has B's generation whole or not at all (a failed sync may still
            // have reached the disk: SQLite then finds the transaction complete).
            let during = try CrashPointTests.registryGeneration(host, vmB)
            let inspected = try CrashPointTests.identity(
                try runCommand(Binaries.vtpmState, ["inspect", "--state", state, "--json"]).stdout
            )
            #expect(inspected.vm == vmB && (during == -1 || during == inspected.generation), "registry \(during)")
            #expect(b.logText.contains("was not recorded"), "\(b.logText)")
            let again = try CloneRekeyWireTests.Node(host, vmID: vmB, name: "b")
            try again.start()
            again.daemon.kill()
            let after = try CrashPointTests.identity(
                try runCommand(Binaries.vtpmState, ["inspect", "--state", state, "--json"]).stdout
            )
            let registry = try CrashPointTests.registryGeneration(host, vmB)
            #expect(after.vm == vmB && after.generation == registry, "\(after), registry \(registry)")
        }
    }
}
