import TPMWire
import Testing

@testable import StateStore

@Suite
struct BlobContainerTests {
    @Test func roundTripsRecords() throws {
        let c = BlobContainer(
            flags: [.migrationData],
            records: [.init(tag: 4, value: [1, 2, 3]), .init(tag: 0x7E01, value: [])]
        )
        let bytes = c.encoded
        #expect(Array(bytes.prefix(6)) == [2, 1, 0, 10, 0, 4])
        #expect(Int(bytes.readBigEndianUInt32(at: 6)) == bytes.count)
        #expect(try BlobContainer(decoding: bytes) == c)
    }

    @Test(arguments: [
        [UInt8](),
        [2, 1, 0, 10, 0, 0, 0, 0, 0],  // 9 bytes: shorter than the header (swtpm CVE-2022-23645 class)
        [2, 1, 0, 12, 0, 0, 0, 0, 0, 10],  // header size 12
        [2, 3, 0, 10, 0, 0, 0, 0, 0, 10],  // needs version 3
        [2, 1, 0, 10, 0, 0, 0, 0, 0, 11],  // total length says 11
        [2, 1, 0, 10, 0, 0, 0, 0, 0, 18, 0, 1, 0, 0, 0, 9, 1, 2],  // record longer than the blob
        [2, 1, 0, 10, 0, 0, 0, 0, 0, 13, 0, 1, 0],  // truncated record header
    ])
    func rejectsMalformedContainers(_ bytes: [UInt8]) {
        #expect(throws: StateStoreError.self) { try BlobContainer(decoding: bytes) }
    }

    @Test func classifiesLegacyShapes() {
        #expect(BlobContainer.shape(of: [0, 3, 0xab, 0x36, 0x47, 0x23, 0, 0, 0, 0]) == .headerless)
        #expect(
            BlobContainer.shape(of: [1, 1, 0, 10, 0, 2, 0, 0, 0, 20]) == .legacyHeader(flags: [.migrationEncrypted])
        )
        #expect(BlobContainer.shape(of: [2, 1, 0, 10, 0, 0, 0, 0, 0, 10]) == .current)
    }
}

@Suite
struct StateFileTests {
    static let plain: [UInt8] = [0, 3, 0xab, 0x36, 0x47, 0x23] + (0..<200).map { UInt8(truncatingIfNeeded: $0 * 7) }

    @Test func plainFilesRoundTripWithTheirGeneration() throws {
        let file = try StateFile.encode(Self.plain, key: nil, generation: 42)
        let (decoded, info) = try StateFile.decode(file, key: nil)
        #expect(decoded == Self.plain)
        #expect(info.generation == 42 && !info.encrypted)
    }

    @Test func everySingleBitFlipIsDetected() throws {
        let file = try StateFile.encode(Self.plain, key: nil, generation: 1)
        for index in stride(from: 0, to: file.count, by: 3) {
            var damaged = file
            damaged[index] ^= 0x04
            #expect(throws: StateStoreError.self, "flip at \(index)") { try StateFile.decode(damaged, key: nil) }
        }
    }

    @Test func encryptedFilesNeedTheRightKey() throws {
        let key = try StateKey(bytes: [UInt8](repeating: 7, count: 32))
        let other = try StateKey(bytes: [UInt8](repeating: 8, count: 32))
        let small = try StateKey(bytes: [UInt8](repeating: 7, count: 16))
        let file = try StateFile.encode(Self.plain, key: key, generation: 3)
        #expect(file[5] & 0x09 == 0x09)
        #expect(try StateFile.decode(file, key: key).plain == Self.plain)
        #expect(throws: StateStoreError(.decryption, "")) { try StateFile.decode(file, key: other) }
        #expect(throws: StateStoreError(.keyMismatch, "")) { try StateFile.decode(file, key: small) }
        #expect(throws: StateStoreError(.keyMissing, "")) { try StateFile.decode(file, key: nil) }
        // The ciphertext really hides the plain bytes.
        #expect(!file.hexString.contains(Array(Self.plain.suffix(32)).hexString))
    }

    @Test func headerlessFilesAreLegacyState() throws {
        // swtpm's first format: raw libtpms bytes (first byte 0).
        #expect(try StateFile.decode(Self.plain, key: nil).plain == Self.plain)
        #expect(throws: StateStoreError.self) { try StateFile.decode([0x42] + Self.plain, key: nil) }
    }
}

@Suite
struct KeyTests {
    @Test func pbkdf2MatchesTheRFC6070StyleVector() {
        // PBKDF2-HMAC-SHA512("password", "salt", 1 iteration), first 32 bytes (RFC 7914 / common vectors).
        let out = StateKey.pbkdf2SHA512(Array("password".utf8), salt: Array("salt".utf8), rounds: 1, length: 32)
        #expect(out.hexString == "867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252")
        let two = StateKey.pbkdf2SHA512(Array("password".utf8), salt: Array("salt".utf8), rounds: 2, length: 16)
        #expect(two.hexString == "e1d9c16aa681708a45f5c7c4e215ceb6")
    }

    @Test func hexKeyFilesFollowSwtpmsSyntax() throws {
        let hex = Array("0x1234567890abcdef1234567890abcdef\n".utf8)
        #expect(try StateKey(hexFile: hex, size: .aes128).size == .aes128)
        #expect(throws: StateStoreError.self) { try StateKey(hexFile: hex, size: .aes256) }
        #expect(throws: StateStoreError.self) { try StateKey(hexFile: Array("12zz".utf8), size: .aes128) }
    }

    @Test func keysNeverPrintTheirBytes() throws {
        let key = try StateKey(bytes: [UInt8](repeating: 0xAB, count: 16))
        #expect("\(key)" == "AES-128 key")
    }

    @Test func migrationBlobsRoundTripAndRejectTampering() throws {
        let stateKey = try StateKey(bytes: [UInt8](repeating: 1, count: 16))
        let migrationKey = try StateKey(bytes: [UInt8](repeating: 2, count: 32))
        let plain = StateFileTests.plain
        for keep in [false, true] {
            let blob = try MigrationBlob.encode(
                plain,
                stateKey: stateKey,
                keepStateKeyLayer: keep,
                migrationKey: migrationKey
            )
            #expect(
                try MigrationBlob.decode(blob, stateFlagEncrypted: keep, stateKey: stateKey, migrationKey: migrationKey)
                    == plain
            )
            var flipped = blob
            flipped[flipped.count - 40] ^= 1
            #expect(throws: StateStoreError.self) {
                try MigrationBlob.decode(
                    flipped,
                    stateFlagEncrypted: keep,
                    stateKey: stateKey,
                    migrationKey: migrationKey
                )
            }
            #expect(throws: StateStoreError(.keyMissing, "")) {
                try MigrationBlob.decode(blob, stateFlagEncrypted: keep, stateKey: stateKey, migrationKey: nil)
            }
        }
        // Strict policy: a plain blob is refused when a migration key is configured.
        let plainBlob = try MigrationBlob.encode(plain, stateKey: nil, keepStateKeyLayer: false, migrationKey: nil)
        #expect(
            try MigrationBlob.decode(plainBlob, stateFlagEncrypted: false, stateKey: nil, migrationKey: migrationKey)
                == plain
        )
        #expect(throws: StateStoreError.self) {
            try MigrationBlob.decode(
                plainBlob,
                stateFlagEncrypted: false,
                stateKey: nil,
                migrationKey: migrationKey,
                policy: .strict
            )
        }
    }
}
