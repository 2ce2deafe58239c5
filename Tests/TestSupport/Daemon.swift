import Foundation
import _VTPMPosix

/// Paths of the binaries under test.
public enum Binaries {
    /// vtpmd as built by `swift build` (override with the VTPMD environment variable).
    public static var vtpmd: String {
        if let path = ProcessInfo.processInfo.environment["VTPMD"], !path.isEmpty { return path }
        let root = RepositoryRoot.find()?.path ?? FileManager.default.currentDirectoryPath
        return "\(root)/.build/debug/vtpmd"
    }

    /// vtpmctl as built by `swift build` (override with the VTPMCTL environment variable).
    public static var vtpmctl: String {
        if let path = ProcessInfo.processInfo.environment["VTPMCTL"], !path.isEmpty { return path }
        let root = RepositoryRoot.find()?.path ?? FileManager.default.currentDirectoryPath
        return "\(root)/.build/debug/vtpmctl"
    }

    /// vtpm-state as built by `swift build` (override with the VTPM_STATE environment variable).
    public static var vtpmState: String {
        if let path = ProcessInfo.processInfo.environment["VTPM_STATE"], !path.isEmpty { return path }
        let root = RepositoryRoot.find()?.path ?? FileManager.default.currentDirectoryPath
        return "\(root)/.build/debug/vtpm-state"
    }
}

/// The result of a program run to completion.
public struct CommandResult: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
    public var output: String { self.stdout + self.stderr }
}

/// The environment of a program a test starts: the test process's, then `extra`; a `VTPMD_CONFIG` of "" in
/// `extra` removes it (see ``hostConfigurationOfThisHost``).
public func testEnvironment(_ extra: [String: String]) -> [String: String] {
    var env = ProcessInfo.processInfo.environment
    for (k, v) in extra { env[k] = v }
    if env["VTPMD_CONFIG"] == "" { env["VTPMD_CONFIG"] = nil }
    return env
}

/// For `environment:`: no `VTPMD_CONFIG` at all, so the program reads the host's `/etc/vtpm/vtpmd.conf` as an
/// operator's shell (or libvirtd) would. Tests that install the Debian package (`LibvirtTests`) put that file
/// in place for the length of each test; `make test` runs suites one at a time, so no other test sees it.
public let hostConfigurationOfThisHost = ["VTPMD_CONFIG": ""]

/// Runs a program to completion (with a timeout) and collects its output.
public func runCommand(
    _ executable: String,
    _ arguments: [String],
    environment: [String: String] = [:],
    timeout: Duration = .seconds(60)
) throws -> CommandResult {
    ExecutableLookup.ignoreSIGPIPE()
    let process = Process()
    process.executableURL = try ExecutableLookup.find(executable)
    process.arguments = arguments
    process.environment = testEnvironment(environment)
    let out = Pipe()
    let err = Pipe()
    process.standardInput = FileHandle.nullDevice
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let stdout = PipeCollector(reading: out.fileHandleForReading, name: "cmd-out")
    let stderr = PipeCollector(reading: err.fileHandleForReading, name: "cmd-err")
    guard ExecutableLookup.waitForExit(process, timeout: timeout) else {
        ExecutableLookup.stop(process, grace: .seconds(1))
        throw QEMUGuestError(.timeout, "\(executable) \(arguments.joined(separator: " ")) timed out")
    }
    // Let the collectors drain the pipes.
    Thread.sleep(forTimeInterval: 0.02)
    return CommandResult(status: process.terminationStatus, stdout: stdout.text, stderr: stderr.text)
}

/// A long-running child (vtpmd or swtpm with any arguments), stopped when released.
public final class Daemon: Sendable {
    private let process: Process
    private let out: PipeCollector
    private let err: PipeCollector
    public let commandLine: String

