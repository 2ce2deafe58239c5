/// swtpm control-channel command codes (`ptm_*` in swtpm's tpm_ioctl.h), as sent on the wire.
public struct ControlCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let getCapability = ControlCode(rawValue: 0x01)
    public static let initialize = ControlCode(rawValue: 0x02)
    public static let shutdown = ControlCode(rawValue: 0x03)
    public static let getTPMEstablished = ControlCode(rawValue: 0x04)
    public static let setLocality = ControlCode(rawValue: 0x05)
    public static let hashStart = ControlCode(rawValue: 0x06)
    public static let hashData = ControlCode(rawValue: 0x07)
    public static let hashEnd = ControlCode(rawValue: 0x08)
    public static let cancelTPMCommand = ControlCode(rawValue: 0x09)
    public static let storeVolatile = ControlCode(rawValue: 0x0a)
    public static let resetTPMEstablished = ControlCode(rawValue: 0x0b)
    public static let getStateBlob = ControlCode(rawValue: 0x0c)
    public static let setStateBlob = ControlCode(rawValue: 0x0d)
    public static let stop = ControlCode(rawValue: 0x0e)
    public static let getConfig = ControlCode(rawValue: 0x0f)
    public static let setDataFD = ControlCode(rawValue: 0x10)
    public static let setBufferSize = ControlCode(rawValue: 0x11)
    public static let getInfo = ControlCode(rawValue: 0x12)
    /// vtpmd vendor command: the VM identity as JSON (`Server+Vendor.swift`). Far outside swtpm's
    /// 0x01–0x13, so no swtpm version can mean something else by it; swtpm answers it with a 4-byte
    /// TPM_BAD_ORDINAL, QEMU never sends it, and GET_CAPABILITY does not advertise it.
    public static let vtpmGetIdentity = ControlCode(rawValue: 0x7654_0001)

    public var description: String {
        switch self {
        case .getCapability: "GET_CAPABILITY"
        case .initialize: "INIT"
        case .shutdown: "SHUTDOWN"
        case .getTPMEstablished: "GET_TPMESTABLISHED"
        case .setLocality: "SET_LOCALITY"
        case .hashStart: "HASH_START"
        case .hashData: "HASH_DATA"
        case .hashEnd: "HASH_END"
        case .cancelTPMCommand: "CANCEL_TPM_CMD"
        case .storeVolatile: "STORE_VOLATILE"
        case .resetTPMEstablished: "RESET_TPMESTABLISHED"
        case .getStateBlob: "GET_STATEBLOB"
        case .setStateBlob: "SET_STATEBLOB"
        case .stop: "STOP"
        case .getConfig: "GET_CONFIG"
        case .setDataFD: "SET_DATAFD"
        case .setBufferSize: "SET_BUFFERSIZE"
        case .getInfo: "GET_INFO"
        case .vtpmGetIdentity: "VTPM_GET_IDENTITY"
        default: "0x" + String(self.rawValue, radix: 16)
        }
    }

    /// How many payload bytes follow the code on the wire. The channel is a byte stream: a message's
    /// length comes from its code (and for two commands from a length field), never from how the bytes
    /// were split into reads, so messages may be pipelined.
    public enum PayloadRule: Hashable, Sendable {
        /// Exactly `n` bytes.
        case fixed(Int)
        /// `usual` bytes as QEMU writes them (the size of swtpm's request/response union), or `minimum` as
        /// swtpm_ioctl writes them (the request alone). The short form is taken only when exactly `minimum`
        /// bytes have arrived and nothing behind them (see ``ControlDecoder``).
        case padded(minimum: Int, usual: Int)
        /// 12-byte header (flags, type, length) followed by `length` bytes.
        case stateBlob
        /// be32 length followed by `length` bytes, streamed.
        case hashData
    }

    /// The payload rule, or nil for a code vtpmd does not implement.
    public var payloadRule: PayloadRule? {
        switch self {
        case .getCapability, .setDataFD, .shutdown, .getTPMEstablished, .hashStart, .hashEnd, .cancelTPMCommand,
            .storeVolatile, .stop, .getConfig, .vtpmGetIdentity:
            .fixed(0)
        case .initialize, .setBufferSize: .fixed(4)
        case .setLocality, .resetTPMEstablished: .padded(minimum: 1, usual: 4)
        case .getStateBlob: .fixed(12)
        case .getInfo: .fixed(16)
        case .setStateBlob: .stateBlob
        case .hashData: .hashData
        default: nil
        }
    }
}

