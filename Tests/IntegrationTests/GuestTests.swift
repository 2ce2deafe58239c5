import Foundation
import TestSupport
import Testing

private let secret = "swift-vtpm smoke secret"
private let nvIndex = "0x1500016"

/// QEMU 7.2 guests on vtpmd (`VTPM_TEST_BACKEND` overrides, e.g. `swtpm` to check the tests):
/// boot with tpm-crb and tpm-tis, tpm2-tools in the guest, savevm/loadvm, -loadvm, live migration.
@Suite(.serialized, .enabled(if: GuestImage.hostCanRunGuests))
struct GuestTests {
    @Test(.timeLimit(.minutes(10)))
    func bootsUsesTPMAndSurvivesSavevmLoadvm() throws {
        let dir = try Self.scratchDirectory()
        defer { Self.removeScratch(dir) }
        let image = try GuestImage.locate()
        let disk = "\(dir)/disk.qcow2"
        try QEMUGuest.createDisk(at: disk)

        let clock = ContinuousClock()
        let pcrAtSave = try Self.firstBoot(dir: dir, image: image, disk: disk, clock: clock)

        // a new QEMU + a new backend on an empty state dir, restored with -loadvm
        let dir2 = "\(dir)/second"
        try FileManager.default.createDirectory(atPath: dir2, withIntermediateDirectories: true)
        let backend2 = try TPMBackendProcess(directory: dir2)
        let restoreStart = clock.now
        let restored = try QEMUGuest.launch(
            .init(
                directory: dir2,
                image: image,
                tpmSocket: backend2.controlSocket,
                disk: disk,
                extraArguments: ["-loadvm", "s1"]
            )
        )
        try restored.waitForShell()
        print("GuestTests: -loadvm start to shell \(clock.now - restoreStart)")
        #expect(try restored.check("tpm2_pcrread sha256:16") == pcrAtSave)
        #expect(try restored.check("cd /data/k && tpm2_unseal -c key.ctx") == secret)
        #expect(try restored.check("tpm2_nvread \(nvIndex) -C o -s 18") == "nv-data-0123456789")
        #expect(try restored.quit() == 0)
        #expect(try backend2.waitForExit() == 0)
    }

    /// Boot, TPM work, savevm s1, changes, loadvm s1, quit. Returns PCR 16 at the snapshot.
    private static func firstBoot(dir: String, image: GuestImage, disk: String, clock: ContinuousClock) throws -> String
    {
        let backend = try TPMBackendProcess(directory: dir)
        let launched = clock.now
        let g = try QEMUGuest.launch(.init(directory: dir, image: image, tpmSocket: backend.controlSocket, disk: disk))
        try g.waitForReady()
        print("GuestTests: boot to ready \(clock.now - launched) (backend \(backend.executable.path))")

        // /dev nodes the kernel created
        let devs = try g.check("ls /dev/tpm*")
        #expect(devs.contains("/dev/tpmrm0"))

        // random
        let random = try g.check("tpm2_getrandom 8 --hex").trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(random.count == 16 && random.allSatisfy(\.isHexDigit), "getrandom: \(random)")

        // PCR extend + read
        try g.check("tpm2_pcrextend 16:sha256=\(String(repeating: "11", count: 32))")
        let pcrAtSave = try g.check("tpm2_pcrread sha256:16")
        #expect(pcrAtSave.contains("16:"), "\(pcrAtSave)")
        #expect(!pcrAtSave.contains("0x0000000000000000000000000000000000000000000000000000000000000000"))

        // seal / unseal, files on the qcow2-backed /data
        try g.check("mkdir -p /data/k && cd /data/k && printf '%s' '\(secret)' > secret.txt")
        try g.check("cd /data/k && tpm2_createprimary -Q -C o -c primary.ctx", timeout: .seconds(120))
        try g.check("cd /data/k && tpm2_create -Q -C primary.ctx -i secret.txt -u key.pub -r key.priv")
        try g.check("cd /data/k && tpm2_load -Q -C primary.ctx -u key.pub -r key.priv -c key.ctx")
        #expect(try g.check("cd /data/k && tpm2_unseal -c key.ctx") == secret)

        // NV
        try g.check("tpm2_nvdefine \(nvIndex) -C o -s 32 -a 'ownerread|ownerwrite|authread|authwrite'")
        try g.check("printf 'nv-data-0123456789' > /tmp/nv.bin && tpm2_nvwrite \(nvIndex) -C o -i /tmp/nv.bin")
        let nv = try g.check("tpm2_nvread \(nvIndex) -C o -s 18")
        #expect(nv == "nv-data-0123456789")
        try g.check("sync")

        // savevm, then change the TPM and the disk, then loadvm: everything reverts
        let saveStart = clock.now
        try g.savevm("s1")
        print("GuestTests: savevm took \(clock.now - saveStart)")
        #expect(try g.runState() == "running")
        try g.check("tpm2_pcrextend 16:sha256=\(String(repeating: "22", count: 32))")
        #expect(try g.check("tpm2_pcrread sha256:16") != pcrAtSave)
        try g.check("touch /data/after-savevm")

        let loadStart = clock.now
        try g.loadvm("s1")
        print("GuestTests: loadvm took \(clock.now - loadStart)")
        try g.waitForShell()
        #expect(try g.check("tpm2_pcrread sha256:16") == pcrAtSave)
        #expect(try g.check("cd /data/k && tpm2_unseal -c key.ctx") == secret)
        #expect(try g.run("test -e /data/after-savevm").status == 1)
        #expect(try g.check("tpm2_nvread \(nvIndex) -C o -s 18") == "nv-data-0123456789")
        let snapshots = try g.hmp("info snapshots")
        #expect(snapshots.contains("s1"), "\(snapshots)")

        // quit: QEMU sends CMD_SHUTDOWN, the backend exits by itself
        #expect(try g.quit() == 0)
        #expect(try backend.waitForExit() == 0)
        return pcrAtSave
    }