    /// Starts `executable arguments` and waits until `waitFor` exists (a socket or pid file),
    /// or, with `waitForPort`, until the TCP port accepts connections.
    public init(
        _ executable: String,
        _ arguments: [String],
        waitFor path: String? = nil,
        waitForPort port: UInt16? = nil,
        timeout: Duration = .seconds(15),
        environment: [String: String] = [:]
    ) throws {
        ExecutableLookup.ignoreSIGPIPE()
        let process = Process()
        process.executableURL = try ExecutableLookup.find(executable)
        process.arguments = arguments
        process.environment = testEnvironment(environment)
        let o = Pipe()
        let e = Pipe()
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = o
        process.standardError = e
        try process.run()
        self.process = process
        self.out = PipeCollector(reading: o.fileHandleForReading, name: "daemon-out")
        self.err = PipeCollector(reading: e.fileHandleForReading, name: "daemon-err")
        self.commandLine = ([executable] + arguments).joined(separator: " ")
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while true {
            if let path, FileManager.default.fileExists(atPath: path) {
                // A socket must accept connections; other files only need to exist.
                if path.hasSuffix(".sock") {
                    if let fd = try? Socket.connectUnix(path: path) {
                        closeDescriptor(fd)
                        break
                    }
                } else {
                    break
                }
            }
            if let port, let fd = try? Socket.connectTCP(host: "127.0.0.1", port: port) {
                closeDescriptor(fd)
                break
            }
            if path == nil && port == nil { break }
            if !process.isRunning {
                throw QEMUGuestError(
                    .exited,
                    "\(self.commandLine) exited with \(process.terminationStatus): \(self.output)"
                )
            }
            if clock.now >= deadline {
                ExecutableLookup.stop(process)
                throw QEMUGuestError(.timeout, "\(self.commandLine) not ready within \(timeout): \(self.output)")
            }
            Thread.sleep(forTimeInterval: 0.01)
        }
    }

    deinit { ExecutableLookup.stop(self.process, grace: .seconds(2)) }

    public var pid: Int32 { self.process.processIdentifier }
    public var isRunning: Bool { self.process.isRunning }
    public var output: String { self.out.text + self.err.text }

    /// Waits for the process to exit by itself; returns its status or nil on timeout.
    public func waitForExit(timeout: Duration = .seconds(10)) -> Int32? {
        ExecutableLookup.waitForExit(self.process, timeout: timeout) ? self.process.terminationStatus : nil
    }

    /// SIGTERM, then SIGKILL after `grace`; returns the exit status.
    @discardableResult
    public func stop(grace: Duration = .seconds(5)) -> Int32 {
        ExecutableLookup.stop(self.process, grace: grace)
        return self.process.terminationStatus
    }

    public func kill() {
        ExecutableLookup.send(9, to: self.process.processIdentifier)
        _ = ExecutableLookup.waitForExit(self.process, timeout: .seconds(5))
    }
}

/// A fresh temporary directory, removed afterwards. Short paths: UNIX sockets live here.
public func withTemporaryDirectory<T>(_ body: (String) throws -> T) throws -> T {
    let path = "/tmp/vt-" + ExecutableLookup.randomToken(bytes: 5)
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try body(path)
}

/// A TCP port that was free a moment ago (bind to port 0, read it back, close).
public func freePort() throws -> UInt16 {
    let fd = try Socket.listenTCP(bindAddress: "127.0.0.1", port: 0)
    defer { closeDescriptor(fd) }
    guard let port = Socket.localPort(fd) else { throw QEMUGuestError(.launchFailed, "no local port") }
    return port
}

/// Two consecutive free ports (data, control) for the swtpm TCTI, which uses port+1 for control.
public func freePortPair() throws -> UInt16 {
    for _ in 0..<50 {
        let p = try freePort()
        guard p < 65000 else { continue }
        if let fd = try? Socket.listenTCP(bindAddress: "127.0.0.1", port: p + 1) {
            closeDescriptor(fd)
            return p
        }
    }
    throw QEMUGuestError(.launchFailed, "no free port pair")
}

/// SHA-256-free file fingerprint for "unchanged" checks: the bytes themselves.
public func fileBytes(_ path: String) -> [UInt8]? {
    FileManager.default.contents(atPath: path).map { [UInt8]($0) }
}
