public import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A swtpm-compatible TPM backend (`swtpm socket` or `vtpmd socket`) running as a child process
/// of the test, in the foreground (no `--daemon`), so the test owns its pid and its output.
///
/// Command line: `<executable> socket --tpm2 --tpmstate dir=<stateDirectory>
/// --ctrl type=unixio,path=<controlSocket> --log file=<logFile>,level=<logLevel> <extraArguments>`.
public final class TPMBackendProcess: Sendable {
    /// The resolved executable.
    public let executable: URL
    /// The full argument list after the executable.
    public let arguments: [String]
    /// `--tpmstate dir=`.
    public let stateDirectory: String
    /// `--ctrl type=unixio,path=`: hand this to `QEMUGuest.Configuration.tpmSocket`.
    public let controlSocket: String
    /// `--log file=`.
    public let logFile: String

    private let process: Process
    private let stdout: PipeCollector
    private let stderr: PipeCollector

    /// The backend named by `VTPM_TEST_BACKEND` (a name looked up in `PATH`, or a path);
    /// vtpmd as built by `swift build` when unset (set it to `swtpm` to check the tests themselves).
    public static var defaultExecutable: String {
        let value = ProcessInfo.processInfo.environment["VTPM_TEST_BACKEND"] ?? ""
        return value.isEmpty ? Binaries.vtpmd : value
    }

    /// Starts the backend and waits until its control socket exists.
    /// - Parameters:
    ///   - executable: program name or path; default `defaultExecutable`.
    ///   - directory: a directory for the state dir (`tpmstate/`), `ctrl.sock` and `backend.log`
    ///     unless given explicitly. Keep it short: UNIX socket paths are limited to 107 bytes.
    ///   - stateDirectory: override of the state directory (created if missing).
    ///   - extraArguments: appended, e.g. `["--flags", "not-need-init"]`.
    ///   - logLevel: `--log level=`; 20 logs every control and data message.
    ///   - timeout: how long to wait for the control socket.
    /// - Throws: `QEMUGuestError` when the program is missing, exits early or creates no socket.
    public init(
        executable: String = TPMBackendProcess.defaultExecutable,
        directory: String,
        stateDirectory: String? = nil,
        extraArguments: [String] = [],
        logLevel: Int = 20,
        timeout: Duration = .seconds(15)
    ) throws {
        let fm = FileManager.default
        let dir = URL(fileURLWithPath: directory).standardizedFileURL.path
        let state = stateDirectory.map { URL(fileURLWithPath: $0).standardizedFileURL.path } ?? "\(dir)/tpmstate"
        try? fm.createDirectory(atPath: state, withIntermediateDirectories: true)
        self.executable = try ExecutableLookup.find(executable)
        self.stateDirectory = state
        self.controlSocket = "\(dir)/ctrl.sock"
        self.logFile = "\(dir)/backend.log"
        try? fm.removeItem(atPath: controlSocket)
        self.arguments =
            [
                "socket", "--tpm2",
                "--tpmstate", "dir=\(state)",
                "--ctrl", "type=unixio,path=\(controlSocket)",
                "--log", "file=\(logFile),level=\(logLevel)",
            ] + extraArguments

        let process = Process()
        process.executableURL = self.executable
        process.arguments = arguments
        process.environment = testEnvironment([:])
        process.currentDirectoryURL = URL(fileURLWithPath: dir)
        let out = Pipe()
        let err = Pipe()
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = out
        process.standardError = err
        do {
            try process.run()
        } catch {
            throw QEMUGuestError(.launchFailed, "cannot start \(self.executable.path): \(error)")
        }
        self.process = process
        stdout = PipeCollector(reading: out.fileHandleForReading, name: "backend-stdout")
        stderr = PipeCollector(reading: err.fileHandleForReading, name: "backend-stderr")

        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while !fm.fileExists(atPath: controlSocket) {
            if !process.isRunning {
                _ = ExecutableLookup.waitForExit(process, timeout: .seconds(1))
                throw QEMUGuestError(
                    .exited,
                    "\(commandLine) exited with \(process.terminationStatus) before creating its socket; "
                        + "output: \(output)"
                )
            }
            if clock.now >= deadline {
                ExecutableLookup.stop(process)
                throw QEMUGuestError(.timeout, "\(commandLine) created no socket within \(timeout); output: \(output)")
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
    }

    deinit { ExecutableLookup.stop(process, grace: .seconds(2)) }

    /// The command line, for messages.
    public var commandLine: String { ([executable.path] + arguments).joined(separator: " ") }

    /// The backend's process id.
    public var pid: Int32 { process.processIdentifier }

    /// Whether the backend still runs.
    public var isRunning: Bool { process.isRunning }

    /// Exit status once it exited (the signal number if it was killed), else nil.
    public var exitStatus: Int32? { process.isRunning ? nil : process.terminationStatus }

    /// What the backend printed on stdout and stderr.
    public var output: String { stdout.text + stderr.text }

    /// The log file's contents (empty when it does not exist yet).
    public var log: String { (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? "" }

    /// Waits for the backend to exit by itself (e.g. after QEMU's CMD_SHUTDOWN on `quit`).
    /// - Returns: the exit status.
    /// - Throws: `QEMUGuestError(.timeout)`.
    @discardableResult
    public func waitForExit(timeout: Duration = .seconds(15)) throws -> Int32 {
        guard ExecutableLookup.waitForExit(process, timeout: timeout) else {
            throw QEMUGuestError(
                .timeout,
                "\(executable.lastPathComponent) (pid \(pid)) still running after \(timeout)"
            )
        }
        return process.terminationStatus
    }

    /// SIGTERM (swtpm exits 0, removing its socket and pid file), SIGKILL after `grace`.
    public func terminate(grace: Duration = .seconds(5)) {
        ExecutableLookup.stop(process, grace: grace)
    }

    /// SIGKILL at once (a crash: no cleanup in the backend).
    public func kill() {
        ExecutableLookup.send(SIGKILL, to: process.processIdentifier)
        _ = ExecutableLookup.waitForExit(process, timeout: .seconds(5))
    }
}
