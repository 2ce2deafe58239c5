/// A decoded control-channel request. Payload sizes were already checked by the framer
/// (`ControlCode.PayloadRule`); decoding reads the fields and bounds-checks values.
public enum ControlRequest: Hashable, Sendable {
    case getCapability
    case initialize(flags: UInt32)
    case shutdown
    case getTPMEstablished
    case setLocality(UInt8)
    case hashStart
    case hashEnd
    case cancelTPMCommand
    case storeVolatile
    case resetTPMEstablished(locality: UInt8)
    case getStateBlob(flags: UInt32, type: UInt32, offset: UInt32)
    case stop
    case getConfig
    case setDataFD
    case setBufferSize(UInt32)
    case getInfo(flags: UInt64, offset: UInt32)
    /// vtpmd's vendor command (``ControlCode/vtpmGetIdentity``).
    case vtpmGetIdentity

    /// `PTM_INIT_FLAG_DELETE_VOLATILE`.
    public static let initFlagDeleteVolatile: UInt32 = 1

    /// Decodes a complete request whose payload has the size `code.payloadRule` demands.
    /// SET_STATEBLOB and HASH_DATA are streamed by the server and are not decoded here.
    public init(code: ControlCode, payload: [UInt8]) throws(WireError) {
        var r = ByteReader(payload)
        switch code {
        case .getCapability: self = .getCapability
        case .initialize: self = .initialize(flags: try r.readUInt32())
        case .shutdown: self = .shutdown
        case .getTPMEstablished: self = .getTPMEstablished
        case .setLocality: self = .setLocality(try r.readUInt8())
        case .hashStart: self = .hashStart
        case .hashEnd: self = .hashEnd
        case .cancelTPMCommand: self = .cancelTPMCommand
        case .storeVolatile: self = .storeVolatile
        case .resetTPMEstablished: self = .resetTPMEstablished(locality: try r.readUInt8())
        case .getStateBlob:
            self = .getStateBlob(flags: try r.readUInt32(), type: try r.readUInt32(), offset: try r.readUInt32())
        case .stop: self = .stop
        case .getConfig: self = .getConfig
        case .setDataFD: self = .setDataFD
        case .setBufferSize: self = .setBufferSize(try r.readUInt32())
        case .getInfo:
            let flags = try r.readUInt64()
            let offset = try r.readUInt32()
            self = .getInfo(flags: flags, offset: offset)
        case .vtpmGetIdentity: self = .vtpmGetIdentity
        default:
            throw WireError(.unknownCommand, "unknown control command \(code)")
        }
    }

    /// The wire form (code + payload), for clients (vtpmctl, tests).
    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: 20)
        switch self {
        case .getCapability: w.write(ControlCode.getCapability.rawValue)
        case .initialize(let flags):
            w.write(ControlCode.initialize.rawValue)
            w.write(flags)
        case .shutdown: w.write(ControlCode.shutdown.rawValue)
        case .getTPMEstablished: w.write(ControlCode.getTPMEstablished.rawValue)
        case .setLocality(let l):
            w.write(ControlCode.setLocality.rawValue)
            w.write(bytes: [l, 0, 0, 0])
        case .hashStart: w.write(ControlCode.hashStart.rawValue)
        case .hashEnd: w.write(ControlCode.hashEnd.rawValue)
        case .cancelTPMCommand: w.write(ControlCode.cancelTPMCommand.rawValue)
        case .storeVolatile: w.write(ControlCode.storeVolatile.rawValue)
        case .resetTPMEstablished(let l):
            w.write(ControlCode.resetTPMEstablished.rawValue)
            w.write(bytes: [l, 0, 0, 0])
        case .getStateBlob(let flags, let type, let offset):
            w.write(ControlCode.getStateBlob.rawValue)
            w.write(flags)
            w.write(type)
            w.write(offset)
        case .stop: w.write(ControlCode.stop.rawValue)
        case .getConfig: w.write(ControlCode.getConfig.rawValue)
        case .setDataFD: w.write(ControlCode.setDataFD.rawValue)
        case .setBufferSize(let size):
            w.write(ControlCode.setBufferSize.rawValue)
            w.write(size)
        case .getInfo(let flags, let offset):
            w.write(ControlCode.getInfo.rawValue)
            w.write(flags)
            w.write(offset)
            w.write(UInt32(0))
        case .vtpmGetIdentity: w.write(ControlCode.vtpmGetIdentity.rawValue)
        }
        return w.bytes
    }
}

/// Encoders for control-channel replies.
public enum ControlReply {
    /// A bare 4-byte result.
    public static func result(_ code: UInt32) -> [UInt8] {
        var w = ByteWriter(capacity: 4)
        w.write(code)
        return w.bytes
    }

    /// GET_CAPABILITY: be32 0 + be32 capability bits.
    public static func capabilities(_ caps: ControlCapabilities) -> [UInt8] {
        var w = ByteWriter(capacity: 8)
        w.write(UInt32(0))
        w.write(caps.rawValue)
        return w.bytes
    }

    /// GET_TPMESTABLISHED: result, flag byte, 3 pad bytes (also used for errors: QEMU reads 8).
    public static func established(result: UInt32, bit: Bool) -> [UInt8] {
        var w = ByteWriter(capacity: 8)
        w.write(result)
        w.write(bytes: [bit ? 1 : 0, 0, 0, 0])
        return w.bytes
    }

    /// GET_STATEBLOB: 16-byte header then the data (errors keep the full header).
    public static func stateBlob(result: UInt32, flags: UInt32, data: ArraySlice<UInt8>) -> [UInt8] {
        var w = ByteWriter(capacity: 16 + data.count)
        w.write(result)
        w.write(flags)
        w.write(UInt32(data.count))
        w.write(UInt32(data.count))
        w.write(bytes: data)
        return w.bytes
    }

    /// SET_BUFFERSIZE: result, size in use, minimum, maximum.
    public static func bufferSize(size: UInt32, minimum: UInt32, maximum: UInt32) -> [UInt8] {
        var w = ByteWriter(capacity: 16)
        w.write(UInt32(0))
        w.write(size)
        w.write(minimum)
        w.write(maximum)
        return w.bytes
    }

    /// GET_INFO: result, total length, length of this chunk, chunk.
    public static func info(total: UInt32, chunk: ArraySlice<UInt8>) -> [UInt8] {
        var w = ByteWriter(capacity: 12 + chunk.count)
        w.write(UInt32(0))
        w.write(total)
        w.write(UInt32(chunk.count))
        w.write(bytes: chunk)
        return w.bytes
    }

    /// GET_CONFIG: result + flags (bit 0 state key, bit 1 migration key).
    public static func config(stateKey: Bool, migrationKey: Bool) -> [UInt8] {
        var w = ByteWriter(capacity: 8)
        w.write(UInt32(0))
        w.write(UInt32((stateKey ? 1 : 0) | (migrationKey ? 2 : 0)))
        return w.bytes
    }
}
