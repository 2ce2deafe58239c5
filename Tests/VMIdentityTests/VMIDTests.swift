import Testing
import VMIdentity

@Suite struct VMIDTests {
    @Test func parsesUUIDsInEitherCaseToOneCanonicalForm() throws {
        let lower = try #require(VMID("1b4e28ba-2fa1-11d2-883f-0016d3cca427"))
        let upper = try #require(VMID("1B4E28BA-2FA1-11D2-883F-0016D3CCA427"))
        #expect(lower == upper)
        #expect(upper.description == "1b4e28ba-2fa1-11d2-883f-0016d3cca427")
        #expect(lower.isUUID)
        #expect(lower.uuidBytes?.count == 16)
    }

    @Test func acceptsFileNameSafeNames() throws {
        let proxmox = try #require(VMID("101"))
        #expect(!proxmox.isUUID)
        #expect(proxmox.description == "101")
        #expect(VMID("web-01.prod_2") != nil)
        #expect(VMID("Web") != VMID("web"))
    }

    @Test(arguments: ["", ".hidden", "-x", "a/b", "a b", "..", "ä", String(repeating: "a", count: 65), "a:b"])
    func rejectsTextThatIsNeitherUUIDNorName(_ text: String) {
        #expect(VMID(text) == nil)
    }

    @Test func binaryFormRoundTripsAndRejectsDamage() throws {
        for text in ["1b4e28ba-2fa1-11d2-883f-0016d3cca427", "101", String(repeating: "z", count: 64)] {
            let vm = try #require(VMID(text))
            let bytes = vm.encoded + [0xAA]
            let decoded = try #require(VMID.decode(prefixOf: bytes[...]))
            #expect(decoded.vmID == vm)
            #expect(decoded.count == bytes.count - 1)
        }
        #expect(VMID.decode(prefixOf: [3, 1, 2][...]) == nil)
        #expect(VMID.decode(prefixOf: [1, 0, 0][...]) == nil)
        #expect(VMID.decode(prefixOf: [2, 5, 0x61][...]) == nil)
        #expect(VMID.decode(prefixOf: [2, 1, UInt8(ascii: "/")][...]) == nil)
        // A UUID spelled as a name is not a second encoding of that UUID.
        let uuidText = Array("1b4e28ba-2fa1-11d2-883f-0016d3cca427".utf8)
        #expect(VMID.decode(prefixOf: ([2, UInt8(uuidText.count)] + uuidText)[...]) == nil)
    }

    @Test func randomUUIDsAreVersion4() {
        let vm = VMID.random()
        let bytes = vm.uuidBytes ?? []
        #expect(bytes.count == 16)
        #expect(bytes[6] >> 4 == 4)
        #expect(VMID(vm.description) == vm)
    }
}
