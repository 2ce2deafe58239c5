public import Foundation
import Synchronization

/// The kernel and initramfs of the test guest that `qemu/build-guest.sh` makes.
///
/// `GuestImage.locate()` uses `$VTPM_GUEST_DIR` when set (a directory holding `vmlinuz` and
/// `initrd.img`, used as is), otherwise `<repo>/qemu/out`, (re)building it when the files are
/// missing or older than the build script. Builds are serialized within the process by a mutex
/// and across processes by `flock(1)` on `<dir>/.build.lock`.
public struct GuestImage: Sendable, Hashable {
    /// Path of the kernel image.
    public let kernel: String
    /// Path of the gzip'd cpio initramfs.
    public let initrd: String

    /// Uses an explicit kernel and initramfs.
    public init(kernel: String, initrd: String) {
        self.kernel = kernel
        self.initrd = initrd
    }

    private static let buildLock = Mutex(())

    /// Finds the guest image, building it first when needed.
    /// - Parameters:
    ///   - repositoryRoot: the checkout (default: found from this file's location).
    ///   - timeout: limit for a build.
    /// - Throws: `QEMUGuestError(.imageUnavailable)` when the image cannot be found or built.
    public static func locate(
        repositoryRoot: URL? = RepositoryRoot.find(),
        timeout: Duration = .seconds(300)
    ) throws -> GuestImage {
        let fm = FileManager.default
        if let dir = ProcessInfo.processInfo.environment["VTPM_GUEST_DIR"], !dir.isEmpty {
            let image = GuestImage(kernel: "\(dir)/vmlinuz", initrd: "\(dir)/initrd.img")
            guard fm.isReadableFile(atPath: image.kernel), fm.isReadableFile(atPath: image.initrd) else {
                throw QEMUGuestError(.imageUnavailable, "VTPM_GUEST_DIR=\(dir) lacks vmlinuz or initrd.img")
            }
            return image
        }
        guard let root = repositoryRoot else {
            throw QEMUGuestError(
                .imageUnavailable,
                "cannot find the repository root (no Package.swift above \(#filePath))"
            )
        }
        let script = root.appendingPathComponent("qemu/build-guest.sh").path
        let outDir = root.appendingPathComponent("qemu/out").path
        let image = GuestImage(kernel: "\(outDir)/vmlinuz", initrd: "\(outDir)/initrd.img")

        return try buildLock.withLock { _ in
            if isFresh(image, script: script) { return image }
            guard fm.isExecutableFile(atPath: script) else {
                throw QEMUGuestError(.imageUnavailable, "\(script) missing or not executable")
            }
            try? fm.createDirectory(atPath: outDir, withIntermediateDirectories: true)
            let process = Process()
            process.executableURL = try ExecutableLookup.find("flock")
            process.arguments = ["\(outDir)/.build.lock", script, outDir]
            let out = Pipe()
            process.standardInput = FileHandle.nullDevice
            process.standardOutput = out
            process.standardError = out
            do {
                try process.run()
            } catch {
                throw QEMUGuestError(.imageUnavailable, "cannot run \(script): \(error)")
            }
            let log = PipeCollector(reading: out.fileHandleForReading, name: "build-guest")
            guard ExecutableLookup.waitForExit(process, timeout: timeout) else {
                ExecutableLookup.stop(process)
                throw QEMUGuestError(.imageUnavailable, "\(script) did not finish within \(timeout): \(log.text)")
            }
            guard process.terminationStatus == 0, isFresh(image, script: script) else {
                log.waitUntilFinished(timeout: .seconds(2))
                throw QEMUGuestError(
                    .imageUnavailable,
                    "\(script) \(outDir) failed with status \(process.terminationStatus): \(log.text)"
                )
            }
            return image
        }
    }

    /// Whether `qemu-system-x86_64`, `socat` and an installed kernel are present, i.e. whether
    /// guest tests can run on this host at all. Use with `.enabled(if: GuestImage.hostCanRunGuests)`.
    public static var hostCanRunGuests: Bool {
        guard ExecutableLookup.exists("qemu-system-x86_64"), ExecutableLookup.exists("socat") else { return false }
        if let dir = ProcessInfo.processInfo.environment["VTPM_GUEST_DIR"], !dir.isEmpty { return true }
        let boot = (try? FileManager.default.contentsOfDirectory(atPath: "/boot")) ?? []
        return boot.contains { $0.hasPrefix("vmlinuz-") }
    }

    private static func isFresh(_ image: GuestImage, script: String) -> Bool {
        let fm = FileManager.default
        guard let initrd = try? fm.attributesOfItem(atPath: image.initrd)[.modificationDate] as? Date,
            fm.isReadableFile(atPath: image.kernel)
        else { return false }
        guard let scriptDate = try? fm.attributesOfItem(atPath: script)[.modificationDate] as? Date else {
            return true  // no script to compare with: take what is there
        }
        return initrd >= scriptDate
    }
}

/// Finds the package checkout from a source file's location.
public enum RepositoryRoot {
    /// Walks up from `filePath` to the first directory that holds `Package.swift`.
    /// - Parameter filePath: pass `#filePath` from a test file (the default is this file).
    /// - Returns: the directory, or nil.
    public static func find(from filePath: String = #filePath) -> URL? {
        var dir = URL(fileURLWithPath: filePath).deletingLastPathComponent()
        while dir.path != "/" && !dir.path.isEmpty {
            if FileManager.default.fileExists(atPath: dir.appendingPathComponent("Package.swift").path) {
                return dir
            }
            dir = dir.deletingLastPathComponent()
        }
        return nil
    }
}
