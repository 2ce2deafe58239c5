/// A TPM command that completed with a response code other than TPM_RC_SUCCESS.
public struct TPM2ResponseError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The command code (TPM_CC) of the command.
    public var commandCode: UInt32
    /// The TPM_RC the TPM returned.
    public var responseCode: UInt32

    public init(commandCode: UInt32, responseCode: UInt32) {
        self.commandCode = commandCode
        self.responseCode = responseCode
    }

    public var description: String {
        "\(TPM2CommandCode.name(self.commandCode)) failed with TPM_RC 0x\(String(self.responseCode, radix: 16))"
    }
}

/// Parsers for the responses to ``TPM2Commands``. Each checks the header (size equals length, tag)
/// and the bounds of every field. They throw ``TPM2ResponseError`` carrying the TPM_RC when the
/// command failed, and ``WireError`` when the response is malformed.
public enum TPM2Responses {
    /// TPM2_CreatePrimary's result.
    public struct CreatedPrimary: Sendable, Hashable {
        /// The transient handle of the new object.
        public var handle: UInt32
        /// The TPMT_PUBLIC (outPublic's contents).
        public var publicArea: [UInt8]
        /// outPublic as marshalled: the TPM2B_PUBLIC (be16 size + TPMT_PUBLIC).
        public var outPublic: [UInt8] {
            [UInt8(truncatingIfNeeded: self.publicArea.count >> 8), UInt8(truncatingIfNeeded: self.publicArea.count)]
                + self.publicArea
        }
        /// The object's name (nameAlg || H(public area)).
        public var name: [UInt8]
    }

    /// TPM2_Create's result: the TPM2B_PRIVATE and TPM2B_PUBLIC contents.
    public struct CreatedObject: Sendable, Hashable {
        public var privateArea: [UInt8]
        public var publicArea: [UInt8]
    }

    /// The response code of a response whose parameters are not needed (TPM2_Startup,
    /// TPM2_FlushContext, TPM2_ChangeEPS, the NV writes, ...): 0 or the TPM_RC. Throws only when
    /// the response is malformed.
    public static func responseCode(_ response: [UInt8]) throws(WireError) -> UInt32 {
        var reader = ByteReader(response)
        return try Self.readHeader(&reader, count: response.count).code
    }

    /// Checks that `command` succeeded and has a well-formed header.
    public static func parseEmpty(_ response: [UInt8], command: UInt32) throws {
        _ = try self.parameters(response, command: command, handles: 0)
    }

    /// Parses TPM2_CreatePrimary's response: objectHandle, outPublic and name.
    public static func parseCreatePrimary(_ response: [UInt8]) throws -> CreatedPrimary {
        let (handles, parameters) = try self.parameters(response, command: TPM2CommandCode.createPrimary, handles: 1)
        var reader = parameters
        let publicArea = try reader.readSized16()
        _ = try reader.readSized16()  // creationData
        _ = try reader.readSized16()  // creationHash
        try reader.skip(6)  // creationTicket: tag, hierarchy
        _ = try reader.readSized16()  // creationTicket.digest
        let name = try reader.readSized16(max: 68)
        try reader.finish()
        guard let handle = handles.first else { throw WireError(.truncated, "no object handle") }
        return CreatedPrimary(handle: handle, publicArea: publicArea, name: name)
    }

    /// Parses TPM2_Create's response: outPrivate and outPublic.
    public static func parseCreate(_ response: [UInt8]) throws -> CreatedObject {
        var reader = try self.parameters(response, command: TPM2CommandCode.create, handles: 0).parameters
        let privateArea = try reader.readSized16()
        let publicArea = try reader.readSized16()
        return CreatedObject(privateArea: privateArea, publicArea: publicArea)
    }

    /// Parses TPM2_Load's response: the object handle.
    public static func parseLoad(_ response: [UInt8]) throws -> UInt32 {
        let (handles, _) = try self.parameters(response, command: TPM2CommandCode.load, handles: 1)
        guard let handle = handles.first else { throw WireError(.truncated, "no object handle") }
        return handle
    }

    /// Parses TPM2_Unseal's response: the sealed data.
    public static func parseUnseal(_ response: [UInt8]) throws -> [UInt8] {
        var reader = try self.parameters(response, command: TPM2CommandCode.unseal, handles: 0).parameters
        let data = try reader.readSized16(max: 128)
        try reader.finish()
        return data
    }

    /// Parses TPM2_ReadPublic's response: the TPMT_PUBLIC.
    public static func parseReadPublic(_ response: [UInt8]) throws -> [UInt8] {
        var reader = try self.parameters(response, command: TPM2CommandCode.readPublic, handles: 0).parameters
        let publicArea = try reader.readSized16()
        _ = try reader.readSized16(max: 68)  // name
        _ = try reader.readSized16(max: 68)  // qualifiedName
        try reader.finish()
        return publicArea
    }

