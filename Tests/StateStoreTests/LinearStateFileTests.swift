import Foundation
import TestSupport
import Testing

@testable import StateStore

/// swtpm's single-file state store (`--tpmstate backend-uri=file://PATH`): layout, bounds checks,
/// and interchange with a real swtpm 0.7.1 in both directions.
@Suite struct LinearStateFileTests {
    // MARK: - Helpers

    /// "swtpmlin" as the little-endian u64 lands on disk.
    static let magicBytes: [UInt8] = [0x6E, 0x69, 0x6C, 0x6D, 0x70, 0x74, 0x77, 0x73]

    static func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
    static func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    static func readLE32(_ b: [UInt8], _ at: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[at + $1]) << (8 * UInt32($1)) }
    }

    /// A header built field by field: `slots` maps slot index to (offset, data length, section length).
    static func header(
        magic: [UInt8] = magicBytes,
        version: UInt8 = 1,
        headerSize: UInt16 = 192,
        slots: [Int: (UInt32, UInt32, UInt32)] = [:]
    ) -> [UInt8] {
        var h = magic + [version, 0] + le16(headerSize)
        for i in 0..<15 {
            let s = slots[i] ?? (0, 0, 0)
            h += le32(s.0) + le32(s.1) + le32(s.2)
        }
        return h
    }

    /// Deterministic filler that is never all zero.
    static func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) | 1 }
    }

    static func expectMalformed(
        _ bytes: [UInt8],
        _ comment: Comment,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        do {
            let decoded = try LinearStateFile(decoding: bytes)
            Issue.record("accepted: \(comment) -> \(decoded.blobs.keys.sorted())", sourceLocation: sourceLocation)
        } catch {
            #expect(error.code == .malformed, "\(comment): \(error)", sourceLocation: sourceLocation)
        }
    }

    // MARK: - Layout

    @Test func emptyStoreIsTheBareHeaderSwtpmFormats() throws {
        let bytes = try LinearStateFile().encoded
        #expect(bytes.count == 192)
        #expect(Array(bytes[0..<8]) == Self.magicBytes)
        #expect(Array(bytes[0..<8]) == Array("nilmptws".utf8))
        #expect(bytes[8] == 1 && bytes[9] == 0)
        #expect(Array(bytes[10..<12]) == [0xC0, 0x00])
        #expect(bytes[12...].allSatisfy { $0 == 0 })
        #expect(bytes == Self.header())
        #expect(try LinearStateFile(decoding: bytes).isEmpty)
    }

    @Test func unformattedInputIsAnEmptyStore() throws {
        let zeros: [[UInt8]] = [
            [], [UInt8](repeating: 0, count: 10), [UInt8](repeating: 0, count: 192),
            [UInt8](repeating: 0, count: 4096),
        ]
        for bytes in zeros {
            #expect(LinearStateFile.isUnformatted(bytes))
            let file = try LinearStateFile(decoding: bytes)
            #expect(file.isEmpty && file == LinearStateFile())
        }
        #expect(!LinearStateFile.isUnformatted(Self.header()))
        #expect(!LinearStateFile.isUnformatted([0, 0, 1]))
    }

    @Test func sectionLengthsArePowersOfTwo() {
        let cases: [(Int, UInt32?)] = [
            (0, 0), (1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (1315, 2048), (2048, 2048), (2049, 4096),
            (8986, 16384), (1 << 31, 1 << 31), ((1 << 31) + 1, nil), (-1, nil),
        ]
        for (count, expected) in cases {
            #expect(LinearStateFile.sectionLength(forDataLength: count) == expected, "\(count)")
        }
    }

    @Test func encodesSlotsInOrderBackToBack() throws {
        let permall = Self.pattern(1315, seed: 1)
        let volatile = Self.pattern(8986, seed: 2)
        let save = Self.pattern(64, seed: 3)
        let file = LinearStateFile(blobs: ["savestate": save, "volatilestate": volatile, "permall": permall])
        let bytes = try file.encoded
        #expect(bytes.count == 192 + 2048 + 16384 + 64)
        // Slot 0: permall at 192, slot 1: volatilestate after its 2048-byte section, slot 2: savestate.
        let slotWords = (0..<9).map { Self.readLE32(bytes, 12 + 4 * $0) }
        #expect(slotWords == [192, 1315, 2048, 2240, 8986, 16384, 18624, 64, 64])
        #expect(bytes[48..<192].allSatisfy { $0 == 0 })
        #expect(Array(bytes[192..<192 + 1315]) == permall)
        #expect(bytes[192 + 1315..<2240].allSatisfy { $0 == 0 })
        #expect(Array(bytes[2240..<2240 + 8986]) == volatile)
        #expect(Array(bytes[18624...]) == save)
        #expect(try LinearStateFile(decoding: bytes) == file)
    }

    @Test(arguments: [
        ["permall"], ["volatilestate"], ["savestate"], ["permall", "savestate"], ["volatilestate", "savestate"],
        ["permall", "volatilestate", "savestate"],
    ])
    func roundTrip(names: [String]) throws {
        var file = LinearStateFile()
        for (i, name) in names.enumerated() { file.blobs[name] = Self.pattern(100 + 700 * i, seed: UInt8(i)) }
        let bytes = try file.encoded
        let decoded = try LinearStateFile(decoding: bytes)
        #expect(decoded == file)
        #expect(try decoded.encoded == bytes)
        // Deleting a blob compacts the file, as swtpm's delete does.
        var smaller = decoded
        smaller.blobs[names[0]] = nil
        let compacted = try smaller.encoded
        #expect(compacted.count == bytes.count - Int(LinearStateFile.sectionLength(forDataLength: 100)!))
        #expect(try LinearStateFile(decoding: compacted) == smaller)
    }

    @Test func emptyBlobsAndExactPowersRoundTrip() throws {
        let file = LinearStateFile(
            blobs: ["permall": [], "volatilestate": Self.pattern(4096, seed: 9), "savestate": []])
        let bytes = try file.encoded
        #expect(bytes.count == 192 + 4096)
        #expect(try LinearStateFile(decoding: bytes) == file)
    }

    /// Files swtpm writes after a blob outgrew its section (it moves to the end), with stale bytes
    /// in the slack after a blob shrank, and longer than the last section.
    @Test func decodesLayoutsSwtpmProducesOverTime() throws {
        let permall = Self.pattern(1400, seed: 5)
        let volatile = Self.pattern(300, seed: 6)
        // volatilestate first at 192 (512-byte section), permall moved behind it (2048-byte section).
        var bytes = Self.header(slots: [0: (704, 1400, 2048), 1: (192, 300, 512)])
        bytes += volatile + [UInt8](repeating: 0xEE, count: 212)
        bytes += permall + [UInt8](repeating: 0xAB, count: 648)
        bytes += [1, 2, 3]  // beyond the last section: swtpm ignores it
        let file = try LinearStateFile(decoding: bytes)
        #expect(file.blobs == ["permall": permall, "volatilestate": volatile])
        // Re-encoding normalises to slot order with zero slack.
        let normal = try file.encoded
        #expect(Self.readLE32(normal, 12) == 192 && Self.readLE32(normal, 24) == 2240)
        #expect(normal.count == 192 + 2048 + 512)
        #expect(try LinearStateFile(decoding: normal) == file)
        // swtpm accepts a larger header size and version-1 padding byte values it does not check.
        var padded = Self.header(headerSize: 200, slots: [0: (200, 4, 4)]) + [0, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9]
        padded[9] = 0x55
        #expect(try LinearStateFile(decoding: padded).blobs == ["permall": [9, 9, 9, 9]])
    }

    // MARK: - Malformed input

    @Test func rejectsMalformedHeaders() {
        let good = Self.header(slots: [0: (192, 4, 4)]) + [1, 2, 3, 4]
        Self.expectMalformed(Array(good[0..<191]), "one byte short of the header")
        Self.expectMalformed([0x6E, 0x69, 0x6C], "three bytes")
        Self.expectMalformed(Self.header(magic: Array("swtpmlin".utf8)), "magic in big-endian order")
        Self.expectMalformed(Self.header(magic: [0, 0, 0, 0, 0, 0, 0, 0], slots: [0: (192, 0, 0)]), "zero magic")
        Self.expectMalformed([UInt8](repeating: 0xFF, count: 4096), "all 0xFF")
        Self.expectMalformed(Self.header(version: 0), "version 0")
        Self.expectMalformed(Self.header(headerSize: 0), "header size 0")
        Self.expectMalformed(Self.header(headerSize: 191), "header size 191")
        Self.expectMalformed(Self.header(headerSize: 193), "header size beyond the file")
        Self.expectMalformed(Self.header(headerSize: 0xFFFF), "header size 65535")
    }

    @Test func rejectsNewerVersions() {
        for version: UInt8 in [2, 0xFF] {
            #expect(throws: StateStoreError(.unsupportedVersion, "")) {
                _ = try LinearStateFile(decoding: Self.header(version: version))
            }
        }
    }

    @Test func rejectsBadSlots() {
        let body = [UInt8](repeating: 7, count: 64)
        func file(_ slots: [Int: (UInt32, UInt32, UInt32)], extra: [UInt8] = body) -> [UInt8] {
            Self.header(slots: slots) + extra
        }
        #expect(throws: Never.self) { _ = try LinearStateFile(decoding: file([0: (192, 64, 64)])) }
        Self.expectMalformed(file([0: (100, 4, 4)]), "section inside the header")
        Self.expectMalformed(file([0: (191, 1, 1)]), "section starting one byte inside the header")
        Self.expectMalformed(file([0: (192, 64, 65)]), "section one byte beyond the file")
        Self.expectMalformed(file([0: (256, 1, 1)]), "section starting at the end of the file")
        Self.expectMalformed(file([0: (192, 65, 128)]), "data beyond the file")
        Self.expectMalformed(file([0: (192, 33, 32)]), "data longer than its section")
        Self.expectMalformed(file([0: (0xFFFF_FFF0, 4, 0x20)]), "offset near 4 GiB")
        Self.expectMalformed(file([0: (192, 4, 0xFFFF_FFFF)]), "section length near 4 GiB")
        Self.expectMalformed(file([0: (192, 32, 32), 1: (208, 16, 32)]), "overlapping sections")
        Self.expectMalformed(file([0: (192, 32, 32), 2: (192, 32, 32)]), "two slots on one section")
        Self.expectMalformed(file([1: (192, 64, 64), 0: (200, 8, 8)]), "section nested in another")
        Self.expectMalformed(file([3: (192, 4, 4)]), "reserved slot 3 used")
        Self.expectMalformed(file([14: (192, 4, 4)]), "reserved slot 14 used")
        Self.expectMalformed(file([0: (0, 4, 0)]), "unused slot with a data length")
        Self.expectMalformed(file([2: (0, 0, 16)]), "unused slot with a section length")
        // Adjacent sections and empty sections sharing an offset are fine.
        #expect(throws: Never.self) {
            _ = try LinearStateFile(decoding: file([0: (192, 32, 32), 1: (224, 32, 32), 2: (256, 0, 0)]))
        }
    }

    @Test func refusesToEncodeUnknownNames() {
        let file = LinearStateFile(blobs: ["permall": [1], "tpm2-00.permall": [2]])
        #expect(throws: StateStoreError(.malformed, "")) { _ = try file.encoded }
    }

    // MARK: - Real swtpm 0.7.1

    static let nvIndex = "0x1500016"
    static let nvSecret = Array("linear!!".utf8)

    /// Starts swtpm on `path` with TCP data (`port`) and control (`port + 1`) channels.
    static func startSwtpm(_ path: String, port: UInt16) throws -> Daemon {
        try Daemon(
            "swtpm",
            [
                "socket", "--tpm2", "--tpmstate", "backend-uri=file://\(path)",
                "--flags", "not-need-init,startup-clear",
                "--server", "type=tcp,port=\(port)", "--ctrl", "type=tcp,port=\(port + 1)",
            ],
            waitForPort: port
        )
    }

    static func tools(_ tool: String, _ arguments: [String], port: UInt16) throws -> CommandResult {
        try runCommand(tool, arguments, environment: ["TPM2TOOLS_TCTI": "swtpm:host=127.0.0.1,port=\(port)"])
    }

    static func ioctl(_ flag: String, port: UInt16) throws -> CommandResult {
        try runCommand("swtpm_ioctl", ["--tcp", "127.0.0.1:\(port + 1)", flag])
    }

    @Test func interchangesFilesWithSwtpm() throws {
        try #require(ExecutableLookup.exists("swtpm"), "swtpm 0.7.1 is needed for this test")
        try withTemporaryDirectory { dir in
            // 1. swtpm creates and fills a linear file: manufacture, an NV index, volatile state.
            let theirs = "\(dir)/theirs.bin"
            do {
                let port = try freePortPair()
                let swtpm = try Self.startSwtpm(theirs, port: port)
                let define = try Self.tools(
                    "tpm2_nvdefine",
                    [Self.nvIndex, "-C", "o", "-s", "\(Self.nvSecret.count)", "-a", "ownerread|ownerwrite"],
                    port: port
                )
                try #require(define.status == 0, "\(define.output)")
                let input = "\(dir)/nv.in"
                try Data(Self.nvSecret).write(to: URL(fileURLWithPath: input))
                let write = try Self.tools("tpm2_nvwrite", [Self.nvIndex, "-C", "o", "-i", input], port: port)
                try #require(write.status == 0, "\(write.output)")
                let store = try Self.ioctl("-v", port: port)
                try #require(store.status == 0, "\(store.output)")
                let stop = try Self.ioctl("-s", port: port)
                try #require(stop.status == 0, "\(stop.output)")
                #expect(swtpm.waitForExit() != nil, "\(swtpm.output)")
            }
            let written = try #require(fileBytes(theirs))
            #expect(Array(written[0..<8]) == Array("nilmptws".utf8))
            let decoded = try LinearStateFile(decoding: written)
            let permall = try #require(decoded.blobs["permall"], "\(decoded.blobs.keys.sorted())")
            #expect(Array(permall.prefix(4)) == [0x02, 0x01, 0x00, 0x0A])
            #expect(try BlobContainer(decoding: permall).value(for: BlobContainer.Tag.data) != nil)
            let volatile = try #require(decoded.blobs["volatilestate"])
            #expect(Array(volatile.prefix(4)) == [0x02, 0x01, 0x00, 0x0A])
            // swtpm's fresh file has exactly our layout: same header, same length.
            let ours = try decoded.encoded
            #expect(ours.count == written.count)
            #expect(Array(ours[0..<192]) == Array(written[0..<192]))

            // 2. swtpm runs on a file we wrote and sees the NV index written in step 1.
            let mine = "\(dir)/ours.bin"
            try #require(
                FileManager.default.createFile(
                    atPath: mine,
                    contents: Data(ours),
                    attributes: [.posixPermissions: 0o600]
                )
            )
            do {
                let port = try freePortPair()
                let swtpm = try Self.startSwtpm(mine, port: port)
                let random = try Self.tools("tpm2_getrandom", ["8", "--hex"], port: port)
                #expect(random.status == 0 && random.stdout.count == 16, "\(random.output)")
                let output = "\(dir)/nv.out"
                let read = try Self.tools("tpm2_nvread", [Self.nvIndex, "-C", "o", "-o", output], port: port)
                #expect(read.status == 0, "\(read.output)")
                #expect(fileBytes(output) == Self.nvSecret)
                // A fresh CMD_INIT reloads permall from the file (as swtpm has updated it in place).
                let initialize = try Self.ioctl("-i", port: port)
                #expect(initialize.status == 0, "\(initialize.output)")
                let startup = try Self.tools("tpm2_startup", ["-c"], port: port)
                #expect(startup.status == 0, "\(startup.output)")
                try? FileManager.default.removeItem(atPath: output)
                let reread = try Self.tools("tpm2_nvread", [Self.nvIndex, "-C", "o", "-o", output], port: port)
                #expect(reread.status == 0, "\(reread.output)")
                #expect(fileBytes(output) == Self.nvSecret)
                let stop = try Self.ioctl("-s", port: port)
                #expect(stop.status == 0, "\(stop.output)")
                #expect(swtpm.waitForExit() != nil, "\(swtpm.output)")
                #expect(!swtpm.output.contains("Formatting"), "swtpm reformatted our file: \(swtpm.output)")
            }

            // 3. What swtpm made of our file (in-place updates, volatile state consumed) still decodes.
            let after = try LinearStateFile(decoding: try #require(fileBytes(mine)))
            let permallAfter = try #require(after.blobs["permall"])
            #expect(Array(permallAfter.prefix(4)) == [0x02, 0x01, 0x00, 0x0A])
        }
    }
}
