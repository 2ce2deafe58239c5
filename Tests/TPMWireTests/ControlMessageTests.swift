import Testing

@testable import TPMWire

@Suite
struct ByteReaderTests {
    @Test func readsBigEndianIntegers() throws {
        var r = ByteReader([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07])
        #expect(try r.readUInt8() == 1)
        #expect(try r.readUInt16() == 0x0203)
        #expect(try r.readUInt32() == 0x0405_0607)
        #expect(r.remaining == 0)
        try r.finish()
    }

    @Test func rejectsReadsPastTheEnd() {
        var r = ByteReader([1, 2, 3])
        #expect(throws: WireError.truncated(needed: 4, available: 3)) { try r.readUInt32() }
        // Nothing was consumed by the failed read.
        #expect(r.remaining == 3)
    }

    @Test func checksTheMaximumBeforeAllocating() {
        var r = ByteReader([0xff, 0xff] + [UInt8](repeating: 0, count: 10))
        #expect(throws: WireError.self) { try r.readSized16(max: 1024) }
    }

    @Test func rejectsTrailingBytes() {
        let r = ByteReader([1])
        #expect(throws: WireError.self) { try r.finish() }
    }

    @Test(arguments: ["", "00", "0a0B", "ffff"])
    func hexRoundTrips(_ text: String) throws {
        let bytes = try #require([UInt8](hexString: text))
        #expect(bytes.hexString == text.lowercased())
    }

    @Test(arguments: ["0", "zz", "0g", "abc"])
    func rejectsBadHex(_ text: String) {
        #expect([UInt8](hexString: text) == nil)
    }
}

@Suite
struct ControlMessageTests {
    @Test func everyImplementedCodeHasAPayloadRule() {
        for raw in UInt32(1)...0x12 {
            #expect(ControlCode(rawValue: raw).payloadRule != nil, "code \(raw)")
        }
        #expect(ControlCode(rawValue: 0x13).payloadRule == nil)
        #expect(ControlCode(rawValue: 0x55).payloadRule == nil)
        #expect(ControlCode(rawValue: 0).payloadRule == nil)
    }

    /// The sizes QEMU and swtpm_ioctl write (PROTOCOL.md §2.3, swtpm_ioctl's `ctrlcmd` calls).
    @Test func payloadRulesMatchWhatClientsWrite() {
        #expect(ControlCode.initialize.payloadRule == .fixed(4))
        #expect(ControlCode.stop.payloadRule == .fixed(0))
        #expect(ControlCode.getCapability.payloadRule == .fixed(0))
        #expect(ControlCode.setLocality.payloadRule == .padded(minimum: 1, usual: 4))
        #expect(ControlCode.resetTPMEstablished.payloadRule == .padded(minimum: 1, usual: 4))
        #expect(ControlCode.getStateBlob.payloadRule == .fixed(12))
        #expect(ControlCode.setBufferSize.payloadRule == .fixed(4))
        #expect(ControlCode.getInfo.payloadRule == .fixed(16))
        #expect(ControlCode.setStateBlob.payloadRule == .stateBlob)
        #expect(ControlCode.hashData.payloadRule == .hashData)
    }

    @Test(arguments: [
        ControlRequest.getCapability, .initialize(flags: 1), .shutdown, .getTPMEstablished, .setLocality(3), .hashStart,
        .hashEnd, .cancelTPMCommand, .storeVolatile, .resetTPMEstablished(locality: 3),
        .getStateBlob(flags: 1, type: 2, offset: 100), .stop, .getConfig, .setDataFD, .setBufferSize(4096),
        .getInfo(flags: 3, offset: 7),
    ])
    func encodedRequestsDecodeToThemselves(_ request: ControlRequest) throws {
        let bytes = request.encoded
        let code = ControlCode(rawValue: bytes.readBigEndianUInt32(at: 0))
        #expect(try ControlRequest(code: code, payload: Array(bytes.dropFirst(4))) == request)
    }

    @Test func qemuWireFormsAreExact() {
        #expect(ControlRequest.initialize(flags: 0).encoded.hexString == "0000000200000000")
        #expect(ControlRequest.setLocality(0).encoded.hexString == "0000000500000000")
        #expect(
            ControlRequest.getStateBlob(flags: 1, type: 1, offset: 0).encoded.hexString
                == "0000000c000000010000000100000000"
        )
    }

    @Test func shortPayloadsAreRejected() {
        #expect(throws: WireError.self) { try ControlRequest(code: .initialize, payload: [0, 0]) }
        #expect(throws: WireError.self) { try ControlRequest(code: .getStateBlob, payload: [0, 0, 0, 1]) }
        #expect(throws: WireError.self) { try ControlRequest(code: ControlCode(rawValue: 0x99), payload: []) }
    }

    @Test func repliesHaveTheSizesQEMUReads() {
        #expect(ControlReply.result(0).count == 4)
        #expect(ControlReply.capabilities(.vtpmd) == [0, 0, 0, 0, 0, 0, 0xff, 0xff])
        #expect(ControlReply.established(result: 0x0a, bit: false).count == 8)
        #expect(ControlReply.stateBlob(result: 0x800, flags: 0, data: []).count == 16)
        #expect(
            ControlReply.bufferSize(size: 4096, minimum: 2808, maximum: 4096).hexString
                == "000000000000100000000af800001000"
        )
        #expect(ControlReply.config(stateKey: true, migrationKey: true).hexString == "0000000000000003")
    }

    @Test func capabilitiesCoverQEMUsMinimumAndMigration() {
        // QEMU refuses a TPM 2 backend without 0x348F and blocks migration without 0x700.
        #expect(ControlCapabilities.vtpmd.isSuperset(of: ControlCapabilities(rawValue: 0x348F)))
        #expect(ControlCapabilities.vtpmd.isSuperset(of: ControlCapabilities(rawValue: 0x0700)))
    }
}

@Suite
struct TPMFrameTests {
    @Test func errorResponseIsTenBytes() {
        #expect(TPMFrame.errorResponse(0x101).hexString == "80010000000a00000101")
    }

    @Test func wellFormedResponsesMatchTheirSizeField() {
        let ok = TPMFrame.errorResponse(0)
        #expect(TPMFrame.isWellFormedResponse(ok, maximum: 4096))
        #expect(!TPMFrame.isWellFormedResponse(ok + [0], maximum: 4096))
        #expect(!TPMFrame.isWellFormedResponse(Array(ok.prefix(9)), maximum: 4096))
        #expect(!TPMFrame.isWellFormedResponse(ok, maximum: 9))
    }

    @Test func commandBuilderWritesTheTotalSize() {
        let c = TPMFrame.command(code: 0x17B, body: [0, 8])
        #expect(c.hexString == "80010000000c0000017b0008")
        #expect(TPMFrame.declaredSize(c) == 12)
        #expect(TPMFrame.declaredSize([0x80, 1]) == nil)
    }
}
