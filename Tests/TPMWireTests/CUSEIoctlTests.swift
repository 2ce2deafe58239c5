import Testing

@testable import TPMWire

@Suite
struct CUSEIoctlTests {
    /// The request numbers swtpm 0.7.1's tpm_ioctl.h gives on x86_64 (_IOR/_IOWR('P', n, type)).
    @Test func numbersAreTpmIoctlHs() {
        let expected: [CUSEIoctl: UInt32] = [
            .getCapability: 0x8008_5000, .initialize: 0xC004_5001, .shutdown: 0x8004_5002,
            .getTPMEstablished: 0x8008_5003, .setLocality: 0xC004_5004, .hashStart: 0x8004_5005,
            .hashData: 0xD004_5006, .hashEnd: 0x8004_5007, .cancelTPMCommand: 0x8004_5008,
            .storeVolatile: 0x8004_5009, .resetTPMEstablished: 0xC004_500A, .getStateBlob: 0xCC10_500B,
            .setStateBlob: 0xCC0C_500C, .stop: 0x8004_500D, .getConfig: 0x8008_500E, .setDataFD: 0x8004_500F,
            .setBufferSize: 0xC010_5010, .getInfo: 0xCC10_5011,
        ]
        #expect(expected.count == CUSEIoctl.allCases.count)
        for ioctl in CUSEIoctl.allCases {
            #expect(ioctl.number == expected[ioctl], "\(ioctl)")
            #expect(CUSEIoctl(number: ioctl.number) == ioctl)
            // The control channel's code is the ioctl's index plus one.
            #expect(ioctl.controlCode.rawValue == UInt32(ioctl.rawValue) + 1)
        }
    }

    @Test(
        arguments: [
            0x8004_5000,  // GET_CAPABILITY with a 4-byte argument
            0xC008_5000,  // ... as _IOWR
            0x4004_5001,  // INIT as _IOW
            0xC004_4101,  // type 'A'
            0x8004_5012,  // index 18: PTM_LOCK_STORAGE of swtpm 0.8, not 0.7
            0xCC0C_5011,  // GET_INFO with i386's size
            0,
        ] as [UInt32]
    )
    func otherNumbersAreRefused(_ number: UInt32) {
        #expect(CUSEIoctl(number: number) == nil)
    }

    @Test func nativeFieldsAreLittleEndian() {
        var s = NativeStruct(size: 16)
        s.setUInt32(0x0102_0304, at: 0)
        s.setUInt64(0x1122_3344_5566_7788, at: 4)
        s.setBytes([0xAA, 0xBB], at: 12)
        #expect(s.bytes == [4, 3, 2, 1, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0xAA, 0xBB, 0, 0])
        #expect(NativeStruct.uint32(s.bytes, at: 0) == 0x0102_0304)
        #expect(NativeStruct.uint64(s.bytes, at: 4) == 0x1122_3344_5566_7788)
        // Reads past the end give zeros, never a trap.
        #expect(NativeStruct.uint32([1, 2], at: 0) == 0x0201)
        #expect(NativeStruct.uint32([], at: 8) == 0)
    }
}
