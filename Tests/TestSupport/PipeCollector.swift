package import Foundation
import Synchronization
import _VTPMPosix

/// Collects everything a child process writes into one pipe, on a dedicated background thread,
/// so the child never blocks on a full pipe and callers can wait for patterns with a timeout.
///
/// Waiting is done by polling the collected bytes every few milliseconds: simple, and every wait
/// has a deadline, so a test fails instead of hanging.
package final class PipeCollector: Sendable {
    private struct State {
        var bytes: [UInt8] = []
        var finished = false
    }

    private let state = Mutex(State())
    private let mirror: FileHandle?

    /// Starts reading `handle` until end of file.
    /// - Parameters:
    ///   - handle: the read end of a pipe (a child's stdout or stderr).
    ///   - mirrorPath: when set, every chunk is also appended to this file (created or truncated),
    ///     so the output survives a crashed or killed test process.
    package init(reading handle: FileHandle, mirrorPath: String? = nil, name: String) {
        if let mirrorPath {
            _ = FileManager.default.createFile(atPath: mirrorPath, contents: nil)
            mirror = FileHandle(forWritingAtPath: mirrorPath)
        } else {
            mirror = nil
        }
        let thread = Thread { [self] in
            self.readLoop(handle)
        }
        thread.name = "PipeCollector \(name)"
        thread.start()
    }

    private func readLoop(_ handle: FileHandle) {
        while true {
            // Not `availableData`, which traps on any read error: a read interrupted by a signal (EINTR) is
            // retried, end of file or any other error ends the collection.
            guard let bytes = try? Socket.read(handle.fileDescriptor, max: 65536), !bytes.isEmpty else { break }
            let chunk = Data(bytes)
            if let mirror { try? mirror.write(contentsOf: chunk) }
            state.withLock { $0.bytes.append(contentsOf: chunk) }
        }
        try? mirror?.close()
        try? handle.close()
        state.withLock { $0.finished = true }
    }

    /// Number of bytes collected so far.
    package var count: Int { state.withLock { $0.bytes.count } }

    /// Whether the writer closed the pipe (the child exited) and everything was read.
    package var isFinished: Bool { state.withLock { $0.finished } }

    /// A copy of the collected bytes from `offset` on.
    package func bytes(from offset: Int = 0) -> [UInt8] {
        state.withLock { s in
            let start = min(max(offset, 0), s.bytes.count)
            return Array(s.bytes[start...])
        }
    }

    /// Everything collected so far, as text (invalid UTF-8 repaired, carriage returns removed).
    package var text: String { Self.text(bytes()) }

    /// Converts raw console bytes to text: lossy UTF-8, `\r` dropped.
    package static func text(_ bytes: [UInt8]) -> String {
        String(decoding: bytes.filter { $0 != 0x0D }, as: UTF8.self)
    }

    /// Polls `check` (given the collected bytes and whether the pipe is finished) until it returns
    /// a value or the deadline passes.
    /// - Returns: the first non-nil value of `check`, or nil on timeout.
    package func wait<T: Sendable>(
        timeout: Duration,
        _ check: ([UInt8], Bool) -> T?
    ) -> T? {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while true {
            let snapshot = state.withLock { s in (s.bytes, s.finished) }
            if let value = check(snapshot.0, snapshot.1) { return value }
            if snapshot.1 || clock.now >= deadline {
                // one last look after the final read, then give up
                let last = state.withLock { s in (s.bytes, s.finished) }
                return check(last.0, last.1)
            }
            Thread.sleep(forTimeInterval: 0.01)
        }
    }

    /// Waits until the writer closed the pipe and everything was read.
    /// - Returns: false on timeout.
    @discardableResult
    package func waitUntilFinished(timeout: Duration) -> Bool {
        wait(timeout: timeout) { _, finished in finished ? true : nil } ?? false
    }

    /// Index of the first occurrence of `needle` in `haystack` at or after `start`.
    package static func find(_ needle: [UInt8], in haystack: [UInt8], from start: Int = 0) -> Int? {
        guard !needle.isEmpty, haystack.count >= needle.count else { return nil }
        var i = max(start, 0)
        let last = haystack.count - needle.count
        let first = needle[0]
        while i <= last {
            if haystack[i] == first {
                var j = 1
                while j < needle.count && haystack[i + j] == needle[j] { j += 1 }
                if j == needle.count { return i }
            }
            i += 1
        }
        return nil
    }
}