    /// Parses TPM2_GetCapability(TPM_CAP_HANDLES)'s response: the handles and moreData.
    public static func parseHandles(_ response: [UInt8]) throws -> (handles: [UInt32], moreData: Bool) {
        var reader = try self.parameters(response, command: TPM2CommandCode.getCapability, handles: 0).parameters
        let moreData = try reader.readUInt8() != 0
        let capability = try reader.readUInt32()
        guard capability == 0x0000_0001 else {
            throw WireError(.invalidValue, "TPM2_GetCapability: capability 0x\(String(capability, radix: 16))")
        }
        let count = try reader.readUInt32()
        guard Int(count) <= reader.remaining / 4 else {
            throw WireError(.lengthOutOfRange, "TPM2_GetCapability: \(count) handles in \(reader.remaining) bytes")
        }
        var handles: [UInt32] = []
        handles.reserveCapacity(Int(count))
        for _ in 0..<count { handles.append(try reader.readUInt32()) }
        try reader.finish()
        return (handles, moreData)
    }

    /// Parses TPM2_PCR_Read's response for one PCR in one bank: the digest.
    public static func parsePCRRead(_ response: [UInt8]) throws -> [UInt8] {
        var reader = try self.parameters(response, command: TPM2CommandCode.pcrRead, handles: 0).parameters
        _ = try reader.readUInt32()  // pcrUpdateCounter
        let selections = try reader.readUInt32()
        guard selections <= 16 else { throw WireError(.lengthOutOfRange, "TPM2_PCR_Read: \(selections) selections") }
        for _ in 0..<selections {
            try reader.skip(2)
            _ = try reader.readBytes(count: Int(try reader.readUInt8()))
        }
        let digests = try reader.readUInt32()
        guard digests == 1 else { throw WireError(.invalidValue, "TPM2_PCR_Read: \(digests) digests, expected 1") }
        let digest = try reader.readSized16(max: 64)
        try reader.finish()
        return digest
    }

    /// Parses TPM2_NV_ReadPublic's response: the index's public area.
    public static func parseNVReadPublic(_ response: [UInt8]) throws -> NVPublic {
        var reader = try self.parameters(response, command: TPM2CommandCode.nvReadPublic, handles: 0).parameters
        let nvPublic = try NVPublic(decoding: try reader.readSized16(max: 256))
        _ = try reader.readSized16(max: 68)  // nvName
        try reader.finish()
        return nvPublic
    }

    /// Parses TPM2_NV_Read's response: the data read.
    public static func parseNVRead(_ response: [UInt8]) throws -> [UInt8] {
        var reader = try self.parameters(response, command: TPM2CommandCode.nvRead, handles: 0).parameters
        let data = try reader.readSized16(max: 2048)
        try reader.finish()
        return data
    }

    // MARK: framing

    /// Reads and checks the header; returns the tag and the response code.
    static func readHeader(_ reader: inout ByteReader, count: Int) throws(WireError) -> (tag: UInt16, code: UInt32) {
        let tag = try reader.readUInt16()
        let size = try reader.readUInt32()
        let code = try reader.readUInt32()
        guard Int(size) == count else {
            throw WireError(.badHeader, "response size field \(size) but \(count) bytes")
        }
        guard tag == TPMFrame.tagNoSessions || tag == TPMFrame.tagSessions else {
            throw WireError(.badHeader, "response tag 0x\(String(tag, radix: 16))")
        }
        return (tag, code)
    }

    /// Checks the header and the response code, reads `handles` handles, and returns a reader over
    /// exactly the parameter area (for TPM_ST_SESSIONS: parameterSize bytes; the session area after
    /// it is not checked).
    static func parameters(
        _ response: [UInt8],
        command: UInt32,
        handles count: Int
    ) throws -> (handles: [UInt32], parameters: ByteReader) {
        var reader = ByteReader(response)
        let (tag, code) = try Self.readHeader(&reader, count: response.count)
        guard code == 0 else { throw TPM2ResponseError(commandCode: command, responseCode: code) }
        var handles: [UInt32] = []
        for _ in 0..<count { handles.append(try reader.readUInt32()) }
        let parameterBytes: [UInt8]
        if tag == TPMFrame.tagSessions {
            let size = try reader.readUInt32()
            parameterBytes = try reader.readBytes(count: Int(size), max: reader.remaining)
        } else {
            parameterBytes = try reader.readBytes(count: reader.remaining)
        }
        return (handles, ByteReader(parameterBytes))
    }
}
