import Foundation
import Synchronization
import TestSupport
import Testing

/// vtpmd inside a guest kernel (`make kernel-test`, which builds the image with qemu/build-kernel-guest.sh and sets
/// `VTPM_KERNEL_GUEST_DIR`; `make test` skips these): Debian's kernel with fuse, cuse and tpm_vtpm_proxy loaded,
/// the release vtpmd, swtpm_ioctl and tpm2-tools in the initramfs, a virtio disk formatted on the host.
///
/// - `cuseAndProxyDevices`: qemu/guest/devices.sh drives `vtpmd cuse` with swtpm_ioctl's device mode and tpm2-tools'
///   device TCTI (state blobs both ways, clone-rekey through the device's blobs), and `vtpmd chardev --vtpm-proxy`
///   through /dev/tpmrmN; each step reports a CHECK line.
/// - `powerLoss`: qemu/guest/powerloss.sh writes an NV index in a loop and reports each acknowledged value; QEMU
///   is killed with SIGKILL at a random moment (the guest's page cache is lost, what the guest wrote to its disk is
///   in the image) and the same disk is booted again, 100 times with fsync on (killed 0–1.5 s after the first
///   acknowledged write of the boot) and 20 with it off (0–8 s).
@Suite(.serialized, .enabled(if: KernelGuest.directory != nil))
struct KernelGuestTests {
    @Test(.timeLimit(.minutes(5)))
    func cuseAndProxyDevices() throws {
        let dir = try KernelGuest.scratch()
        defer { KernelGuest.remove(dir) }
        let disk = "\(dir)/disk.raw"
        try KernelGuest.makeDisk(disk, megabytes: 96)
        let guest = try KernelGuest.boot(dir: dir, disk: disk, run: "devices")
        defer { guest.kill() }
        let done = try guest.waitForConsole("DEVICES-DONE", timeout: .seconds(240))
        let checks = guest.transcript.split(separator: "\n").filter { $0.hasPrefix("CHECK ") }
        let failed = checks.filter { !$0.hasSuffix(" ok") }
        #expect(failed.isEmpty, "\(failed.joined(separator: "\n"))\n\(guest.transcriptTail(lines: 60))")
        #expect(done.contains("failed=0"))
        let passed = Set(checks.filter { $0.hasSuffix(" ok") }.map { $0.split(separator: " ")[1] })
        // The steps the issue names, so a script that stops early cannot pass.
        for name in [
            "cuse-device", "capabilities", "init", "startup", "getrandom", "established-after-hash", "locality-3",
            "buffersize-while-running", "config", "cancel", "save-volatile-read", "save-volatile-ioctl",
            "load-volatile-write", "init-from-blobs", "nvread-restored", "shutdown", "device-removed",
            "clone-ek-rebased", "clone-storage-kept", "proxy-getrandom", "proxy-createprimary", "proxy-set-locality",
            "proxy-ctrl-shutdown", "proxy-device-removed",
        ] {
            #expect(passed.contains(Substring(name)), "step \(name) did not pass")
        }
        print("KernelGuestTests: \(passed.count) device checks passed")
    }

    @Test(.timeLimit(.minutes(12)))
    func powerLoss() throws {
        let dir = try KernelGuest.scratch()
        defer { KernelGuest.remove(dir) }
        // Two guests at a time (one per core), each on its own disk.
        let runs: [(name: String, fsync: Bool, kills: Int)] = [
            ("on-a", true, 50), ("on-b", true, 50), ("off-a", false, 10), ("off-b", false, 10),
        ]
        let results = KernelGuest.Results()
        for pair in [Array(runs[0..<2]), Array(runs[2..<4])] {
            DispatchQueue.concurrentPerform(iterations: pair.count) { index in
                let run = pair[index]
                let report = Result {
                    try PowerLossRun(directory: "\(dir)/\(run.name)", fsync: run.fsync).run(kills: run.kills)
                }
                results.add(run.name, report)
            }
        }
        var byFsync: [Bool: PowerLossRun.Report] = [:]
        for run in runs {
            let report = try results.get(run.name).get()
            print("KernelGuestTests.powerLoss \(run.name): \(report.summary)")
            byFsync[run.fsync, default: .init()].merge(report)
            #expect(report.kills == run.kills)
            #expect(report.loadFailures.isEmpty, "the state did not load: \(report.loadFailures)")
            #expect(report.impossible.isEmpty, "values beyond the last write: \(report.impossible)")
            #expect(report.writeFailures.isEmpty, "NV writes failed: \(report.writeFailures)")
        }
        let on = try #require(byFsync[true])
        let off = try #require(byFsync[false])
        #expect(on.kills >= 100)
        #expect(on.lostWrites == 0, "fsync on lost acknowledged writes: \(on.summary)")
        // The kills must land while writes are acknowledged, or they prove nothing: most of them do (a kill
        // drawn at 0 s can come before the next acknowledgement).
        #expect(on.killsWhileWriting * 4 >= on.kills * 3, "\(on.summary)")
        print("KernelGuestTests.powerLoss fsync=on:  \(on.summary)")
        print("KernelGuestTests.powerLoss fsync=off: \(off.summary)")
    }
}

