package import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Finding executables and small process helpers shared by the guest harness.
package enum ExecutableLookup {
    /// Resolves a program name through `PATH`, or checks a path (anything containing `/`).
    /// - Throws: `QEMUGuestError(.launchFailed)` when nothing executable is found.
    package static func find(_ nameOrPath: String) throws -> URL {
        let fm = FileManager.default
        if nameOrPath.contains("/") {
            guard fm.isExecutableFile(atPath: nameOrPath) else {
                throw QEMUGuestError(.launchFailed, "\(nameOrPath) is not an executable file")
            }
            return URL(fileURLWithPath: nameOrPath)
        }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        let dirs: [String] = path.split(separator: ":").map { String($0) } + ["/usr/sbin", "/sbin"]
        for dir in dirs {
            let candidate = "\(dir)/\(nameOrPath)"
            if fm.isExecutableFile(atPath: candidate) { return URL(fileURLWithPath: candidate) }
        }
        throw QEMUGuestError(.launchFailed, "\(nameOrPath) not found in PATH (\(path))")
    }

    /// Whether `find` would succeed.
    package static func exists(_ nameOrPath: String) -> Bool { (try? find(nameOrPath)) != nil }

    /// Makes writes to a pipe whose reader is gone fail with EPIPE instead of killing the test
    /// process with SIGPIPE (QEMU or socat may die while we type into them).
    package static func ignoreSIGPIPE() {
        _ = signal(SIGPIPE, SIG_IGN)
    }

    /// Sends `signal` to `pid`. Wraps `kill`.
    package static func send(_ signalNumber: Int32, to pid: Int32) {
        guard pid > 0 else { return }
        _ = kill(pid, signalNumber)
    }

    /// Waits until `process` exited or the timeout passed.
    /// - Returns: true when it exited.
    package static func waitForExit(_ process: Process, timeout: Duration) -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while process.isRunning {
            if clock.now >= deadline { return false }
            Thread.sleep(forTimeInterval: 0.02)
        }
        return true
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL and wait again.
    package static func stop(_ process: Process, grace: Duration = .seconds(5)) {
        guard process.isRunning else { return }
        send(SIGTERM, to: process.processIdentifier)
        if waitForExit(process, timeout: grace) { return }
        send(SIGKILL, to: process.processIdentifier)
        _ = waitForExit(process, timeout: .seconds(5))
    }

    /// A short random hexadecimal token for unique marker lines and file names.
    package static func randomToken(bytes: Int = 6) -> String {
        var rng = SystemRandomNumberGenerator()
        return (0..<bytes).map { _ in
            let b = UInt8.random(in: 0...255, using: &rng)
            return String(b, radix: 16).count == 1 ? "0" + String(b, radix: 16) : String(b, radix: 16)
        }.joined()
    }
}
