import _VTPMPosix

/// Replies written to a peer that has not read them all yet. The loop stops decoding that peer's
/// messages while anything is left here (so a peer that pipelines without reading holds at most one
/// reply), and closes the peer when it has not drained it within ``Server/replyDeadlineNanoseconds``.
struct Outbox {
    private var bytes: [UInt8] = []
    private var offset = 0
    /// When the oldest unsent byte was queued.
    private(set) var since: UInt64 = 0

    var isEmpty: Bool { self.offset >= self.bytes.count }

    /// Queues `reply` and writes what the descriptor takes now.
    mutating func send(_ reply: [UInt8], to fd: Int32, now: UInt64) throws(PosixError) {
        if self.isEmpty {
            let n = try Socket.sendAvailable(fd, reply, from: 0)
            guard n < reply.count else { return }
            self.bytes = reply
            self.offset = n
            self.since = now
        } else {
            self.bytes.append(contentsOf: reply)
        }
    }

    /// Writes what the descriptor takes now (it polled writable).
    mutating func flush(to fd: Int32) throws(PosixError) {
        guard !self.isEmpty else { return }
        self.offset += try Socket.sendAvailable(fd, self.bytes, from: self.offset)
        if self.isEmpty {
            self.bytes = []
            self.offset = 0
        }
    }

    /// Writes the rest, waiting up to `timeoutMilliseconds` for the peer (before a close or exit).
    mutating func drain(to fd: Int32, timeoutMilliseconds: Int32) {
        let deadline = ProcessControl.monotonicNanoseconds() + UInt64(timeoutMilliseconds) * 1_000_000
        while !self.isEmpty {
            let now = ProcessControl.monotonicNanoseconds()
            guard now < deadline else { return }
            let events = try? pollDescriptors(
                [(fd, .writable)],
                timeoutMilliseconds: Int32((deadline - now) / 1_000_000 + 1)
            )
            guard let events, events[0].contains(.writable) else { return }
            do { try self.flush(to: fd) } catch { return }
        }
    }
}