/// One disk, booted and killed again and again.
struct PowerLossRun {
    let directory: String
    let fsync: Bool

    struct Report: Sendable {
        var kills = 0
        var boots = 0
        /// Acknowledged writes seen on the console before the kills.
        var acknowledged = 0
        /// Acknowledged values not found after the next boot (sum of last-ack minus value read).
        var lostWrites = 0
        /// Boots that lost at least one acknowledged write.
        var lossyBoots = 0
        var loadFailures: [String] = []
        var impossible: [String] = []
        /// NV writes the guest saw fail (vtpmd gone or refusing): the loop stops, later kills prove nothing.
        var writeFailures: [String] = []
        /// Kills after which more acknowledgements were on the console than when the wait for the kill began.
        var killsWhileWriting = 0
        var bootSeconds: Double = 0

        mutating func merge(_ other: Report) {
            self.kills += other.kills
            self.boots += other.boots
            self.acknowledged += other.acknowledged
            self.lostWrites += other.lostWrites
            self.lossyBoots += other.lossyBoots
            self.loadFailures += other.loadFailures
            self.impossible += other.impossible
            self.writeFailures += other.writeFailures
            self.killsWhileWriting += other.killsWhileWriting
            self.bootSeconds += other.bootSeconds
        }

        var summary: String {
            let boot = self.boots > 0 ? String(format: "%.1f", self.bootSeconds / Double(self.boots)) : "-"
            return "\(self.kills) kills (\(self.killsWhileWriting) while writes were acknowledged), "
                + "\(self.acknowledged) acknowledged writes, \(self.lostWrites) lost "
                + "(after \(self.lossyBoots) of \(self.kills) kills), \(self.loadFailures.count) loads failed, "
                + "boot to state loaded \(boot) s"
        }
    }

    func run(kills: Int) throws -> Report {
        try FileManager.default.createDirectory(atPath: self.directory, withIntermediateDirectories: true)
        let disk = "\(self.directory)/disk.raw"
        try KernelGuest.makeDisk(disk, megabytes: 48)
        var report = Report()
        var lastAck: Int? = nil
        let clock = ContinuousClock()
        for cycle in 0...kills {
            let started = clock.now
            let guest = try KernelGuest.boot(
                dir: self.directory,
                disk: disk,
                run: "powerloss",
                extra: "vtpm.fsync=\(self.fsync ? "on" : "off")"
            )
            defer { guest.kill() }
            let line = try guest.waitForAny(["PL-LOADED ", "PL-FAIL"], timeout: .seconds(90))
            report.boots += 1
            guard line.hasPrefix("PL-LOADED "), let value = Int(line.dropFirst("PL-LOADED ".count)) else {
                report.loadFailures.append("boot \(cycle): \(line)\n\(guest.transcriptTail(lines: 15))")
                break
            }
            let elapsed = clock.now - started
            report.bootSeconds += Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            if let lastAck {
                if value < lastAck {
                    report.lostWrites += lastAck - value
                    report.lossyBoots += 1
                }
                // At most the write in flight at the kill can be there beyond the last acknowledgement.
                if value > lastAck + 1 { report.impossible.append("boot \(cycle): read \(value), last ack \(lastAck)") }
            }
            if cycle == kills { break }
            _ = try guest.waitForConsole("PL-ACK ", timeout: .seconds(30))
            let acknowledgedBefore = Self.acknowledged(in: guest.transcript, after: value).count
            // With fsync off, kills up to 8 s in: ext4 commits its journal every 5 s, so some boots get their
            // writes on the disk (written by the kernel, not by vtpmd) and the state read back is old or new.
            Thread.sleep(forTimeInterval: Double.random(in: self.fsync ? 0...1.5 : 0...8))
            guest.kill()
            // Everything QEMU wrote before it died, read to the end.
            guest.console.waitForEnd(timeout: .seconds(10))
            report.kills += 1
            if let failure = guest.transcript.split(separator: "\n").first(where: { $0.hasPrefix("PL-FAIL") }) {
                report.writeFailures.append("boot \(cycle): \(failure)")
            }
            let acks = Self.acknowledged(in: guest.transcript, after: value)
            // The kill came while writes were being acknowledged, not after the loop had stopped.
            if acks.count > acknowledgedBefore { report.killsWhileWriting += 1 }
            report.acknowledged += acks.count
            lastAck = acks.last ?? value
        }
        return report
    }

