import TPMEngine
import TPMWire
import Testing

/// Sends commands to the in-process engine for tests.
struct TestTPM {
    let engine: Engine

    func send(_ command: [UInt8]) throws -> [UInt8] {
        var buffer = command
        return try #require(self.engine.process(&buffer), "libtpms returned no response")
    }

    func run<T>(_ command: [UInt8], _ parse: ([UInt8]) throws -> T) throws -> T {
        try parse(try self.send(command))
    }

    func responseCode(_ command: [UInt8]) throws -> UInt32 {
        try TPM2Responses.responseCode(try self.send(command))
    }

    func expectSuccess(_ command: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let code = try self.responseCode(command)
        #expect(code == 0, "TPM_RC 0x\(String(code, radix: 16))", sourceLocation: sourceLocation)
    }

    /// Reads a whole NV index with its own (empty) authorization, in 1024-byte chunks.
    func readIndex(_ index: UInt32) throws -> [UInt8] {
        let nvPublic = try self.run(TPM2Commands.nvReadPublic(index: index), TPM2Responses.parseNVReadPublic)
        var data: [UInt8] = []
        while data.count < Int(nvPublic.dataSize) {
            let size = UInt16(min(1024, Int(nvPublic.dataSize) - data.count))
            data += try self.run(
                TPM2Commands.nvRead(authHandle: index, index: index, size: size, offset: UInt16(data.count)),
                TPM2Responses.parseNVRead
            )
        }
        return data
    }

    func handles(first: UInt32 = TPM2Handle.firstTransient) throws -> [UInt32] {
        try self.run(TPM2Commands.getHandles(first: first), TPM2Responses.parseHandles).handles
    }

    func pcr16() throws -> [UInt8] {
        try self.run(TPM2Commands.pcrReadSHA256(pcr: 16), TPM2Responses.parsePCRRead)
    }

    /// TPM2_ReadClock: clockInfo.resetCount.
    func resetCount() throws -> UInt32 {
        let response = try self.send(TPMFrame.command(code: 0x181, body: []))
        try #require(try TPM2Responses.responseCode(response) == 0 && response.count == 10 + 25)
        var reader = ByteReader(response, offset: 10 + 16)
        return try reader.readUInt32()
    }

    /// TPM2_ContextSave: the TPMS_CONTEXT bytes.
    func contextSave(_ handle: UInt32) throws -> [UInt8] {
        var body = ByteWriter()
        body.write(handle)
        let response = try self.send(TPMFrame.command(code: 0x162, body: body.bytes))
        try #require(try TPM2Responses.responseCode(response) == 0)
        return Array(response.dropFirst(TPMFrame.headerSize))
    }

    /// TPM2_ContextLoad: the response code.
    func contextLoad(_ context: [UInt8]) throws -> UInt32 {
        try self.responseCode(TPMFrame.command(code: 0x161, body: context))
    }
}

/// Templates for the storage-hierarchy objects of the tests.
enum TestTemplates {
    /// An ECC NIST P-256 storage primary (the TCG "SRK" template shape): fixedTPM | fixedParent |
    /// sensitiveDataOrigin | userWithAuth | noDA | restricted | decrypt, AES-128-CFB.
    static let srk: [UInt8] = {
        var w = ByteWriter()
        w.write(TPM2Algorithm.ecc)
        w.write(TPM2Algorithm.sha256)
        w.write(UInt32(0x0003_0472))
        w.writeSized16([])
        w.write(TPM2Algorithm.aes)
        w.write(UInt16(128))
        w.write(TPM2Algorithm.cfb)
        w.write(TPM2Algorithm.null)
        w.write(TPM2Algorithm.eccNISTP256)
        w.write(TPM2Algorithm.null)
        w.writeSized16([])
        w.writeSized16([])
        return w.bytes
    }()

    /// A sealed data object: keyedHash, fixedTPM | fixedParent | userWithAuth | noDA, no scheme.
    static let sealed: [UInt8] = {
        var w = ByteWriter()
        w.write(TPM2Algorithm.keyedHash)
        w.write(TPM2Algorithm.sha256)
        w.write(UInt32(0x0000_0452))
        w.writeSized16([])
        w.write(TPM2Algorithm.null)
        w.writeSized16([])
        return w.bytes
    }()
}
