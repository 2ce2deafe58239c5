import Foundation
public import TPMWire
import _VTPMPosix

/// A control-channel client (what QEMU and swtpm_ioctl are), for tests.
public final class ControlClient {
    public let fd: Int32

    public init(unixPath: String) throws { self.fd = try Socket.connectUnix(path: unixPath) }
    public init(tcpPort: UInt16) throws { self.fd = try Socket.connectTCP(host: "127.0.0.1", port: tcpPort) }
    public init(descriptor: Int32) { self.fd = descriptor }
    deinit { closeDescriptor(self.fd) }

    /// Sends raw bytes (optionally with a descriptor) and reads up to `replySize` bytes
    /// (stopping early on EOF or when nothing more arrives within `timeout`).
    public func exchange(
        _ bytes: [UInt8],
        passing: Int32? = nil,
        replySize: Int,
        timeout: Int32 = 3000
    ) throws -> [UInt8] {
        if let passing {
            try Socket.send(self.fd, bytes, passing: passing)
        } else {
            try Socket.sendAll(self.fd, bytes)
        }
        return try self.read(replySize, timeout: timeout)
    }

    public func send(_ bytes: [UInt8]) throws { try Socket.sendAll(self.fd, bytes) }

    /// Reads until `count` bytes, EOF, or `timeout` ms of silence.
    public func read(_ count: Int, timeout: Int32 = 3000) throws -> [UInt8] {
        var reply: [UInt8] = []
        while reply.count < count {
            guard try waitReadable(self.fd, timeoutMilliseconds: timeout) else { break }
            let more = try Socket.read(self.fd, max: count - reply.count)
            if more.isEmpty { break }
            reply += more
        }
        return reply
    }

    /// Whether the server closed the connection (EOF within `timeout` ms).
    public func isClosed(timeout: Int32 = 2000) -> Bool {
        guard (try? waitReadable(self.fd, timeoutMilliseconds: timeout)) == true else { return false }
        return (try? Socket.read(self.fd, max: 1))?.isEmpty ?? true
    }

    /// A control request, reading a reply of `replySize`.
    public func request(_ request: ControlRequest, replySize: Int = 4) throws -> [UInt8] {
        try self.exchange(request.encoded, replySize: replySize)
    }

    /// The result code of a request whose reply starts with it.
    public func result(_ request: ControlRequest, replySize: Int = 4) throws -> UInt32 {
        let reply = try self.request(request, replySize: replySize)
        guard reply.count >= 4 else { throw QEMUGuestError(.commandFailed, "short reply \(reply.hexString)") }
        return reply.readBigEndianUInt32(at: 0)
    }
}

extension ControlClient {
    /// GET_STATEBLOB of `type` (DECRYPTED, as QEMU asks): the result and the whole blob, read by its length.
    public func stateBlob(type: UInt32, timeout: Int32 = 30_000) throws -> (result: UInt32, blob: [UInt8]) {
        try Socket.sendAll(self.fd, ControlRequest.getStateBlob(flags: 1, type: type, offset: 0).encoded)
        let header = try self.read(16, timeout: timeout)
        guard header.count == 16 else { throw QEMUGuestError(.commandFailed, "short GET_STATEBLOB reply") }
        let length = Int(header.readBigEndianUInt32(at: 12))
        let blob = try self.read(length, timeout: timeout)
        guard blob.count == length else {
            throw QEMUGuestError(.commandFailed, "GET_STATEBLOB: \(blob.count) of \(length) bytes")
        }
        return (header.readBigEndianUInt32(at: 0), blob)
    }

