extension TPM2CommandCode {
    /// TPM2_PCR_Allocate.
    public static let pcrAllocate: UInt32 = 0x12B
}

extension TPM2Commands {
    /// PCRs per bank in libtpms (IMPLEMENTATION_PCR): a 3-byte pcrSelect.
    public static let implementedPCRCount = 24

    /// TPM2_PCR_Allocate under platform authorization: for each bank of `banks`, exactly its PCRs are
    /// allocated (an empty list turns the bank off). A bank the TPM implements but `banks` does not
    /// name keeps its current allocation, so to turn banks off list them with no PCRs. The allocation
    /// takes effect at the next TPM Reset (TPM2_Startup(CLEAR) after a power cycle).
    /// - Parameters:
    ///   - banks: one TPMS_PCR_SELECTION per entry: hash algorithm and PCR indices (0..<`pcrCount`).
    ///   - pcrCount: the PCRs a bank has (sizeofSelect = pcrCount / 8, rounded up).
    ///   - platformAuth: the platform hierarchy's authorization.
    public static func pcrAllocate(
        _ banks: [TPM2Responses.PCRBank],
        pcrCount: Int = implementedPCRCount,
        platformAuth: TPM2PasswordAuthorization = .empty
    ) -> [UInt8] {
        precondition(banks.count <= 16, "more PCR banks than a TPML_PCR_SELECTION holds")
        let selectSize = (pcrCount + 7) / 8
        var parameters = ByteWriter(capacity: 4 + banks.count * (3 + selectSize))
        parameters.write(UInt32(banks.count))  // TPML_PCR_SELECTION count
        for bank in banks {
            var select = [UInt8](repeating: 0, count: selectSize)
            for pcr in bank.pcrs {
                precondition((0..<pcrCount).contains(pcr), "PCR index out of range")
                select[pcr / 8] |= 1 << UInt8(pcr % 8)
            }
            parameters.write(bank.hashAlgorithm)
            parameters.write(UInt8(selectSize))
            parameters.write(bytes: select)
        }
        return self.authorized(
            TPM2CommandCode.pcrAllocate,
            handles: [TPM2Handle.platform],
            auths: [platformAuth],
            parameters: parameters.bytes
        )
    }
}

extension TPM2Responses {
    /// TPM2_PCR_Allocate's result.
    public struct PCRAllocationResult: Sendable, Hashable {
        /// allocationSuccess: whether the allocation was accepted (it applies at the next TPM Reset).
        public var success: Bool
        /// maxPCR: the PCRs per bank.
        public var maxPCR: UInt32
        /// sizeNeeded: the bytes of NV memory the allocation needs.
        public var sizeNeeded: UInt32
        /// sizeAvailable: the bytes of NV memory available for PCRs.
        public var sizeAvailable: UInt32

        public init(success: Bool, maxPCR: UInt32, sizeNeeded: UInt32, sizeAvailable: UInt32) {
            self.success = success
            self.maxPCR = maxPCR
            self.sizeNeeded = sizeNeeded
            self.sizeAvailable = sizeAvailable
        }
    }

    /// Parses TPM2_PCR_Allocate's response: allocationSuccess, maxPCR, sizeNeeded, sizeAvailable.
    public static func parsePCRAllocate(_ response: [UInt8]) throws -> PCRAllocationResult {
        var reader = try self.parameters(response, command: TPM2CommandCode.pcrAllocate, handles: 0).parameters
        let success = try reader.readUInt8()
        let maxPCR = try reader.readUInt32()
        let sizeNeeded = try reader.readUInt32()
        let sizeAvailable = try reader.readUInt32()
        try reader.finish()
        return PCRAllocationResult(
            success: success != 0,
            maxPCR: maxPCR,
            sizeNeeded: sizeNeeded,
            sizeAvailable: sizeAvailable
        )
    }
}
