extension TPM2Commands {
    /// TPM2_GetCapability(TPM_CAP_PCRS): the PCR banks and the PCRs allocated in each (no sessions).
    public static func getPCRAllocation() -> [UInt8] {
        var body = ByteWriter(capacity: 12)
        body.write(UInt32(0x0000_0005))  // TPM_CAP_PCRS
        body.write(UInt32(0))
        body.write(UInt32(1))
        return TPMFrame.command(code: TPM2CommandCode.getCapability, body: body.bytes)
    }
}

extension TPM2Responses {
    /// One PCR bank: its hash algorithm (TPM_ALG_ID) and the PCRs allocated in it.
    public struct PCRBank: Sendable, Hashable {
        public var hashAlgorithm: UInt16
        public var pcrs: [Int]

        public init(hashAlgorithm: UInt16, pcrs: [Int]) {
            self.hashAlgorithm = hashAlgorithm
            self.pcrs = pcrs
        }

        /// "sha256" for the algorithms TPMs implement, else the hex TPM_ALG_ID.
        public var algorithmName: String {
            switch self.hashAlgorithm {
            case 0x0004: "sha1"
            case 0x000B: "sha256"
            case 0x000C: "sha384"
            case 0x000D: "sha512"
            case 0x0012: "sm3_256"
            default: "0x" + String(self.hashAlgorithm, radix: 16)
            }
        }
    }

    /// Parses TPM2_GetCapability(TPM_CAP_PCRS)'s response: one ``PCRBank`` per TPMS_PCR_SELECTION.
    public static func parsePCRAllocation(_ response: [UInt8]) throws -> [PCRBank] {
        var reader = try self.parameters(response, command: TPM2CommandCode.getCapability, handles: 0).parameters
        _ = try reader.readUInt8()  // moreData
        let capability = try reader.readUInt32()
        guard capability == 0x0000_0005 else {
            throw WireError(.invalidValue, "TPM2_GetCapability: capability 0x\(String(capability, radix: 16))")
        }
        let count = try reader.readUInt32()
        guard count <= 16 else { throw WireError(.lengthOutOfRange, "TPM2_GetCapability: \(count) PCR banks") }
        var banks: [PCRBank] = []
        for _ in 0..<count {
            let hash = try reader.readUInt16()
            let size = try reader.readUInt8()
            let select = try reader.readBytes(count: Int(size), max: 32)
            var pcrs: [Int] = []
            for (byteIndex, byte) in select.enumerated() {
                for bit in 0..<8 where byte & (1 << UInt8(bit)) != 0 { pcrs.append(byteIndex * 8 + bit) }
            }
            banks.append(PCRBank(hashAlgorithm: hash, pcrs: pcrs))
        }
        try reader.finish()
        return banks
    }
}
