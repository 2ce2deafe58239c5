/// A bounds-checked big-endian reader over a byte array.
public struct ByteReader: Sendable {
    public let bytes: [UInt8]
    public private(set) var offset: Int

    public init(_ bytes: [UInt8], offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    /// Bytes not consumed yet.
    public var remaining: Int { self.bytes.count - self.offset }

    public mutating func readUInt8() throws(WireError) -> UInt8 {
        guard self.remaining >= 1 else { throw WireError.truncated(needed: 1, available: self.remaining) }
        defer { self.offset += 1 }
        return self.bytes[self.offset]
    }

    public mutating func readUInt16() throws(WireError) -> UInt16 {
        guard self.remaining >= 2 else { throw WireError.truncated(needed: 2, available: self.remaining) }
        defer { self.offset += 2 }
        return UInt16(self.bytes[self.offset]) << 8 | UInt16(self.bytes[self.offset + 1])
    }

    public mutating func readUInt32() throws(WireError) -> UInt32 {
        guard self.remaining >= 4 else { throw WireError.truncated(needed: 4, available: self.remaining) }
        defer { self.offset += 4 }
        return self.bytes.readBigEndianUInt32(at: self.offset)
    }

    public mutating func readUInt64() throws(WireError) -> UInt64 {
        let high = try self.readUInt32()
        let low = try self.readUInt32()
        return UInt64(high) << 32 | UInt64(low)
    }

    /// Reads `count` bytes; `max` is checked before anything is allocated.
    public mutating func readBytes(count: Int, max: Int = Int.max) throws(WireError) -> [UInt8] {
        guard count >= 0, count <= max else { throw WireError.lengthOutOfRange(count, max: max) }
        guard self.remaining >= count else { throw WireError.truncated(needed: count, available: self.remaining) }
        defer { self.offset += count }
        return Array(self.bytes[self.offset..<self.offset + count])
    }

    /// Reads a TPM2B: a be16 size followed by that many bytes.
    public mutating func readSized16(max: Int = Int(UInt16.max)) throws(WireError) -> [UInt8] {
        let size = try self.readUInt16()
        return try self.readBytes(count: Int(size), max: max)
    }

    public mutating func skip(_ count: Int) throws(WireError) {
        guard count >= 0, self.remaining >= count else {
            throw WireError.truncated(needed: count, available: self.remaining)
        }
        self.offset += count
    }

    /// Rejects trailing bytes.
    public func finish() throws(WireError) {
        guard self.remaining == 0 else { throw WireError.trailingBytes(self.remaining) }
    }
}

/// A big-endian writer that appends to a byte array.
public struct ByteWriter: Sendable {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 64) {
        self.bytes = []
        self.bytes.reserveCapacity(capacity)
    }

    public mutating func write(_ value: UInt8) { self.bytes.append(value) }

    public mutating func write(_ value: UInt16) {
        self.bytes.append(UInt8(truncatingIfNeeded: value >> 8))
        self.bytes.append(UInt8(truncatingIfNeeded: value))
    }

    public mutating func write(_ value: UInt32) {
        self.bytes.append(UInt8(truncatingIfNeeded: value >> 24))
        self.bytes.append(UInt8(truncatingIfNeeded: value >> 16))
        self.bytes.append(UInt8(truncatingIfNeeded: value >> 8))
        self.bytes.append(UInt8(truncatingIfNeeded: value))
    }

    public mutating func write(_ value: UInt64) {
        self.write(UInt32(truncatingIfNeeded: value >> 32))
        self.write(UInt32(truncatingIfNeeded: value))
    }

    public mutating func write<C: Collection>(bytes: C) where C.Element == UInt8 {
        self.bytes.append(contentsOf: bytes)
    }

    /// Writes a TPM2B (be16 size + bytes). The caller guarantees `bytes.count <= 0xFFFF`.
    public mutating func writeSized16(_ bytes: [UInt8]) {
        precondition(bytes.count <= Int(UInt16.max), "TPM2B longer than 65535 bytes")
        self.write(UInt16(bytes.count))
        self.bytes.append(contentsOf: bytes)
    }

    /// Overwrites a be32 at `offset` (used to patch a size field after the body is known).
    public mutating func patchUInt32(_ value: UInt32, at offset: Int) {
        precondition(offset >= 0 && offset + 4 <= self.bytes.count)
        self.bytes[offset] = UInt8(truncatingIfNeeded: value >> 24)
        self.bytes[offset + 1] = UInt8(truncatingIfNeeded: value >> 16)
        self.bytes[offset + 2] = UInt8(truncatingIfNeeded: value >> 8)
        self.bytes[offset + 3] = UInt8(truncatingIfNeeded: value)
    }
}

extension Array where Element == UInt8 {
    /// The be32 at `offset`; the caller has checked the bounds.
    @inline(__always)
    public func readBigEndianUInt32(at offset: Int) -> UInt32 {
        UInt32(self[offset]) << 24 | UInt32(self[offset + 1]) << 16 | UInt32(self[offset + 2]) << 8
            | UInt32(self[offset + 3])
    }

    /// Lower-case hex, for logs and test messages.
    public var hexString: String {
        let digits: [UInt8] = [
            0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66,
        ]
        var out: [UInt8] = []
        out.reserveCapacity(self.count * 2)
        for b in self {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Parses hex digits (no separators); nil on any other character or an odd count.
    public init?(hexString: some StringProtocol) {
        var out: [UInt8] = []
        var high: UInt8? = nil
        for c in hexString.utf8 {
            let v: UInt8
            switch c {
            case 0x30...0x39: v = c - 0x30
            case 0x61...0x66: v = c - 0x61 + 10
            case 0x41...0x46: v = c - 0x41 + 10
            default: return nil
            }
            if let h = high {
                out.append(h << 4 | v)
                high = nil
            } else {
                high = v
            }
        }
        guard high == nil else { return nil }
        self = out
    }
}