    @Test(.timeLimit(.minutes(5)))
    func bootsWithTPMTIS() throws {
        let dir = try Self.scratchDirectory()
        defer { Self.removeScratch(dir) }
        let backend = try TPMBackendProcess(directory: dir)
        let guest = try QEMUGuest.launch(
            .init(directory: dir, image: try GuestImage.locate(), tpmSocket: backend.controlSocket, deviceModel: .tis)
        )
        try guest.waitForReady()
        let random = try guest.check("tpm2_getrandom 4 --hex")
        #expect(random.count == 8, "\(random)")
        let (output, status) = try guest.run("echo out; echo err >&2; false")
        #expect(output == "out\nerr\n")
        #expect(status == 1)
        #expect(try guest.check("printf 'no newline'") == "no newline")
        try guest.quit()
        try backend.waitForExit()
    }

    @Test(.timeLimit(.minutes(5)))
    func migratesLiveToABackendWithEmptyState() throws {
        let dir = try Self.scratchDirectory()
        defer { Self.removeScratch(dir) }
        let image = try GuestImage.locate()
        let source = try TPMBackendProcess(directory: dir)
        let guest = try QEMUGuest.launch(.init(directory: dir, image: image, tpmSocket: source.controlSocket))
        try guest.waitForReady()
        try guest.check("tpm2_pcrextend 16:sha256=\(String(repeating: "33", count: 32))")
        let pcr = try guest.check("tpm2_pcrread sha256:16")

        let destDir = "\(dir)/dest"
        try FileManager.default.createDirectory(atPath: destDir, withIntermediateDirectories: true)
        let destination = try TPMBackendProcess(directory: destDir)
        let target = try QEMUGuest.launch(
            .init(
                directory: destDir,
                image: image,
                tpmSocket: destination.controlSocket,
                extraArguments: ["-incoming", "unix:\(dir)/migrate.sock"]
            )
        )
        #expect(try target.runState() == "inmigrate")
        try guest.migrate(to: "unix:\(dir)/migrate.sock")
        #expect(try guest.runState() == "postmigrate")
        try target.waitForRunState("running")
        try target.waitForShell()
        #expect(try target.check("tpm2_pcrread sha256:16") == pcr)
        try guest.quit()
        try target.quit()
        #expect(try source.waitForExit() == 0)
        #expect(try destination.waitForExit() == 0)
    }

    private static func scratchDirectory() throws -> String {
        let dir = "/tmp/vtpm-guest-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    private static func removeScratch(_ dir: String) {
        if ProcessInfo.processInfo.environment["VTPM_KEEP_TEST_DIRS"] == nil {
            try? FileManager.default.removeItem(atPath: dir)
        }
    }
}

/// The harness fails fast instead of hanging.
@Suite(.serialized, .enabled(if: GuestImage.hostCanRunGuests))
struct GuestHarnessFailureTests {
    @Test(.timeLimit(.minutes(5)))
    func commandTimeoutInterruptsAndShellRecovers() throws {
        let dir = "/tmp/vtpm-guest-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let backend = try TPMBackendProcess(directory: dir)
        let guest = try QEMUGuest.launch(
            .init(directory: dir, image: try GuestImage.locate(), tpmSocket: backend.controlSocket)
        )
        try guest.waitForReady()
        let clock = ContinuousClock()
        let start = clock.now
        #expect(throws: QEMUGuestError.self) { try guest.run("sleep 100", timeout: .seconds(2)) }
        #expect(clock.now - start < .seconds(5))
        #expect(try guest.check("echo alive") == "alive\n")
        let long = String(repeating: "x", count: 3000)
        #expect(try guest.check("echo \(long) | wc -c").trimmingCharacters(in: .whitespacesAndNewlines) == "3001")
        let multi = try guest.check("for i in 1 2 3; do\n echo line$i\ndone")
        #expect(multi == "line1\nline2\nline3\n")
        // the backend dies: TPM commands fail, but the harness does not hang
        backend.kill()
        let (out, status) = try guest.run("tpm2_getrandom 4 --hex", timeout: .seconds(60))
        #expect(status != 0, "\(out)")
        print("after backend kill: status \(status) output \(out)")
        guest.kill()
        #expect(throws: QEMUGuestError.self) { try guest.run("true", timeout: .seconds(5)) }
    }

    @Test(.timeLimit(.minutes(2)))
    func launchFailsFastWithoutBackend() throws {
        let dir = "/tmp/vtpm-guest-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let error = #expect(throws: QEMUGuestError.self) {
            try QEMUGuest.launch(
                .init(directory: dir, image: try GuestImage.locate(), tpmSocket: "\(dir)/nonexistent.sock")
            )
        }
        print("launch without backend: \(String(describing: error))")
    }
}
