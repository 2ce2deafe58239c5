import TPMWire

/// swtpm's blob container, used for state files and GET/SET_STATEBLOB blobs: a 10-byte header
/// (version 2, min_version 1, header size 10, flags, total length) followed by TLV records
/// (be16 tag, be32 length, value).
public struct BlobContainer: Hashable, Sendable {
    /// Header flag bits.
    public struct Flags: OptionSet, Hashable, Sendable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let encrypted = Flags(rawValue: 0x01)
        public static let migrationEncrypted = Flags(rawValue: 0x02)
        public static let migrationData = Flags(rawValue: 0x04)
        public static let encrypted256BitKey = Flags(rawValue: 0x08)
        public static let migration256BitKey = Flags(rawValue: 0x10)
    }

    /// TLV tags swtpm defines, plus vtpmd's own (0x7E00 range, which swtpm skips).
    public enum Tag {
        public static let data: UInt16 = 1
        public static let encryptedData: UInt16 = 2
        public static let hmac: UInt16 = 3
        public static let migrationData: UInt16 = 4
        public static let encryptedMigrationData: UInt16 = 5
        public static let ivEncryptedData: UInt16 = 6
        public static let ivEncryptedMigrationData: UInt16 = 7
        /// vtpmd's integrity record on state files (see `StateFile`).
        public static let vtpmIntegrity: UInt16 = 0x7E02
        /// vtpmd's identity record on the permanent state file (see `StateFile`, `IdentityRecord`).
        public static let vtpmIdentity: UInt16 = 0x7E03
    }

    public struct Record: Hashable, Sendable {
        public var tag: UInt16
        public var value: [UInt8]
        public init(tag: UInt16, value: [UInt8]) {
            self.tag = tag
            self.value = value
        }
    }

    public static let headerSize = 10
    public static let version: UInt8 = 2
    /// Largest container vtpmd accepts (swtpm caps blobs at 512 KiB; libtpms NV is ~176 KiB).
    public static let maximumSize = 512 * 1024

    public var flags: Flags
    public var records: [Record]

    public init(flags: Flags, records: [Record]) {
        self.flags = flags
        self.records = records
    }

    /// How a byte string presents itself.
    public enum Shape: Sendable, Equatable {
        /// A version-2 header (possibly damaged: the full parse decides).
        case current
        /// A version-1 header: 10 bytes, then swtpm's first format (no TLVs).
        case legacyHeader(flags: Flags)
        /// No header at all (swtpm before 0.1 wrote raw or v1-encrypted blobs).
        case headerless
    }

    /// Classifies `bytes` by their first bytes, as swtpm's header check does: a header is
    /// `version, min_version, be16 10, ...`; version 1 headers carry the old body format.
    public static func shape(of bytes: [UInt8]) -> Shape {
        guard bytes.count >= Self.headerSize, bytes[2] == 0, bytes[3] == UInt8(Self.headerSize),
            bytes[0] >= 1, bytes[1] >= 1
        else { return .headerless }
        if bytes[0] == 1 {
            return .legacyHeader(flags: Flags(rawValue: UInt16(bytes[4]) << 8 | UInt16(bytes[5])))
        }
        return .current
    }

    /// The first record with `tag`.
    public func value(for tag: UInt16) -> [UInt8]? { self.records.first { $0.tag == tag }?.value }

    /// Parses a container; rejects short input, a foreign header size, a newer min_version,
    /// a total length that disagrees with the input, and truncated records.
    public init(decoding bytes: [UInt8]) throws(StateStoreError) {
        guard bytes.count >= Self.headerSize else {
            throw StateStoreError(.malformed, "blob of \(bytes.count) bytes is shorter than the 10-byte header")
        }
        guard bytes.count <= Self.maximumSize else {
            throw StateStoreError(.malformed, "blob of \(bytes.count) bytes exceeds \(Self.maximumSize)")
        }
        var r = ByteReader(bytes)
        do {
            let version = try r.readUInt8()
            let minVersion = try r.readUInt8()
            let headerSize = try r.readUInt16()
            let flags = try r.readUInt16()
            let total = try r.readUInt32()
            guard minVersion <= Self.version else {
                throw StateStoreError(
                    .unsupportedVersion,
                    "blob needs format version \(minVersion); this build reads \(Self.version)"
                )
            }
            _ = version
            guard headerSize == UInt16(Self.headerSize) else {
                throw StateStoreError(.malformed, "blob header size \(headerSize) is not 10")
            }
            guard Int(total) == bytes.count else {
                throw StateStoreError(.malformed, "blob header says \(total) bytes, \(bytes.count) present")
            }
            var records: [Record] = []
            while r.remaining > 0 {
                let tag = try r.readUInt16()
                let length = try r.readUInt32()
                let value = try r.readBytes(count: Int(length), max: r.remaining)
                records.append(Record(tag: tag, value: value))
            }
            self.init(flags: Flags(rawValue: flags), records: records)
        } catch let error as WireError {
            throw StateStoreError(.malformed, "blob: \(error.message)")
        } catch let error as StateStoreError {
            throw error
        } catch {
            throw StateStoreError(.malformed, "blob: \(error)")
        }
    }

    /// Serialises header + records.
    public var encoded: [UInt8] {
        var size = Self.headerSize
        for record in self.records { size += 6 + record.value.count }
        var w = ByteWriter(capacity: size)
        w.write(Self.version)
        w.write(UInt8(1))
        w.write(UInt16(Self.headerSize))
        w.write(self.flags.rawValue)
        w.write(UInt32(size))
        for record in self.records { Self.append(record, to: &w) }
        return w.bytes
    }

    /// Encodes a sequence of records without a header (the inner stream of MIGRATION_DATA and of
    /// an encryption layer).
    public static func encodeRecords(_ records: [Record]) -> [UInt8] {
        var w = ByteWriter(capacity: records.reduce(0) { $0 + 6 + $1.value.count })
        for record in records { self.append(record, to: &w) }
        return w.bytes
    }

    /// Decodes a header-less record sequence.
    public static func decodeRecords(_ bytes: [UInt8]) throws(StateStoreError) -> [Record] {
        var r = ByteReader(bytes)
        var records: [Record] = []
        do {
            while r.remaining > 0 {
                let tag = try r.readUInt16()
                let length = try r.readUInt32()
                records.append(Record(tag: tag, value: try r.readBytes(count: Int(length), max: r.remaining)))
            }
        } catch {
            throw StateStoreError(.malformed, "TLV stream: \(error.message)")
        }
        return records
    }

    private static func append(_ record: Record, to w: inout ByteWriter) {
        w.write(record.tag)
        w.write(UInt32(record.value.count))
        w.write(bytes: record.value)
    }
}
