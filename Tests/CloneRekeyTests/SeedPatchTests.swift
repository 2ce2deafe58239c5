import Crypto
import Testing

@testable import CloneRekey

@Suite
struct SeedPatchTests {
    static func seed(_ byte: UInt8) -> [UInt8] { [UInt8](repeating: byte, count: 64) }
    static func sized(_ seed: [UInt8]) -> [UInt8] { [0x00, 0x40] + seed }
    static func junk(_ count: Int) -> [UInt8] { [UInt8](repeating: 0xAA, count: count) }
    static func withChecksum(_ body: [UInt8]) -> [UInt8] { body + Array(Insecure.SHA1.hash(data: body)) }

    static let eps = seed(0xE1)
    static let sps = seed(0x51)
    static let pps = seed(0x91)
    static let newEPS = seed(0xE2)
    static let triple = sized(eps) + sized(sps) + sized(pps)
    static let oldPermanent = junk(10) + triple + junk(20)
    static let newPermanent = junk(10) + sized(newEPS) + sized(sps) + sized(pps) + junk(20)
    static let volatile = withChecksum(junk(50) + triple + junk(12))

    @Test func replacesTheEPSCopyAndTheChecksum() throws {
        let patched = try SeedPatch.patchVolatile(
            Self.volatile,
            oldPermanent: Self.oldPermanent,
            newPermanent: Self.newPermanent
        )
        let expected = Self.withChecksum(
            Self.junk(50) + Self.sized(Self.newEPS) + Self.sized(Self.sps) + Self.sized(Self.pps) + Self.junk(12)
        )
        #expect(patched == expected)
        #expect(patched.count == Self.volatile.count)
    }

    @Test func locatesTheTriple() throws {
        let location = try SeedPatch.locateSeeds(inVolatile: Self.volatile, oldPermanent: Self.oldPermanent)
        #expect(location.offset == 50)
        #expect(location.endorsementSeed == Self.eps)
        #expect(location.storageSeed == Self.sps)
        #expect(location.platformSeed == Self.pps)
    }

    @Test func ignoresATripleOfSeedsTheOldPermanentStateDoesNotHold() throws {
        let foreign = Self.sized(Self.seed(1)) + Self.sized(Self.seed(2)) + Self.sized(Self.seed(3))
        let volatile = Self.withChecksum(foreign + Self.junk(4) + Self.triple + Self.junk(3))
        let location = try SeedPatch.locateSeeds(inVolatile: volatile, oldPermanent: Self.oldPermanent)
        #expect(location.offset == foreign.count + 4)
    }

    static let badVolatiles: [(String, [UInt8])] = [
        ("wrong checksum", Array(volatile.dropLast()) + [volatile.last.map { $0 ^ 1 } ?? 0]),
        ("no triple", withChecksum(junk(300))),
        ("triple twice", withChecksum(triple + junk(5) + triple)),
        ("too short", withChecksum(triple.dropLast(1).map { $0 })),
        ("EPS not in the old permanent state", withChecksum(sized(seed(7)) + sized(sps) + sized(pps))),
        ("empty", []),
    ]

    @Test(arguments: badVolatiles)
    func rejectsAVolatileState(_ name: String, _ volatile: [UInt8]) {
        #expect(throws: CloneRekeyError(.seedPatch, "")) {
            try SeedPatch.patchVolatile(volatile, oldPermanent: Self.oldPermanent, newPermanent: Self.newPermanent)
        }
    }

    static let badNewPermanents: [(String, [UInt8])] = [
        ("no SPS|PPS pair", junk(10) + sized(newEPS) + sized(seed(0x52)) + sized(pps)),
        ("pair twice", newPermanent + sized(sps) + sized(pps)),
        ("no EPS header before the pair", junk(10) + [0x00, 0x41] + newEPS + sized(sps) + sized(pps)),
        ("pair at the start", sized(sps) + sized(pps) + junk(80)),
        ("EPS unchanged", oldPermanent),
    ]

    @Test(arguments: badNewPermanents)
    func rejectsANewPermanentState(_ name: String, _ newPermanent: [UInt8]) {
        #expect(throws: CloneRekeyError(.seedPatch, "")) {
            try SeedPatch.patchVolatile(Self.volatile, oldPermanent: Self.oldPermanent, newPermanent: newPermanent)
        }
    }
}
