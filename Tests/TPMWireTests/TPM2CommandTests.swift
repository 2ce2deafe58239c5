import Testing

@testable import TPMWire

/// Hex without spaces, for readable expectations.
private func hex(_ text: String) -> [UInt8] {
    [UInt8](hexString: text.filter { !$0.isWhitespace }) ?? []
}

/// TPMS_AUTH_COMMAND of TPM_RS_PW with the empty password, preceded by its size (9).
private let emptyPasswordArea = "00000009 40000009 0000 00 0000"

@Suite
struct TPM2CommandTests {
    @Test func startupClear() {
        #expect(TPM2Commands.startup(.clear) == hex("8001 0000000c 00000144 0000"))
        #expect(TPM2Commands.startup(.state) == hex("8001 0000000c 00000144 0001"))
    }

    @Test func changeEPSUsesPlatformAuthorization() {
        #expect(TPM2Commands.changeEPS() == hex("8002 0000001b 00000124 4000000c" + emptyPasswordArea))
    }

    @Test func passwordIsCarriedAsHMAC() {
        let command = TPM2Commands.changeEPS(platformAuth: TPM2PasswordAuthorization(password: [0x61, 0x62]))
        #expect(command == hex("8002 0000001d 00000124 4000000c 0000000b 40000009 0000 00 0002 6162"))
    }

    @Test func flushContext() {
        #expect(TPM2Commands.flushContext(0x8000_0001) == hex("8001 0000000e 00000165 80000001"))
    }

    @Test func getCapabilityTransientHandles() {
        #expect(TPM2Commands.getHandles() == hex("8001 00000016 0000017a 00000001 80000000 00000040"))
    }

    @Test func rsaEKTemplateIsTheProfileDefault() {
        let template = EKTemplate.rsa2048.publicArea
        #expect(template.count == 0x13A)
        let head = hex(
            """
            0001 000b 000300b2 0020
            837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa
            0006 0080 0043 0010 0800 00000000 0100
            """
        )
        #expect(Array(template.prefix(head.count)) == head)
        #expect(template.dropFirst(head.count).allSatisfy { $0 == 0 })
        #expect(template.count - head.count == 256)
    }

    @Test func eccEKTemplateIsTheProfileDefault() {
        let zeros = String(repeating: "00", count: 32)
        let expected = hex(
            """
            0023 000b 000300b2 0020
            837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa
            0006 0080 0043 0010 0003 0010 0020 \(zeros) 0020 \(zeros)
            """
        )
        #expect(EKTemplate.eccNISTP256.publicArea == expected)
        #expect(expected.count == 0x7A)
    }

    @Test func createPrimaryInTheEndorsementHierarchy() {
        let template = EKTemplate.eccNISTP256.publicArea
        let command = TPM2Commands.createPrimary(hierarchy: TPM2Handle.endorsement, publicArea: template)
        let expected =
            hex("8002 000000a3 00000131 4000000b" + emptyPasswordArea + "0004 0000 0000 007a") + template
            + hex("0000 00000000")
        #expect(command == expected)
        #expect(command.count == 0xA3)
    }