    /// SET_STATEBLOB of `type` (state flags 0, in one message); returns the result.
    public func setStateBlob(type: UInt32, _ blob: [UInt8], timeout: Int32 = 30_000) throws -> UInt32 {
        var w = ByteWriter(capacity: 16 + blob.count)
        w.write(ControlCode.setStateBlob.rawValue)
        w.write(UInt32(0))
        w.write(type)
        w.write(UInt32(blob.count))
        w.write(bytes: blob)
        let reply = try self.exchange(w.bytes, replySize: 4, timeout: timeout)
        guard reply.count == 4 else { throw QEMUGuestError(.commandFailed, "no SET_STATEBLOB reply") }
        return reply.readBigEndianUInt32(at: 0)
    }
}

/// A data-channel client: TPM commands framed by their size field.
public final class DataClient {
    public let fd: Int32

    public init(tcpPort: UInt16) throws { self.fd = try Socket.connectTCP(host: "127.0.0.1", port: tcpPort) }
    public init(descriptor: Int32) { self.fd = descriptor }
    deinit { closeDescriptor(self.fd) }

    /// Sends a command and reads one response (header, then the rest).
    public func transmit(_ command: [UInt8], timeout: Int32 = 5000) throws -> [UInt8] {
        try Socket.sendAll(self.fd, command)
        return try self.readResponse(timeout: timeout)
    }

    public func send(_ bytes: [UInt8]) throws { try Socket.sendAll(self.fd, bytes) }

    /// Whether the server closed the connection (EOF within `timeout` ms).
    public func isClosedByPeer(timeout: Int32 = 2000) -> Bool {
        guard (try? waitReadable(self.fd, timeoutMilliseconds: timeout)) == true else { return false }
        return (try? Socket.read(self.fd, max: 1))?.isEmpty ?? true
    }

    public func readResponse(timeout: Int32 = 5000) throws -> [UInt8] {
        var response: [UInt8] = []
        var needed = 10
        while response.count < needed {
            guard try waitReadable(self.fd, timeoutMilliseconds: timeout) else {
                throw QEMUGuestError(.timeout, "no TPM response (have \(response.hexString))")
            }
            let more = try Socket.read(self.fd, max: needed - response.count)
            if more.isEmpty { throw QEMUGuestError(.exited, "connection closed (have \(response.hexString))") }
            response += more
            if response.count >= 10 { needed = max(10, Int(response.readBigEndianUInt32(at: 2))) }
        }
        return response
    }
}

/// TPM 2.0 commands the tests send themselves.
public enum TPMCommands {
    public static func startup(clear: Bool = true) -> [UInt8] {
        TPMFrame.command(code: 0x144, body: [0, clear ? 0 : 1])
    }
    public static func shutdown(state: Bool = true) -> [UInt8] {
        TPMFrame.command(code: 0x145, body: [0, state ? 1 : 0])
    }
    public static func getRandom(_ count: UInt16) -> [UInt8] {
        TPMFrame.command(code: 0x17B, body: [UInt8(count >> 8), UInt8(count & 0xff)])
    }
    /// TPM2_ReadClock (what QEMU probes with).
    public static let readClock = TPMFrame.command(code: 0x181, body: [])
    /// TPM2_PCR_Read of sha256 PCR `index` (0...23).
    public static func pcrRead(_ index: Int) -> [UInt8] {
        var select: [UInt8] = [0, 0, 0]
        select[index / 8] = 1 << UInt8(index % 8)
        return TPMFrame.command(code: 0x17E, body: [0, 0, 0, 1, 0, 0x0B, 3] + select)
    }
    /// TPM2_PCR_Extend of PCR `index` with a sha256 digest, empty password session.
    public static func pcrExtend(_ index: UInt32, digest: [UInt8]) -> [UInt8] {
        var w = ByteWriter()
        w.write(index)
        w.write(UInt32(9))  // authorization size
        w.write(UInt32(0x4000_0009))  // TPM_RS_PW
        w.write(UInt16(0))
        w.write(UInt8(0))
        w.write(UInt16(0))
        w.write(UInt32(1))
        w.write(UInt16(0x0B))
        w.write(bytes: digest)
        return TPMFrame.command(tag: TPMFrame.tagSessions, code: 0x182, body: w.bytes)
    }
}
