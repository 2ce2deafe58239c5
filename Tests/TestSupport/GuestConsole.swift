import Foundation
import Synchronization

/// A test guest's serial console driven as a shell: waits for text, runs commands between unique
/// markers and returns their output and exit status. QEMU's stdio (``QEMUGuest``) and a libvirt
/// domain's `<serial type='unix'>` socket both carry one.
public final class GuestConsole: Sendable {
    private struct State {
        var cursor = 0  // bytes of the serial output already consumed by waits and commands
        var counter = 0
        var history: [String] = []
    }

    private let input: FileHandle
    private let output: PipeCollector
    private let isAlive: @Sendable () -> Bool
    private let context: @Sendable () -> String
    private let state = Mutex(State())
    private let token = ExecutableLookup.randomToken()

    /// A console reading `output` and typing into `input`.
    /// - Parameters:
    ///   - input: Where typed text goes.
    ///   - output: What the guest writes.
    ///   - isAlive: Whether the guest's process still runs (a dead one ends waits early).
    ///   - context: Extra lines for failure messages (the emulator's exit status, stderr).
    init(
        input: FileHandle,
        output: PipeCollector,
        isAlive: @escaping @Sendable () -> Bool,
        context: @escaping @Sendable () -> String = { "" }
    ) {
        self.input = input
        self.output = output
        self.isAlive = isAlive
        self.context = context
    }

    deinit {
        try? self.input.close()
    }

    /// Everything the guest wrote on its serial console so far (`\r` removed).
    public var transcript: String { self.output.text }

    /// Waits until the guest's output has ended (its process exited) and all of it is in ``transcript``.
    @discardableResult
    public func waitForEnd(timeout: Duration) -> Bool { self.output.waitUntilFinished(timeout: timeout) }

    /// The commands given to `run`/`check` so far, oldest first (the console does not echo them).
    public var history: [String] { self.state.withLock { $0.history } }

    /// The last `lines` lines of the console, for failure messages.
    public func transcriptTail(lines: Int = 40) -> String {
        self.transcript.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }

    /// An error with the context, the last commands and the console's tail.
    public func failure(_ code: QEMUGuestError.Code, _ what: String) -> QEMUGuestError {
        var message = what
        let context = self.context()
        if !context.isEmpty { message += "\n" + context }
        let recent = self.history.suffix(3).map { "$ \($0)" }.joined(separator: "\n")
        if !recent.isEmpty { message += "\n--- last commands ---\n\(recent)" }
        message += "\n--- console tail ---\n\(self.transcriptTail())"
        return QEMUGuestError(code, message)
    }

    /// Waits for the guest's ready line (`VTPM-GUEST-READY`, printed by init after a boot or
    /// reboot) after everything consumed so far, then prepares the shell for `run` (turns tty
    /// echo off) and checks it answers.
    /// - Parameter timeout: boot budget (TCG boot to ready takes about 5 s on an idle host).
    /// - Throws: `QEMUGuestError(.timeout)` or `.exited`, with the console tail.
    public func waitForReady(timeout: Duration = .seconds(120)) throws {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        try self.waitForConsole(QEMUGuest.readyMarker, timeout: timeout)
        // the shell starts with line editing (raw mode, own echo); once echo is off, busybox
        // ash reads plain lines and echoes nothing, so the console shows only command output
        let setup = "VTPM-SETUP-\(self.token)"
        let split = "VTPM-SET\"\"UP-\(self.token)"
        try self.type("stty -echo; PS2=''; echo \(split)\n")
        _ = try self.waitForConsole(setup, timeout: max(deadline - clock.now, .seconds(10)))
        try self.waitForShell(timeout: max(deadline - clock.now, .seconds(10)))
    }

    /// Checks that the guest shell answers a command. Use this instead of `waitForReady` for a
    /// guest that resumes rather than boots (`-loadvm`, `-incoming`, HMP `loadvm`).
    /// - Throws: `QEMUGuestError(.timeout)` or `.exited`.
    public func waitForShell(timeout: Duration = .seconds(60)) throws {
        let result = try self.run("true", timeout: timeout)
        guard result.status == 0 else {
            throw QEMUGuestError(.commandFailed, "guest shell answered `true` with status \(result.status)")
        }
    }

