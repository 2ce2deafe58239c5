/// Incremental framing of TPM commands on the data channel, over a buffer the caller owns (the command
/// is read into it and executed in place: no copy per command).
///
/// Clients (QEMU, tpm2-tss, swtpm's tools) write one whole command and wait for its response. So a
/// frame is delimited by its size field, the rest of a short frame is waited for, and bytes beyond the
/// size field that arrive in the frame's first read are an error (R8), never a second command: on
/// QEMU's socket that would give QEMU two responses for one request. Later reads are limited to the
/// bytes still missing (``readLimit``).
///
/// Two framings: a plain TPM 2 command, and the TCG "TPM_SEND_COMMAND" framing (be32 8, u8 locality,
/// be32 size, command), when the caller allows it.
public struct TPMCommandFramer: Sendable {
    /// A complete frame in the buffer.
    public struct Frame: Hashable, Sendable {
        /// Where the TPM command lies in the buffer.
        public var command: Range<Int>
        /// The locality of a TPM_SEND_COMMAND frame (nil: plain framing).
        public var sendCommandLocality: UInt8?
    }

    /// What the bytes received so far amount to.
    public enum Step: Hashable, Sendable {
        case needMore
        case frame(Frame)
        /// Not a TPM command: the reason, for the log.
        case malformed(String)
    }

    /// The TCG send-command tag, be32 8 (the MS simulator's TPM_SEND_COMMAND).
    public static let sendCommandTag: UInt32 = 8
    static let sendCommandPrefix = 9

    /// Bytes of the current frame in the buffer.
    public private(set) var filled = 0
    private let capacity: Int

    /// - Parameter capacity: the size of the caller's buffer; frames larger than the negotiated
    ///   buffer size are rejected before they can reach it.
    public init(capacity: Int) {
        self.capacity = capacity
    }

    /// Whether part of a frame has arrived (the frame's deadline runs).
    public var isInFrame: Bool { self.filled > 0 }

    /// How many bytes the next read may add: anything up to the buffer's end for a frame's first read
    /// (to see bytes beyond its size field), afterwards exactly what is missing.
    public func readLimit(in buffer: [UInt8]) -> Int {
        if self.filled == 0 { return self.capacity }
        guard self.filled >= TPMFrame.headerSize else { return TPMFrame.headerSize - self.filled }
        if let total = self.totalSize(buffer) { return max(total - self.filled, 0) }
        return 0
    }

    /// Accounts for `count` bytes the caller read into `buffer[filled...]` and frames them.
    /// - Parameters:
    ///   - maximumCommand: the negotiated TPM buffer size.
    ///   - allowSendCommand: whether TPM_SEND_COMMAND framing is accepted on this connection.
    public mutating func received(
        _ count: Int,
        in buffer: [UInt8],
        maximumCommand: Int,
        allowSendCommand: Bool
    ) -> Step {
        let firstRead = self.filled == 0
        self.filled += count
        guard self.filled >= TPMFrame.headerSize else { return .needMore }
        let sendCommand = buffer.readBigEndianUInt32(at: 0) == Self.sendCommandTag
        if sendCommand && !allowSendCommand {
            return self.fail("TCG send-command framing on a QEMU data channel")
        }
        let prefix = sendCommand ? Self.sendCommandPrefix : 0
        let size = Int(buffer.readBigEndianUInt32(at: sendCommand ? 5 : 2))
        guard size >= TPMFrame.headerSize, size <= maximumCommand, prefix + size <= self.capacity else {
            return self.fail(
                "\(sendCommand ? "send-command size" : "size field") \(size) outside 10...\(maximumCommand)"
            )
        }
        let total = prefix + size
        if self.filled > total {
            // Only a first read can overshoot: later reads are limited to the missing bytes.
            return self.fail("\(self.filled - total) bytes beyond the size field\(firstRead ? "" : " (late)")")
        }
        guard self.filled == total else { return .needMore }
        self.filled = 0
        return .frame(Frame(command: prefix..<total, sendCommandLocality: sendCommand ? buffer[4] : nil))
    }

    /// The frame did not complete in time: the reason, and the framer starts over.
    public mutating func expire(in buffer: [UInt8]) -> String {
        let total = self.totalSize(buffer).map(String.init) ?? "unknown"
        let reason = "\(self.filled) of \(total) bytes arrived"
        self.filled = 0
        return reason
    }

    /// Drops a partial frame (the connection closed).
    public mutating func reset() { self.filled = 0 }

    private mutating func fail(_ reason: String) -> Step {
        self.filled = 0
        return .malformed(reason)
    }

    private func totalSize(_ buffer: [UInt8]) -> Int? {
        guard self.filled >= TPMFrame.headerSize else { return nil }
        if buffer.readBigEndianUInt32(at: 0) == Self.sendCommandTag {
            return Self.sendCommandPrefix + Int(buffer.readBigEndianUInt32(at: 5))
        }
        return Int(buffer.readBigEndianUInt32(at: 2))
    }
}