    @Test func nvDefineSpaceOfTheCounter() {
        let nvPublic = NVPublic(
            index: 0x0140_0001,
            attributes: [.platformCreate, .ppWrite, .ppRead, .ownerRead, .authRead, .noDA, .counter],
            dataSize: 8
        )
        #expect(nvPublic.attributes.rawValue == 0x4207_0011)
        #expect(nvPublic.attributes.indexType == 1)
        #expect(
            TPM2Commands.nvDefineSpace(nvPublic: nvPublic)
                == hex(
                    "8002 0000002d 0000012a 4000000c" + emptyPasswordArea + "0000 000e 01400001 000b 42070011 0000 0008"
                )
        )
    }

    @Test func nvUndefineSpaceTakesTheAuthHandleAndTheIndex() {
        #expect(
            TPM2Commands.nvUndefineSpace(index: 0x01C0_0002)
                == hex("8002 0000001f 00000122 4000000c 01c00002" + emptyPasswordArea)
        )
        #expect(
            TPM2Commands.nvUndefineSpace(authHandle: TPM2Handle.owner, index: 0x01C0_000A)
                == hex("8002 0000001f 00000122 40000001 01c0000a" + emptyPasswordArea)
        )
    }

    @Test func nvWriteCarriesDataThenOffset() {
        #expect(
            TPM2Commands.nvWrite(index: 0x01C0_0002, data: [0xAA, 0xBB], offset: 0x10)
                == hex("8002 00000025 00000137 4000000c 01c00002" + emptyPasswordArea + "0002 aabb 0010")
        )
    }

    @Test func nvReadCarriesSizeThenOffset() {
        #expect(
            TPM2Commands.nvRead(index: 0x0140_0001, size: 8, offset: 0)
                == hex("8002 00000023 0000014e 4000000c 01400001" + emptyPasswordArea + "0008 0000")
        )
    }

    @Test func nvReadPublicHasNoSessions() {
        #expect(TPM2Commands.nvReadPublic(index: 0x01C0_000A) == hex("8001 0000000e 00000169 01c0000a"))
    }

    @Test func nvIncrementAndExtend() {
        #expect(
            TPM2Commands.nvIncrement(index: 0x0140_0001)
                == hex("8002 0000001f 00000134 4000000c 01400001" + emptyPasswordArea)
        )
        let digest = [UInt8](repeating: 0x11, count: 32)
        let extend = TPM2Commands.nvExtend(index: 0x0140_0002, data: digest)
        #expect(extend == hex("8002 00000041 00000136 4000000c 01400002" + emptyPasswordArea + "0020") + digest)
    }

    @Test func evictControlAuthorizesOnlyTheFirstHandle() {
        #expect(
            TPM2Commands.evictControl(object: 0x8000_0000, persistentHandle: 0x8101_0001)
                == hex("8002 00000023 00000120 40000001 80000000" + emptyPasswordArea + "81010001")
        )
    }

    @Test func pcrAllocateListsEveryBankUnderPlatformAuthorization() {
        let command = TPM2Commands.pcrAllocate([
            TPM2Responses.PCRBank(hashAlgorithm: TPM2Algorithm.sha1, pcrs: []),
            TPM2Responses.PCRBank(hashAlgorithm: TPM2Algorithm.sha256, pcrs: Array(0..<24)),
            TPM2Responses.PCRBank(hashAlgorithm: TPM2Algorithm.sha384, pcrs: [0, 9, 23]),
        ])
        #expect(
            command
                == hex(
                    "8002 00000031 0000012b 4000000c" + emptyPasswordArea
                        + "00000003 0004 03 000000 000b 03 ffffff 000c 03 010280"
                )
        )
        #expect(TPM2CommandCode.name(0x12B) == "TPM2_PCR_Allocate (0x12b)")
    }

    @Test func pcrReadSelectsOneSHA256PCR() {
        #expect(TPM2Commands.pcrReadSHA256(pcr: 16) == hex("8001 00000014 0000017e 00000001 000b 03 000001"))
    }
}

@Suite
struct TPM2ResponseTests {
    @Test func parsesCreatePrimary() throws {
        let parameters = hex("0004 deadbeef 0000 0000 8021 40000007 0000 0004 000b 0102")
        let response =
            hex("8002 0000002f 00000000 80000000 00000018") + parameters
            + hex("0000 01 0000")
        #expect(response.count == 0x2F)
        let created = try TPM2Responses.parseCreatePrimary(response)
        #expect(created.handle == 0x8000_0000)
        #expect(created.publicArea == [0xDE, 0xAD, 0xBE, 0xEF])
        #expect(created.outPublic == [0x00, 0x04, 0xDE, 0xAD, 0xBE, 0xEF])
        #expect(created.name == [0x00, 0x0B, 0x01, 0x02])
    }

