import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The TPM front end QEMU exposes to the guest.
public enum TPMDeviceModel: String, Sendable, CaseIterable {
    /// `-device tpm-crb` (CRB interface; 3968-byte buffer).
    case crb = "tpm-crb"
    /// `-device tpm-tis` (TIS interface; 4096-byte buffer).
    case tis = "tpm-tis"
}

/// One QEMU 7.2 x86_64 guest (q35, TCG) booted from the test image, with its serial console on
/// QEMU's stdio (driven through pipes) and QMP on a UNIX socket.
///
/// Typical use:
/// ```swift
/// let backend = try TPMBackendProcess(directory: dir)
/// let guest = try QEMUGuest.launch(.init(directory: dir, image: try GuestImage.locate(),
///                                        tpmSocket: backend.controlSocket))
/// try guest.waitForReady()
/// let (out, status) = try guest.run("tpm2_getrandom 8 --hex")
/// try guest.savevm("s1")
/// try guest.quit()
/// ```
/// Every call has a timeout and throws `QEMUGuestError` (with a tail of the console) instead of
/// hanging. The guest is killed when the object is released. The methods block the calling thread
/// (they poll); run guest tests in `.serialized` suites, a TCG guest wants a whole CPU.
public final class QEMUGuest: Sendable {
    /// How to start QEMU.
    public struct Configuration: Sendable {
        /// Kernel and initramfs.
        public var image: GuestImage
        /// The backend's control socket (`-chardev socket,path=`); nil boots without a TPM.
        public var tpmSocket: String?
        /// `tpm-crb` or `tpm-tis`.
        public var deviceModel: TPMDeviceModel
        /// A qcow2 image attached as virtio-blk (`/dev/vda`, mounted on `/data` in the guest).
        /// savevm/loadvm need one. See `createDisk(at:size:)`.
        public var disk: String?
        /// QMP socket path (`-qmp unix:<path>,server=on,wait=off`).
        public var qmpSocket: String
        /// When set, the serial console is also written to this file as it arrives.
        public var serialLog: String?
        /// Appended to the command line, e.g. `["-loadvm", "s1"]`, `["-incoming", "unix:/p"]`, `["-S"]`.
        public var extraArguments: [String]
        /// Guest RAM in MiB.
        public var memoryMiB: Int
        /// Kernel command line.
        public var kernelCommandLine: String
        /// The QEMU program.
        public var qemuExecutable: String

        /// Creates a configuration with every path explicit.
        public init(
            image: GuestImage,
            tpmSocket: String?,
            qmpSocket: String,
            deviceModel: TPMDeviceModel = .crb,
            disk: String? = nil,
            serialLog: String? = nil,
            extraArguments: [String] = [],
            memoryMiB: Int = 512,
            kernelCommandLine: String = "console=ttyS0 quiet loglevel=3 panic=-1",
            qemuExecutable: String = "qemu-system-x86_64"
        ) {
            self.image = image
            self.tpmSocket = tpmSocket
            self.qmpSocket = qmpSocket
            self.deviceModel = deviceModel
            self.disk = disk
            self.serialLog = serialLog
            self.extraArguments = extraArguments
            self.memoryMiB = memoryMiB
            self.kernelCommandLine = kernelCommandLine
            self.qemuExecutable = qemuExecutable
        }

        /// Creates a configuration whose files live in `directory`: `<directory>/qmp.sock`,
        /// `<directory>/serial.log`, and `disk` when given (see `createDisk`).
        public init(
            directory: String,
            image: GuestImage,
            tpmSocket: String?,
            deviceModel: TPMDeviceModel = .crb,
            disk: String? = nil,
            extraArguments: [String] = []
        ) {
            self.init(
                image: image,
                tpmSocket: tpmSocket,
                qmpSocket: "\(directory)/qmp.sock",
                deviceModel: deviceModel,
                disk: disk,
                serialLog: "\(directory)/serial.log",
                extraArguments: extraArguments
            )
        }