    /// Waits until `text` appears on the console after the consumed part and consumes up to the
    /// end of that line.
    /// - Returns: the whole line containing `text`.
    /// - Throws: `QEMUGuestError(.timeout)` or `.exited` (with the console tail and QEMU's stderr).
    @discardableResult
    public func waitForConsole(_ text: String, timeout: Duration = .seconds(60)) throws -> String {
        let needle = Array(text.utf8)
        let start = self.state.withLock { $0.cursor }
        let found: (line: String, end: Int)? = self.output.wait(timeout: timeout) { bytes, _ in
            guard let at = PipeCollector.find(needle, in: bytes, from: start),
                let nl = PipeCollector.find([0x0A], in: bytes, from: at + needle.count)
            else { return nil }
            var lineStart = at
            while lineStart > start && bytes[lineStart - 1] != 0x0A { lineStart -= 1 }
            return (PipeCollector.text(Array(bytes[lineStart..<nl])), nl + 1)
        }
        guard let found else {
            let code: QEMUGuestError.Code = self.isAlive() ? .timeout : .exited
            throw failure(code, "\(text) did not appear on the console within \(timeout)")
        }
        self.state.withLock { $0.cursor = max($0.cursor, found.end) }
        return found.line
    }

    /// Runs a shell command in the guest and returns what it printed (stdout and stderr merged,
    /// `\r` removed, nothing trimmed) and its exit status. Stdin is /dev/null.
    ///
    /// The command is typed as `echo <begin>; { <command>\n} </dev/null 2>&1; echo <end>:$?`
    /// with markers unique to this call, so it may be any shell text (`a && b`, pipes, `cmd &`,
    /// several lines) but no single line may exceed 4000 bytes (the tty line limit).
    /// - Throws: `QEMUGuestError(.timeout)` (a Ctrl-C is sent to the guest first), `.exited`.
    public func run(_ command: String, timeout: Duration = .seconds(60)) throws -> (output: String, status: Int32) {
        let id = self.state.withLock { c in
            c.counter += 1
            c.history.append(command)
            return "\(self.token)-\(c.counter)"
        }
        let begin = Array("VTPM-BEGIN-\(id)".utf8)
        let end = Array("VTPM-END-\(id):".utf8)
        let text = "echo VTPM-BEG\"\"IN-\(id); { \(command)\n} </dev/null 2>&1; echo VTPM-E\"\"ND-\(id):$?\n"
        if let long = text.split(separator: "\n").first(where: { $0.utf8.count > 4000 }) {
            throw QEMUGuestError(
                .commandFailed,
                "a command line of \(long.utf8.count) bytes exceeds the guest tty limit; split it"
            )
        }
        let start = self.state.withLock { $0.cursor }
        try self.type(text)
        let result: (output: String, status: Int32, end: Int)? = self.output.wait(timeout: timeout) { bytes, _ in
            guard let b = PipeCollector.find(begin, in: bytes, from: start),
                let nl = PipeCollector.find([0x0A], in: bytes, from: b + begin.count),
                let e = PipeCollector.find(end, in: bytes, from: nl + 1)
            else { return nil }
            var i = e + end.count
            var digits = ""
            while i < bytes.count, bytes[i] >= 0x30, bytes[i] <= 0x39 {
                digits.append(Character(UnicodeScalar(bytes[i])))
                i += 1
            }
            guard i < bytes.count, bytes[i] == 0x0D || bytes[i] == 0x0A, let status = Int32(digits) else {
                return nil
            }
            while i < bytes.count, bytes[i] != 0x0A { i += 1 }
            return (PipeCollector.text(Array(bytes[(nl + 1)..<e])), status, min(i + 1, bytes.count))
        }
        guard let result else {
            guard self.isAlive() else {
                throw failure(.exited, "the guest's console ended while running guest command: \(command)")
            }
            try? type("\u{03}")  // interrupt the command so later commands have a chance
            throw failure(.timeout, "guest command did not finish within \(timeout): \(command)")
        }
        self.state.withLock { $0.cursor = max($0.cursor, result.end) }
        return (result.output, result.status)
    }

    /// Runs a command and requires exit status 0.
    /// - Returns: the command's output.
    /// - Throws: `QEMUGuestError(.commandFailed)` with the output, or as `run`.
    @discardableResult
    public func check(_ command: String, timeout: Duration = .seconds(60)) throws -> String {
        let (output, status) = try self.run(command, timeout: timeout)
        guard status == 0 else {
            throw QEMUGuestError(.commandFailed, "guest command `\(command)` exited with \(status):\n\(output)")
        }
        return output
    }

    /// Types raw text on the serial console (no newline added).
    /// - Throws: `QEMUGuestError(.exited)` when QEMU is gone.
    public func type(_ text: String) throws {
        do {
            try self.input.write(contentsOf: Data(text.utf8))
        } catch {
            throw failure(.exited, "cannot type on the serial console: \(error)")
        }
    }
}
