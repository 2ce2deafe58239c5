/// The ioctls of swtpm's CUSE device (swtpm 0.7's tpm_ioctl.h): `_IO*('P', n)` where n is the control channel's
/// command code minus one, and the argument is the command's structure in the host's byte order (the control
/// channel's is big-endian). A restricted ioctl carries its argument's size and direction in its number, so a
/// number is accepted only with the exact size and direction of its structure.
public enum CUSEIoctl: UInt8, Sendable, CaseIterable {
    case getCapability = 0
    case initialize = 1
    case shutdown = 2
    case getTPMEstablished = 3
    case setLocality = 4
    case hashStart = 5
    case hashData = 6
    case hashEnd = 7
    case cancelTPMCommand = 8
    case storeVolatile = 9
    case resetTPMEstablished = 10
    case getStateBlob = 11
    case setStateBlob = 12
    case stop = 13
    case getConfig = 14
    case setDataFD = 15
    case setBufferSize = 16
    case getInfo = 17

    /// The data part of a state blob or info chunk in one ioctl (`PTM_STATE_BLOB_SIZE`, `PTM_GETINFO_SIZE`).
    public static let chunkSize = 3072
    /// The data part of `ptm_hdata`.
    public static let hashChunkSize = 4096
    static let magic: UInt32 = 0x50  // 'P'

    /// Whether the kernel copies the argument in (`_IOW`, `_IOWR`); every one copies it out.
    public var writesArgument: Bool {
        switch self {
        case .initialize, .setLocality, .hashData, .resetTPMEstablished, .getStateBlob, .setStateBlob,
            .setBufferSize, .getInfo:
            true
        default:
            false
        }
    }

    /// `sizeof` the argument on x86_64 (and every 64-bit Linux ABI).
    public var argumentSize: Int {
        switch self {
        case .getCapability: 8  // ptm_cap, a uint64_t
        case .getTPMEstablished: 8  // ptm_est: result, bit, padding
        case .getConfig: 8  // ptm_getconfig
        case .hashData: 4 + Self.hashChunkSize  // ptm_hdata
        case .getStateBlob: 16 + Self.chunkSize  // ptm_getstate: the response is the larger member
        case .setStateBlob: 12 + Self.chunkSize  // ptm_setstate
        case .setBufferSize: 16  // ptm_setbuffersize
        case .getInfo: 16 + Self.chunkSize  // ptm_getinfo: 12 + 3072, aligned to its uint64_t
        default: 4  // ptm_res, ptm_init, ptm_loc, ptm_reset_est
        }
    }

    /// The ioctl request number (`_IOR`/`_IOWR('P', n, type)`).
    public var number: UInt32 {
        let direction: UInt32 = self.writesArgument ? 3 : 2  // _IOC_READ = 2, _IOC_WRITE = 1
        return direction << 30 | UInt32(self.argumentSize) << 16 | Self.magic << 8 | UInt32(self.rawValue)
    }

    /// The ioctl that `number` is, when its type, size and direction are the ones of tpm_ioctl.h.
    public init?(number: UInt32) {
        guard (number >> 8) & 0xff == Self.magic, let ioctl = CUSEIoctl(rawValue: UInt8(number & 0xff)),
            ioctl.number == number
        else { return nil }
        self = ioctl
    }

    /// The control channel's command for this ioctl.
    public var controlCode: ControlCode { ControlCode(rawValue: UInt32(self.rawValue) + 1) }
}

/// Host-order (little-endian) fields of ioctl arguments.
public struct NativeStruct: Sendable {
    public private(set) var bytes: [UInt8]

    /// A zeroed argument of `size` bytes.
    public init(size: Int) { self.bytes = [UInt8](repeating: 0, count: size) }

    public mutating func setUInt32(_ value: UInt32, at offset: Int) {
        for i in 0..<4 { self.bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i))) }
    }

    public mutating func setUInt64(_ value: UInt64, at offset: Int) {
        for i in 0..<8 { self.bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }

    /// The first `count` fields of a control-channel reply (big-endian `UInt32`s), in host order at the same
    /// offsets; a shorter reply (an error's result alone) fills what it has.
    public mutating func setFields(fromBigEndian reply: [UInt8], count: Int) {
        for field in 0..<min(count, reply.count / 4) {
            self.setUInt32(reply.readBigEndianUInt32(at: 4 * field), at: 4 * field)
        }
    }

    public mutating func setBytes(_ data: some Collection<UInt8>, at offset: Int) {
        self.bytes.replaceSubrange(offset..<offset + data.count, with: data)
    }

    /// The little-endian `UInt32` at `offset` of `bytes`, 0 where `bytes` ends first.
    public static func uint32(_ bytes: [UInt8], at offset: Int) -> UInt32 {
        var value: UInt32 = 0
        for i in 0..<4 where offset + i < bytes.count { value |= UInt32(bytes[offset + i]) << (8 * UInt32(i)) }
        return value
    }

    public static func uint64(_ bytes: [UInt8], at offset: Int) -> UInt64 {
        UInt64(self.uint32(bytes, at: offset)) | UInt64(self.uint32(bytes, at: offset + 4)) << 32
    }
}
