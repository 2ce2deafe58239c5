/// Incremental decoder of one control connection's byte stream (swtpm's control channel).
///
/// Bytes go in as they arrive, in reads of any size; complete messages come out in order. The decoder
/// never waits and owns no descriptor, so one peer that stops mid-message costs the others nothing: the
/// server keeps a decoder per connection and applies the deadlines (``phase`` says which one applies).
///
/// - Fixed-size commands come out once their payload is complete; bytes behind them start the next
///   message (pipelined commands get one reply each, in order).
/// - SET_STATEBLOB comes out once its whole body arrived (bounded by `maximumBlobSize`).
/// - HASH_DATA's body is handed out in chunks of at most ``hashChunkSize`` as it arrives, so a large hash
///   input is never held in memory, then ``Message/hashDataEnd`` when all announced bytes were seen.
public struct ControlDecoder: Sendable {
    /// A decoded message, or a framing error the server answers.
    public enum Message: Hashable, Sendable {
        /// A complete fixed-size command.
        case request(ControlRequest)
        /// SET_STATEBLOB with its whole body.
        case setStateBlob(flags: UInt32, type: UInt32, blob: [UInt8])
        /// Part of a HASH_DATA body, in order.
        case hashData([UInt8])
        /// The HASH_DATA body of `length` bytes is complete: the command is answered now.
        case hashDataEnd(length: Int)
        /// A command code vtpmd does not implement. Its length cannot be known, so the bytes that
        /// arrived with it are dropped (swtpm answers TPM_BAD_ORDINAL and reads on, too).
        case unknownCommand(ControlCode)
        /// A command whose payload has the right size and an invalid value.
        case invalid(ControlCode, WireError)
        /// SET_STATEBLOB announcing more than the limit: answered, then the connection is closed (the
        /// body cannot be skipped safely).
        case blobTooLarge(length: Int)
    }

    /// What the decoder is in the middle of, for the server's deadlines.
    public enum Phase: Hashable, Sendable {
        /// Nothing buffered: no deadline.
        case idle
        /// Part of a command code, a fixed payload or a body header.
        case command(ControlCode?)
        /// Part of a SET_STATEBLOB or HASH_DATA body (the longer deadline).
        case body(ControlCode)
    }

    /// HASH_DATA chunks handed to libtpms (swtpm feeds at most 4096 bytes per call).
    public static let hashChunkSize = 4096

    private enum State: Sendable {
        case message
        case blobBody(flags: UInt32, type: UInt32, length: Int)
        case hashBody(length: Int, remaining: Int)
    }

    private var buffer: [UInt8] = []
    /// Bytes of `buffer` before this index are consumed.
    private var consumed = 0
    private var state = State.message
    private let maximumBlobSize: Int

    /// - Parameter maximumBlobSize: the largest SET_STATEBLOB body accepted.
    public init(maximumBlobSize: Int) {
        self.maximumBlobSize = maximumBlobSize
    }

    /// Bytes received and not yet decoded.
    public var bufferedCount: Int { self.buffer.count - self.consumed }

    /// Whether a message has started and not ended (its deadline runs).
    public var phase: Phase {
        switch self.state {
        case .blobBody: return .body(.setStateBlob)
        case .hashBody: return .body(.hashData)
        case .message:
            if self.bufferedCount == 0 { return .idle }
            return .command(self.bufferedCount >= 4 ? ControlCode(rawValue: self.uint32(at: 0)) : nil)
        }
    }

    /// The code of the next message, once its first 4 bytes arrived (nil inside a body).
    public var nextCode: ControlCode? {
        guard case .message = self.state, self.bufferedCount >= 4 else { return nil }
        return ControlCode(rawValue: self.uint32(at: 0))
    }

    /// Appends received bytes.
    public mutating func receive(_ bytes: some Collection<UInt8>) {
        if self.consumed > 0 && self.consumed >= self.buffer.count / 2 {
            self.buffer.removeFirst(self.consumed)
            self.consumed = 0
        }
        self.buffer.append(contentsOf: bytes)
    }

    /// The next complete message, or nil until more bytes arrive.
    public mutating func next() -> Message? {
        switch self.state {
        case .message:
            return self.nextMessage()
        case .blobBody(let flags, let type, let length):
            guard self.bufferedCount >= length else { return nil }
            let blob = Array(self.take(length))
            self.state = .message
            return .setStateBlob(flags: flags, type: type, blob: blob)
        case .hashBody(let length, let remaining):
            if remaining == 0 {
                self.state = .message
                return .hashDataEnd(length: length)
            }
            let available = min(self.bufferedCount, remaining)
            // Full chunks as they fill; the last, shorter one when the body is complete.
            guard available >= Self.hashChunkSize || (available == remaining && available > 0) else { return nil }
            let chunk = Array(self.take(min(available, Self.hashChunkSize)))
            self.state = .hashBody(length: length, remaining: remaining - chunk.count)
            return .hashData(chunk)
        }
    }

    private mutating func nextMessage() -> Message? {
        guard self.bufferedCount >= 4 else { return nil }
        let code = ControlCode(rawValue: self.uint32(at: 0))
        guard let rule = code.payloadRule else {
            self.consumed = self.buffer.count
            return .unknownCommand(code)
        }
        switch rule {
        case .fixed(let n):
            guard self.bufferedCount >= 4 + n else { return nil }
            return self.decode(code, payloadSize: n)
        case .padded(let minimum, let usual):
            if self.bufferedCount >= 4 + usual { return self.decode(code, payloadSize: usual) }
            // swtpm_ioctl's short form: exactly the request, nothing behind it. More than that and less than
            // QEMU's form is QEMU's form arriving in pieces: wait for the rest.
            guard self.bufferedCount == 4 + minimum else { return nil }
            return self.decode(code, payloadSize: minimum)
        case .stateBlob:
            guard self.bufferedCount >= 16 else { return nil }
            let flags = self.uint32(at: 4)
            let type = self.uint32(at: 8)
            let length = Int(self.uint32(at: 12))
            guard length <= self.maximumBlobSize else {
                self.consumed = self.buffer.count
                return .blobTooLarge(length: length)
            }
            _ = self.take(16)
            self.state = .blobBody(flags: flags, type: type, length: length)
            return self.next()
        case .hashData:
            guard self.bufferedCount >= 8 else { return nil }
            let length = Int(self.uint32(at: 4))
            _ = self.take(8)
            self.state = .hashBody(length: length, remaining: length)
            return self.next()
        }
    }

    private mutating func decode(_ code: ControlCode, payloadSize: Int) -> Message {
        let message = Array(self.take(4 + payloadSize))
        do {
            return .request(try ControlRequest(code: code, payload: Array(message[4...])))
        } catch {
            return .invalid(code, error)
        }
    }

    private mutating func take(_ count: Int) -> ArraySlice<UInt8> {
        let slice = self.buffer[self.consumed..<(self.consumed + count)]
        self.consumed += count
        return slice
    }

    /// The be32 at `offset` past the consumed bytes; the caller checked the bounds.
    private func uint32(at offset: Int) -> UInt32 {
        self.buffer.readBigEndianUInt32(at: self.consumed + offset)
    }
}