    /// The values of the complete `PL-ACK n` lines (a line cut by the kill does not count).
    static func acknowledged(in transcript: String, after loaded: Int) -> [Int] {
        transcript.split(separator: "\n", omittingEmptySubsequences: false).dropLast().compactMap { line in
            guard line.hasPrefix("PL-ACK "), let n = Int(line.dropFirst("PL-ACK ".count)), n > loaded else {
                return nil
            }
            return n
        }
    }
}

/// The kernel guest's image, disks and boots.
enum KernelGuest {
    /// `VTPM_KERNEL_GUEST_DIR` (set by `make kernel-test`): the image from qemu/build-kernel-guest.sh.
    static var directory: String? {
        guard GuestImage.hostCanRunGuests,
            let dir = ProcessInfo.processInfo.environment["VTPM_KERNEL_GUEST_DIR"], !dir.isEmpty
        else { return nil }
        return dir
    }

    static func image() throws -> GuestImage {
        let dir = try #require(self.directory)
        let image = GuestImage(kernel: "\(dir)/vmlinuz", initrd: "\(dir)/initrd.img")
        #expect(FileManager.default.isReadableFile(atPath: image.initrd), "no kernel guest in \(dir)")
        return image
    }

    /// Boots the image without a TPM device, with `disk` (raw) as /dev/vda and `vtpm.run=<run>`.
    static func boot(dir: String, disk: String, run: String, extra: String = "") throws -> QEMUGuest {
        var configuration = QEMUGuest.Configuration(
            directory: dir,
            image: try self.image(),
            tpmSocket: nil,
            extraArguments: [
                "-drive", "file=\(disk),if=none,id=disk0,format=raw",
                "-device", "virtio-blk-pci,drive=disk0", "-no-reboot",
            ]
        )
        configuration.memoryMiB = 768
        configuration.kernelCommandLine = "console=ttyS0 quiet loglevel=3 panic=-1 vtpm.notpm vtpm.run=\(run) \(extra)"
        return try QEMUGuest.launch(configuration)
    }

    /// A raw disk with an ext4 file system made on the host (mkfs.ext4 writes an image file as any user).
    static func makeDisk(_ path: String, megabytes: Int) throws {
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.truncate(atOffset: UInt64(megabytes) << 20)
        try handle.close()
        let process = Process()
        process.executableURL = try ExecutableLookup.find("mkfs.ext4")
        process.arguments = ["-q", "-F", path]
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "mkfs.ext4 \(path) failed")
    }

    static func scratch() throws -> String {
        let dir = "/tmp/vtpm-kernel-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    static func remove(_ dir: String) {
        if ProcessInfo.processInfo.environment["VTPM_KEEP_TEST_DIRS"] == nil {
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    /// Results of runs on concurrent threads.
    final class Results: Sendable {
        private let storage = Mutex<[String: Result<PowerLossRun.Report, any Error>]>([:])
        func add(_ name: String, _ result: Result<PowerLossRun.Report, any Error>) {
            self.storage.withLock { $0[name] = result }
        }
        func get(_ name: String) throws -> Result<PowerLossRun.Report, any Error> {
            try #require(self.storage.withLock { $0[name] })
        }
    }
}

extension QEMUGuest {
    /// Waits for the first of `markers` at the start of a console line; returns that line.
    func waitForAny(_ markers: [String], timeout: Duration) throws -> String {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            // Complete lines only: the last element is what follows the last newline.
            for line in self.transcript.split(separator: "\n", omittingEmptySubsequences: false).dropLast() {
                if markers.contains(where: { line.hasPrefix($0) }) { return String(line) }
            }
            guard self.isRunning else { break }
            Thread.sleep(forTimeInterval: 0.05)
        }
        return "no \(markers) within \(timeout): \(self.transcriptTail(lines: 20))"
    }
}
