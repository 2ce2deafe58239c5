/// TPM 2.0 command/response framing on the data channel.
public enum TPMFrame {
    public static let headerSize = 10
    public static let tagNoSessions: UInt16 = 0x8001
    public static let tagSessions: UInt16 = 0x8002

    /// Response codes vtpmd synthesises itself.
    public static let rcSuccess: UInt32 = 0x000
    public static let rcFailure: UInt32 = 0x101
    public static let rcInitialize: UInt32 = 0x100
    public static let rcCommandSize: UInt32 = 0x142
    public static let rcLocality: UInt32 = 0x907

    /// swtpm's private in-band "set locality" command code (enabled by `allow-set-locality`).
    public static let swtpmSetLocalityOrdinal: UInt32 = 0x2000_1000

    /// The size field of a frame header, or nil when fewer than 10 bytes are given.
    public static func declaredSize(_ header: [UInt8]) -> UInt32? {
        guard header.count >= self.headerSize else { return nil }
        return header.readBigEndianUInt32(at: 2)
    }

    /// A 10-byte response carrying only `rc` (tag 0x8001).
    public static func errorResponse(_ rc: UInt32) -> [UInt8] {
        var w = ByteWriter(capacity: 10)
        w.write(Self.tagNoSessions)
        w.write(UInt32(10))
        w.write(rc)
        return w.bytes
    }

    /// The response code of a response, or nil when it is shorter than a header.
    public static func responseCode(_ response: [UInt8]) -> UInt32? {
        guard response.count >= self.headerSize else { return nil }
        return response.readBigEndianUInt32(at: 6)
    }

    /// Checks a response produced by libtpms: header size equals length and lies in [10, max].
    public static func isWellFormedResponse(_ response: [UInt8], maximum: Int) -> Bool {
        guard let size = declaredSize(response) else { return false }
        return Int(size) == response.count && response.count <= maximum
    }

    /// Builds a command frame: header with `tag`, total size and `code`, then `body`.
    public static func command(tag: UInt16 = tagNoSessions, code: UInt32, body: [UInt8]) -> [UInt8] {
        var w = ByteWriter(capacity: 10 + body.count)
        w.write(tag)
        w.write(UInt32(10 + body.count))
        w.write(code)
        w.write(bytes: body)
        return w.bytes
    }
}
