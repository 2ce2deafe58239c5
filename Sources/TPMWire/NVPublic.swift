/// TPMA_NV: the attributes of an NV index (TPM 2.0 Part 2, 13.4). The index type (TPM_NT) lives in
/// bits 4...7; see ``NVAttributes/indexType`` (TPM_NT_ORDINARY is no bit).
public struct NVAttributes: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let ppWrite = NVAttributes(rawValue: 0x0000_0001)
    public static let ownerWrite = NVAttributes(rawValue: 0x0000_0002)
    public static let authWrite = NVAttributes(rawValue: 0x0000_0004)
    public static let policyWrite = NVAttributes(rawValue: 0x0000_0008)
    public static let policyDelete = NVAttributes(rawValue: 0x0000_0400)
    public static let writeLocked = NVAttributes(rawValue: 0x0000_0800)
    public static let writeAll = NVAttributes(rawValue: 0x0000_1000)
    public static let writeDefine = NVAttributes(rawValue: 0x0000_2000)
    public static let writeSTClear = NVAttributes(rawValue: 0x0000_4000)
    public static let globalLock = NVAttributes(rawValue: 0x0000_8000)
    public static let ppRead = NVAttributes(rawValue: 0x0001_0000)
    public static let ownerRead = NVAttributes(rawValue: 0x0002_0000)
    public static let authRead = NVAttributes(rawValue: 0x0004_0000)
    public static let policyRead = NVAttributes(rawValue: 0x0008_0000)
    public static let noDA = NVAttributes(rawValue: 0x0200_0000)
    public static let orderly = NVAttributes(rawValue: 0x0400_0000)
    public static let clearSTClear = NVAttributes(rawValue: 0x0800_0000)
    public static let readLocked = NVAttributes(rawValue: 0x1000_0000)
    public static let written = NVAttributes(rawValue: 0x2000_0000)
    public static let platformCreate = NVAttributes(rawValue: 0x4000_0000)
    public static let readSTClear = NVAttributes(rawValue: 0x8000_0000)

    /// TPM_NT_COUNTER.
    public static let counter = NVAttributes(rawValue: 0x0000_0010)
    /// TPM_NT_BITS.
    public static let bits = NVAttributes(rawValue: 0x0000_0020)
    /// TPM_NT_EXTEND.
    public static let extend = NVAttributes(rawValue: 0x0000_0040)

    /// The TPM_NT value (0 ordinary, 1 counter, 2 bits, 4 extend, 8 pin fail, 9 pin pass).
    public var indexType: UInt8 { UInt8(truncatingIfNeeded: (self.rawValue >> 4) & 0xF) }
}

/// TPMS_NV_PUBLIC: an NV index's public area.
public struct NVPublic: Sendable, Hashable {
    public var index: UInt32
    public var nameAlgorithm: UInt16
    public var attributes: NVAttributes
    public var authPolicy: [UInt8]
    public var dataSize: UInt16

    public init(
        index: UInt32,
        nameAlgorithm: UInt16 = TPM2Algorithm.sha256,
        attributes: NVAttributes,
        authPolicy: [UInt8] = [],
        dataSize: UInt16
    ) {
        self.index = index
        self.nameAlgorithm = nameAlgorithm
        self.attributes = attributes
        self.authPolicy = authPolicy
        self.dataSize = dataSize
    }

    /// Decodes a TPMS_NV_PUBLIC (the contents of a TPM2B_NV_PUBLIC) and rejects trailing bytes.
    public init(decoding bytes: [UInt8]) throws(WireError) {
        var reader = ByteReader(bytes)
        self.index = try reader.readUInt32()
        self.nameAlgorithm = try reader.readUInt16()
        self.attributes = NVAttributes(rawValue: try reader.readUInt32())
        self.authPolicy = try reader.readSized16(max: 64)
        self.dataSize = try reader.readUInt16()
        try reader.finish()
    }

    /// The TPMS_NV_PUBLIC bytes (without a TPM2B size).
    public func encoded() -> [UInt8] {
        var writer = ByteWriter(capacity: 14 + self.authPolicy.count)
        writer.write(self.index)
        writer.write(self.nameAlgorithm)
        writer.write(self.attributes.rawValue)
        writer.writeSized16(self.authPolicy)
        writer.write(self.dataSize)
        return writer.bytes
    }

    /// Whether `other` describes the same index definition, ignoring the state bits the TPM sets
    /// (TPMA_NV_WRITTEN, WRITELOCKED, READLOCKED).
    public func hasSameDefinition(as other: NVPublic) -> Bool {
        let state: NVAttributes = [.written, .writeLocked, .readLocked]
        return self.index == other.index && self.nameAlgorithm == other.nameAlgorithm
            && self.attributes.subtracting(state) == other.attributes.subtracting(state)
            && self.authPolicy == other.authPolicy && self.dataSize == other.dataSize
    }
}
