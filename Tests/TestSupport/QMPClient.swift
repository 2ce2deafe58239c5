import Foundation
import Synchronization

/// A minimal QMP client for one QEMU instance.
///
/// Foundation cannot open a UNIX socket without unsafe code, so the connection goes through
/// `socat - UNIX-CONNECT:<path>` with pipes. Commands carry an `id`; asynchronous events are kept
/// (as raw JSON lines) for `events` and `waitForEvent`.
public final class QMPClient: Sendable {
    private struct State {
        var consumed = 0
        var greeting: String?
        var replies: [Int: String] = [:]
        var events: [String] = []
        var nextID = 1
    }

    private let socat: Process
    private let input: FileHandle
    private let output: PipeCollector
    private let errors: PipeCollector
    private let state = Mutex(State())
    private let writeLock = Mutex(())
    private let refreshLock = Mutex(())
    /// The QMP socket path.
    public let socketPath: String

    /// Connects to a QMP socket and negotiates capabilities.
    /// - Parameters:
    ///   - socketPath: the path given to `-qmp unix:<path>,server=on,wait=off`.
    ///   - timeout: how long to wait for the socket, the greeting and the handshake.
    /// - Throws: `QEMUGuestError` when socat cannot be started or QEMU does not answer.
    public init(socketPath: String, timeout: Duration = .seconds(30)) throws {
        self.socketPath = socketPath
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while !FileManager.default.fileExists(atPath: socketPath) {
            guard clock.now < deadline else {
                throw QEMUGuestError(.timeout, "QMP socket \(socketPath) did not appear within \(timeout)")
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
        let socatURL = try ExecutableLookup.find("socat")
        let process = Process()
        process.executableURL = socatURL
        process.arguments = ["-", "UNIX-CONNECT:\(socketPath)"]
        let stdinPipe = Pipe()
        let stdoutPipe = Pipe()
        let stderrPipe = Pipe()
        process.standardInput = stdinPipe
        process.standardOutput = stdoutPipe
        process.standardError = stderrPipe
        ExecutableLookup.ignoreSIGPIPE()
        do {
            try process.run()
        } catch {
            throw QEMUGuestError(.launchFailed, "cannot start socat for QMP: \(error)")
        }
        socat = process
        input = stdinPipe.fileHandleForWriting
        output = PipeCollector(reading: stdoutPipe.fileHandleForReading, name: "qmp")
        errors = PipeCollector(reading: stderrPipe.fileHandleForReading, name: "qmp-stderr")

        let left = max(deadline - clock.now, .seconds(5))
        guard waitFor(timeout: left, { $0.greeting != nil }) else {
            close()
            throw QEMUGuestError(.qmpFailed, "no QMP greeting on \(socketPath); socat: \(errors.text)")
        }
        _ = try execute("qmp_capabilities", timeout: left)
    }

    deinit { close() }

    /// Sends one QMP command and returns the reply object (it holds `"return"`; `id` removed).
    /// - Parameters:
    ///   - command: the QMP command name, e.g. `query-status`.
    ///   - arguments: the `arguments` object, if any.
    ///   - timeout: how long to wait for the reply.
    /// - Returns: the reply, e.g. `["return": ["status": "running", "running": true]]`.
    /// - Throws: `QEMUGuestError` with code `.qmpError` for an `"error"` reply (class and desc in
    ///   the message), `.timeout`, or `.qmpFailed` when the connection closed.
    @discardableResult
    public func execute(
        _ command: String,
        arguments: [String: Any]? = nil,
        timeout: Duration = .seconds(60)
    ) throws -> [String: Any] {
        let id = state.withLock { s in
            defer { s.nextID += 1 }
            return s.nextID
        }
        var message: [String: Any] = ["execute": command, "id": id]
        if let arguments { message["arguments"] = arguments }
        let data: Data
        do {
            data = try JSONSerialization.data(withJSONObject: message)
        } catch {
            throw QEMUGuestError(.qmpFailed, "cannot encode QMP command \(command): \(error)")
        }
        try writeLock.withLock { _ in
            do {
                try input.write(contentsOf: data + Data("\n".utf8))
            } catch {
                throw QEMUGuestError(.qmpFailed, "QMP \(command): write failed (QEMU gone?): \(error)")
            }
        }
        var line: String?
        _ = waitFor(timeout: timeout) { s in
            line = s.replies.removeValue(forKey: id)
            return line != nil
        }
        guard let line else {
            if output.isFinished {
                throw QEMUGuestError(.qmpFailed, "QMP connection closed while waiting for \(command)")
            }
            throw QEMUGuestError(.timeout, "QMP \(command): no reply within \(timeout)")
        }
        guard var reply = Self.parse(line) else {
            throw QEMUGuestError(.qmpFailed, "QMP \(command): unparsable reply \(line)")
        }
        reply.removeValue(forKey: "id")
        if let error = reply["error"] as? [String: Any] {
            let cls = error["class"] as? String ?? "?"
            let desc = error["desc"] as? String ?? "?"
            throw QEMUGuestError(.qmpError, "QMP \(command) failed: \(cls): \(desc)")
        }
        return reply
    }

    /// Whether the connection is closed (QEMU exited or `close()` was called).
    public var isClosed: Bool {
        refresh()
        return output.isFinished
    }

    /// The asynchronous events received so far, oldest first (each a decoded QMP event object
    /// with `event`, `data` and `timestamp`).
    public var events: [[String: Any]] {
        refresh()
        return state.withLock { $0.events }.compactMap { Self.parse($0) }
    }

    /// The names of the events received so far, oldest first.
    public var eventNames: [String] { events.compactMap { $0["event"] as? String } }

    /// Waits until an event named `name` arrives that was not seen before position `after`
    /// in `events` (default: any such event, also one that already arrived).
    /// - Returns: the event object.
    /// - Throws: `QEMUGuestError(.timeout)`.
    @discardableResult
    public func waitForEvent(_ name: String, after: Int = 0, timeout: Duration = .seconds(60)) throws -> [String: Any] {
        var found: String?
        _ = waitFor(timeout: timeout) { s in
            for line in s.events.dropFirst(after) where Self.parse(line)?["event"] as? String == name {
                found = line
                return true
            }
            return false
        }
        guard let found, let event = Self.parse(found) else {
            throw QEMUGuestError(.timeout, "QMP event \(name) did not arrive within \(timeout); got \(eventNames)")
        }
        return event
    }

    /// Closes the connection and stops socat.
    public func close() {
        try? input.close()
        if socat.isRunning { socat.terminate() }
    }

    // MARK: - Internals

    /// Moves complete lines from the collector into `state` (one caller at a time).
    private func refresh() {
        refreshLock.withLock { _ in refreshLocked() }
    }

    private func refreshLocked() {
        let bytes = output.bytes(from: state.withLock { $0.consumed })
        var start = 0
        var lines: [String] = []
        for (i, b) in bytes.enumerated() where b == 0x0A {
            lines.append(String(decoding: bytes[start..<i], as: UTF8.self))
            start = i + 1
        }
        guard start > 0 else { return }
        var parsed: [(kind: Int, id: Int, line: String)] = []  // kind 0 greeting, 1 reply, 2 event
        for line in lines where !line.trimmingCharacters(in: .whitespaces).isEmpty {
            guard let object = Self.parse(line) else { continue }
            if object["QMP"] != nil {
                parsed.append((0, 0, line))
            } else if object["event"] != nil {
                parsed.append((2, 0, line))
            } else if let id = object["id"] as? Int {
                parsed.append((1, id, line))
            }
        }
        state.withLock { s in
            s.consumed += start
            for p in parsed {
                switch p.kind {
                case 0: s.greeting = p.line
                case 1: s.replies[p.id] = p.line
                default: s.events.append(p.line)
                }
            }
        }
    }

    private func waitFor(timeout: Duration, _ condition: (inout State) -> Bool) -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while true {
            refresh()
            if state.withLock({ condition(&$0) }) { return true }
            if output.isFinished || clock.now >= deadline {
                refresh()
                return state.withLock { condition(&$0) }
            }
            Thread.sleep(forTimeInterval: 0.01)
        }
    }

    private static func parse(_ line: String) -> [String: Any]? {
        guard let data = line.data(using: .utf8),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
        else { return nil }
        return object
    }
}