    @Test func returnsTheResponseCodeOfAFailedCommand() throws {
        let response = hex("8001 0000000a 0000018b")
        #expect(throws: TPM2ResponseError(commandCode: 0x169, responseCode: 0x18B)) {
            try TPM2Responses.parseNVReadPublic(response)
        }
        #expect(try TPM2Responses.responseCode(response) == 0x18B)
    }

    @Test(arguments: [
        "8001 0000000b 00000000",  // size says 11, 10 bytes
        "8001 00000008 0000",  // shorter than a header
        "c401 0000000a 00000000",  // TPM 1.2 tag
        "8002 00000012 00000000 80000000 000000ff",  // parameterSize beyond the end
        "8002 00000014 00000000 80000000 00000002 0005",  // TPM2B longer than the parameters
    ])
    func rejectsMalformedResponses(_ text: String) {
        #expect(throws: WireError.self) { try TPM2Responses.parseCreatePrimary(hex(text)) }
    }

    @Test func parsesHandleLists() throws {
        let response = hex("8001 0000001b 00000000 00 00000001 00000002 80000000 80000001")
        let (handles, more) = try TPM2Responses.parseHandles(response)
        #expect(handles == [0x8000_0000, 0x8000_0001])
        #expect(!more)
    }

    @Test func rejectsAHandleCountLargerThanTheResponse() {
        let response = hex("8001 00000017 00000000 00 00000001 40000000 80000000")
        #expect(throws: WireError.self) { try TPM2Responses.parseHandles(response) }
    }

    @Test func parsesNVReadPublic() throws {
        let response = hex("8001 00000022 00000000 000e 01c00002 000b 42072001 0000 0400 0006 000b 01020304")
        let nvPublic = try TPM2Responses.parseNVReadPublic(response)
        #expect(nvPublic.index == 0x01C0_0002)
        #expect(nvPublic.attributes.contains(.platformCreate))
        #expect(nvPublic.dataSize == 0x400)
        #expect(nvPublic.encoded() == hex("01c00002 000b 42072001 0000 0400"))
    }

    @Test func parsesPCRAllocate() throws {
        let response = hex("8002 00000020 00000000 0000000d 01 00000018 00000200 00000400 0000 01 0000")
        let result = try TPM2Responses.parsePCRAllocate(response)
        #expect(result == .init(success: true, maxPCR: 24, sizeNeeded: 0x200, sizeAvailable: 0x400))
        let refused = hex("8002 00000020 00000000 0000000d 00 00000018 00000800 00000400 0000 01 0000")
        #expect(try TPM2Responses.parsePCRAllocate(refused).success == false)
        #expect(throws: TPM2ResponseError(commandCode: 0x12B, responseCode: 0x9A2)) {
            try TPM2Responses.parsePCRAllocate(hex("8001 0000000a 000009a2"))
        }
    }

    @Test func parsesNVReadWithSessions() throws {
        let response = hex("8002 0000001d 00000000 0000000a 0008 0000000000000007 0000 01 0000")
        #expect(try TPM2Responses.parseNVRead(response) == [0, 0, 0, 0, 0, 0, 0, 7])
    }

    @Test func decodesTheEKTemplatesAsPublicAreas() throws {
        let rsa = try TPM2PublicArea(decoding: EKTemplate.rsa2048.publicArea)
        #expect(rsa.attributes == EKTemplate.objectAttributes)
        #expect(rsa.key == .rsa(keyBits: 2048, exponent: 0, modulus: [UInt8](repeating: 0, count: 256)))
        let ecc = try TPM2PublicArea(decoding: EKTemplate.eccNISTP256.publicArea)
        let zeros = [UInt8](repeating: 0, count: 32)
        #expect(ecc.key == .ecc(curve: TPM2Algorithm.eccNISTP256, x: zeros, y: zeros))
        #expect(ecc.authPolicy == EKTemplate.policySecretEndorsement)
    }
}