        /// The QEMU arguments (after the program name).
        public var arguments: [String] {
            var args = [
                "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1",
                "-m", String(memoryMiB),
                "-display", "none", "-no-user-config", "-nodefaults",
                "-chardev", "stdio,id=serial0,signal=off",
                "-serial", "chardev:serial0",
                "-kernel", image.kernel, "-initrd", image.initrd,
                "-append", kernelCommandLine,
                "-qmp", "unix:\(qmpSocket),server=on,wait=off",
            ]
            if let tpmSocket {
                args += [
                    "-chardev", "socket,id=chrtpm,path=\(tpmSocket)",
                    "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
                    "-device", "\(deviceModel.rawValue),tpmdev=tpm0",
                ]
            }
            if let disk {
                args += [
                    "-drive", "file=\(disk),if=none,id=disk0,format=qcow2",
                    "-device", "virtio-blk-pci,drive=disk0",
                ]
            }
            return args + extraArguments
        }
    }

    /// The line the guest's init prints once /dev/tpmrm0 exists and /data is mounted.
    public static let readyMarker = "VTPM-GUEST-READY"

    /// How QEMU was started.
    public let configuration: Configuration
    /// The QMP connection (also reachable through `qmp`, `hmp`, `events`).
    public let qmpClient: QMPClient

    private let process: Process
    private let stderr: PipeCollector
    /// The serial console.
    public let console: GuestConsole

    private init(
        configuration: Configuration,
        process: Process,
        serialInput: FileHandle,
        serial: PipeCollector,
        stderr: PipeCollector,
        qmp: QMPClient
    ) {
        self.configuration = configuration
        self.process = process
        self.stderr = stderr
        self.qmpClient = qmp
        self.console = GuestConsole(
            input: serialInput,
            output: serial,
            isAlive: { process.isRunning },
            context: {
                var lines: [String] = []
                if !process.isRunning { lines.append("QEMU exited with status \(process.terminationStatus)") }
                if !stderr.text.isEmpty { lines.append("QEMU stderr:\n\(stderr.text)") }
                return lines.joined(separator: "\n")
            }
        )
    }

    deinit {
        qmpClient.close()
        if process.isRunning {
            ExecutableLookup.send(SIGKILL, to: process.processIdentifier)
            _ = ExecutableLookup.waitForExit(process, timeout: .seconds(5))
        }
    }

    // MARK: - Lifecycle