/// Result codes used on the control channel (TPM 1.2-style values, as swtpm uses them).
public enum ControlResult {
    public static let success: UInt32 = 0x00
    public static let badParameter: UInt32 = 0x03
    public static let fail: UInt32 = 0x09
    public static let badOrdinal: UInt32 = 0x0a
    public static let keyNotFound: UInt32 = 0x0d
    public static let size: UInt32 = 0x17
    public static let ioError: UInt32 = 0x1f
    public static let encryptError: UInt32 = 0x20
    public static let decryptError: UInt32 = 0x21
    public static let badKeyProperty: UInt32 = 0x28
    public static let badDataSize: UInt32 = 0x2b
    public static let badVersion: UInt32 = 0x2e
    public static let badLocality: UInt32 = 0x3d
    public static let tpm2Failure: UInt32 = 0x101
    public static let retry: UInt32 = 0x800
}

/// Capability bits reported by GET_CAPABILITY.
public struct ControlCapabilities: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let initialize = ControlCapabilities(rawValue: 0x0001)
    public static let shutdown = ControlCapabilities(rawValue: 0x0002)
    public static let getTPMEstablished = ControlCapabilities(rawValue: 0x0004)
    public static let setLocality = ControlCapabilities(rawValue: 0x0008)
    public static let hashing = ControlCapabilities(rawValue: 0x0010)
    public static let cancelTPMCommand = ControlCapabilities(rawValue: 0x0020)
    public static let storeVolatile = ControlCapabilities(rawValue: 0x0040)
    public static let resetTPMEstablished = ControlCapabilities(rawValue: 0x0080)
    public static let getStateBlob = ControlCapabilities(rawValue: 0x0100)
    public static let setStateBlob = ControlCapabilities(rawValue: 0x0200)
    public static let stop = ControlCapabilities(rawValue: 0x0400)
    public static let getConfig = ControlCapabilities(rawValue: 0x0800)
    public static let setDataFD = ControlCapabilities(rawValue: 0x1000)
    public static let setBufferSize = ControlCapabilities(rawValue: 0x2000)
    public static let getInfo = ControlCapabilities(rawValue: 0x4000)
    public static let sendCommandHeader = ControlCapabilities(rawValue: 0x8000)

    /// Everything vtpmd implements for a TPM 2: the same bits as swtpm 0.7.1 (0xffff).
    public static let vtpmd: ControlCapabilities = [
        .initialize, .shutdown, .getTPMEstablished, .setLocality, .hashing, .cancelTPMCommand, .storeVolatile,
        .resetTPMEstablished, .getStateBlob, .setStateBlob, .stop, .getConfig, .setDataFD, .setBufferSize, .getInfo,
        .sendCommandHeader,
    ]
}

/// State blob types (`PTM_BLOB_TYPE_*`).
public enum StateBlobType: UInt32, Sendable, CaseIterable {
    case permanent = 1
    case volatile = 2
    case savestate = 3

    /// The blob's name as used in state file names and by libtpms (`tpm2-00.<name>`).
    public var name: String {
        switch self {
        case .permanent: "permall"
        case .volatile: "volatilestate"
        case .savestate: "savestate"
        }
    }
}

/// `state_flags` bits in GET/SET_STATEBLOB.
public enum StateBlobFlags {
    /// Request: return the blob without the state-key encryption layer.
    public static let decrypted: UInt32 = 1
    /// Reply / SET: the blob still carries the state-key encryption layer.
    public static let encrypted: UInt32 = 2
}