    /// Starts QEMU and connects to QMP (the guest is not waited for: see `waitForReady`).
    /// - Parameters:
    ///   - configuration: what to start.
    ///   - timeout: how long QEMU may take to create its QMP socket.
    /// - Throws: `QEMUGuestError` when QEMU is missing, exits at once (bad arguments, TPM socket
    ///   not listening, missing snapshot for `-loadvm`, ...: the message has QEMU's stderr), or QMP fails.
    public static func launch(_ configuration: Configuration, timeout: Duration = .seconds(30)) throws -> QEMUGuest {
        let fm = FileManager.default
        try? fm.removeItem(atPath: configuration.qmpSocket)
        let process = Process()
        process.executableURL = try ExecutableLookup.find(configuration.qemuExecutable)
        process.arguments = configuration.arguments
        let stdinPipe = Pipe()
        let stdoutPipe = Pipe()
        let stderrPipe = Pipe()
        process.standardInput = stdinPipe
        process.standardOutput = stdoutPipe
        process.standardError = stderrPipe
        ExecutableLookup.ignoreSIGPIPE()
        let commandLine = ([process.executableURL?.path ?? ""] + configuration.arguments).joined(separator: " ")
        do {
            try process.run()
        } catch {
            throw QEMUGuestError(.launchFailed, "cannot start \(commandLine): \(error)")
        }
        let serial = PipeCollector(
            reading: stdoutPipe.fileHandleForReading,
            mirrorPath: configuration.serialLog,
            name: "qemu-serial"
        )
        let stderr = PipeCollector(reading: stderrPipe.fileHandleForReading, name: "qemu-stderr")

        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while !fm.fileExists(atPath: configuration.qmpSocket) {
            if !process.isRunning {
                stderr.waitUntilFinished(timeout: .seconds(2))
                throw QEMUGuestError(
                    .exited,
                    "QEMU exited with status \(process.terminationStatus) at startup: \(stderr.text)\n"
                        + "command: \(commandLine)"
                )
            }
            if clock.now >= deadline {
                ExecutableLookup.stop(process)
                throw QEMUGuestError(.timeout, "QEMU created no QMP socket within \(timeout): \(stderr.text)")
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
        let qmp: QMPClient
        do {
            qmp = try QMPClient(socketPath: configuration.qmpSocket, timeout: max(deadline - clock.now, .seconds(10)))
        } catch {
            if ExecutableLookup.waitForExit(process, timeout: .seconds(2)) {
                stderr.waitUntilFinished(timeout: .seconds(2))
                throw QEMUGuestError(
                    .exited,
                    "QEMU exited with status \(process.terminationStatus) at startup: \(stderr.text)\n"
                        + "command: \(commandLine)"
                )
            }
            ExecutableLookup.stop(process)
            throw QEMUGuestError(.qmpFailed, "\(error); QEMU stderr: \(stderr.text)")
        }
        return QEMUGuest(
            configuration: configuration,
            process: process,
            serialInput: stdinPipe.fileHandleForWriting,
            serial: serial,
            stderr: stderr,
            qmp: qmp
        )
    }

    /// Waits for the guest's ready line (`VTPM-GUEST-READY`, printed by init after a boot or
    /// reboot), then prepares the shell for `run`; see ``GuestConsole/waitForReady(timeout:)``.
    public func waitForReady(timeout: Duration = .seconds(120)) throws { try console.waitForReady(timeout: timeout) }

    /// Checks that the guest shell answers a command (a guest that resumes rather than boots).
    public func waitForShell(timeout: Duration = .seconds(60)) throws { try console.waitForShell(timeout: timeout) }

    /// Waits until `text` appears on the console; see ``GuestConsole/waitForConsole(_:timeout:)``.
    @discardableResult
    public func waitForConsole(_ text: String, timeout: Duration = .seconds(60)) throws -> String {
        try console.waitForConsole(text, timeout: timeout)
    }

    /// Runs a shell command in the guest; see ``GuestConsole/run(_:timeout:)``.
    public func run(_ command: String, timeout: Duration = .seconds(60)) throws -> (output: String, status: Int32) {
        try console.run(command, timeout: timeout)
    }

    /// Runs a command and requires exit status 0.
    @discardableResult
    public func check(_ command: String, timeout: Duration = .seconds(60)) throws -> String {
        try console.check(command, timeout: timeout)
    }

    /// Types raw text on the serial console (no newline added).
    public func type(_ text: String) throws { try console.type(text) }

    // MARK: - QMP / HMP

    /// Sends a QMP command.
    /// - Returns: the reply object; the result is in `reply["return"]`.
    /// - Throws: `QEMUGuestError(.qmpError)` for an error reply, `.timeout`, `.qmpFailed`.
    @discardableResult
    public func qmp(
        _ execute: String,
        arguments: [String: Any]? = nil,
        timeout: Duration = .seconds(60)
    ) throws -> [String: Any] {
        try qmpClient.execute(execute, arguments: arguments, timeout: timeout)
    }

    /// Runs an HMP command through QMP `human-monitor-command`.
    /// - Returns: HMP's text output (HMP reports most failures as text, not as QMP errors).
    @discardableResult
    public func hmp(_ commandLine: String, timeout: Duration = .seconds(120)) throws -> String {
        let reply = try qmp("human-monitor-command", arguments: ["command-line": commandLine], timeout: timeout)
        return reply["return"] as? String ?? ""
    }

    /// HMP `savevm <name>` (needs the qcow2 disk); throws when HMP prints anything (an error).
    public func savevm(_ name: String, timeout: Duration = .seconds(120)) throws {
        let out = try hmp("savevm \(name)", timeout: timeout)
        guard out.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
            throw QEMUGuestError(.qmpError, "savevm \(name): \(out)")
        }
    }

    /// HMP `loadvm <name>`; throws when HMP prints anything (an error). The guest continues from
    /// the snapshot: use `waitForShell`, not `waitForReady`, afterwards.
    public func loadvm(_ name: String, timeout: Duration = .seconds(120)) throws {
        let out = try hmp("loadvm \(name)", timeout: timeout)
        guard out.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
            throw QEMUGuestError(.qmpError, "loadvm \(name): \(out)")
        }
    }

    /// The run state from `query-status` (`running`, `paused`, `inmigrate`, `postmigrate`, ...).
    public func runState() throws -> String {
        let reply = try qmp("query-status")
        return (reply["return"] as? [String: Any])?["status"] as? String ?? "?"
    }

    /// Waits until `query-status` reports `state` (e.g. `running` on a migration destination).
    /// - Throws: `QEMUGuestError(.timeout)` with the last state seen.
    public func waitForRunState(_ state: String, timeout: Duration = .seconds(60)) throws {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        var last = ""
        while true {
            last = try runState()
            if last == state { return }
            if clock.now >= deadline {
                throw failure(.timeout, "run state still \(last), not \(state), after \(timeout)")
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
    }

    /// QMP `migrate` to `uri` (`unix:/path`, `exec:cat > file`, ...) and wait until
    /// `query-migrate` says `completed`. The source ends in run state `postmigrate`.
    /// - Throws: `QEMUGuestError(.qmpError)` when the migration fails (QEMU's error-desc in the
    ///   message), `.timeout`.
    public func migrate(to uri: String, timeout: Duration = .seconds(120)) throws {
        try qmp("migrate", arguments: ["uri": uri])
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while true {
            let info = try qmp("query-migrate")["return"] as? [String: Any] ?? [:]
            let status = info["status"] as? String ?? "?"
            switch status {
            case "completed":
                return
            case "failed", "cancelled":
                let desc = info["error-desc"] as? String ?? ""
                throw failure(.qmpError, "migration to \(uri) \(status): \(desc)")
            default:
                if clock.now >= deadline {
                    throw failure(.timeout, "migration to \(uri) still \(status) after \(timeout)")
                }
                Thread.sleep(forTimeInterval: 0.05)
            }
        }
    }

    /// The QMP events received so far.
    public var events: [[String: Any]] { qmpClient.events }

    // MARK: - Exit

    /// QMP `quit` and wait for QEMU to exit (QEMU sends CMD_SHUTDOWN to the backend on the way).
    /// - Returns: QEMU's exit status.
    @discardableResult
    public func quit(timeout: Duration = .seconds(30)) throws -> Int32 {
        if process.isRunning {
            do {
                try qmp("quit", timeout: timeout)
            } catch let error as QEMUGuestError where error.code == .qmpFailed {
                // the connection may close before the reply arrives
            }
        }
        return try waitForExit(timeout: timeout)
    }

    /// SIGKILL QEMU at once (the backend sees its connections drop, no CMD_SHUTDOWN).
    public func kill() {
        ExecutableLookup.send(SIGKILL, to: process.processIdentifier)
        _ = ExecutableLookup.waitForExit(process, timeout: .seconds(10))
        qmpClient.close()
    }

    /// Waits for QEMU to exit.
    /// - Returns: the exit status (the signal number when killed).
    /// - Throws: `QEMUGuestError(.timeout)`.
    @discardableResult
    public func waitForExit(timeout: Duration = .seconds(30)) throws -> Int32 {
        guard ExecutableLookup.waitForExit(process, timeout: timeout) else {
            throw failure(.timeout, "QEMU (pid \(pid)) still running after \(timeout)")
        }
        qmpClient.close()
        return process.terminationStatus
    }

    /// Whether QEMU still runs.
    public var isRunning: Bool { process.isRunning }

    /// QEMU's process id.
    public var pid: Int32 { process.processIdentifier }

    // MARK: - Diagnostics

    /// Everything the guest wrote on its serial console so far (`\r` removed).
    public var transcript: String { console.transcript }

    /// The commands given to `run`/`check` so far, oldest first (the console does not echo them).
    public var history: [String] { console.history }

    /// QEMU's own stderr (warnings, errors).
    public var qemuStderr: String { stderr.text }

    /// The last `lines` lines of the console, for failure messages.
    public func transcriptTail(lines: Int = 40) -> String { console.transcriptTail(lines: lines) }

    private func failure(_ code: QEMUGuestError.Code, _ what: String) -> QEMUGuestError {
        console.failure(code, what)
    }

    /// Creates an empty qcow2 image with `qemu-img create -f qcow2 <path> <size>`.
    /// - Parameter size: a qemu-img size, default `64M`.
    /// - Throws: `QEMUGuestError(.launchFailed)` when qemu-img fails.
    public static func createDisk(at path: String, size: String = "64M") throws {
        let process = Process()
        process.executableURL = try ExecutableLookup.find("qemu-img")
        process.arguments = ["create", "-q", "-f", "qcow2", path, size]
        let out = Pipe()
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = out
        process.standardError = out
        try process.run()
        let log = PipeCollector(reading: out.fileHandleForReading, name: "qemu-img")
        guard ExecutableLookup.waitForExit(process, timeout: .seconds(30)), process.terminationStatus == 0 else {
            ExecutableLookup.stop(process)
            log.waitUntilFinished(timeout: .seconds(2))
            throw QEMUGuestError(.launchFailed, "qemu-img create \(path) failed: \(log.text)")
        }
    }
}
