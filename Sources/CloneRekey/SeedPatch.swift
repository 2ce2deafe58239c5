import Crypto

/// Carries a volatile state blob over to a permanent state whose endorsement primary seed (EPS)
/// changed.
///
/// libtpms (0.9) ties its volatile state to the primary seeds: near the end of the blob it
/// marshals copies of EPS, SPS and PPS, each a TPM2B of 64 bytes (`00 40` + seed, consecutive),
/// checks them against the permanent state when the blob is loaded ("EPSeed does not match"), and
/// ends the blob with a SHA-1 over all bytes before it. The permanent state marshals the same
/// three seeds consecutively in its PERSISTENT_DATA.
///
/// The patch is byte-level and refuses anything ambiguous: the triple must occur exactly once in
/// the volatile blob with each seed present in the old permanent blob, the unchanged SPS|PPS pair
/// must occur exactly once in the new permanent blob, preceded by the new EPS's TPM2B header.
/// libtpms re-checks all three seeds and the checksum when the result is loaded, so a wrong patch
/// cannot load silently.
public enum SeedPatch {
    static let seedSize = 64
    static let sized = seedSize + 2
    static let checksumSize = Insecure.SHA1.byteCount

    /// Where the seed triple sits in a volatile blob.
    public struct SeedLocation: Sendable, Hashable {
        /// Offset of the EPS TPM2B (its size field) in the volatile blob.
        public var offset: Int
        public var endorsementSeed: [UInt8]
        public var storageSeed: [UInt8]
        public var platformSeed: [UInt8]
    }

    /// Replaces the EPS copy in `volatile` with the EPS of `newPermanent` and recomputes the checksum.
    /// - Parameters:
    ///   - volatile: the libtpms volatile state blob (TPMLIB_VolatileAll_Store / SET_STATEBLOB).
    ///   - oldPermanent: the permanent state blob `volatile` belongs to.
    ///   - newPermanent: the permanent state after TPM2_ChangeEPS (same SPS and PPS).
    /// - Returns: the patched volatile blob, the same length as `volatile`.
    /// - Throws: ``CloneRekeyError`` with code `.seedPatch` when the checksum is wrong, the triple is
    ///   not found exactly once, the new EPS is not found exactly once, or the EPS did not change.
    public static func patchVolatile(
        _ volatile: [UInt8],
        oldPermanent: [UInt8],
        newPermanent: [UInt8]
    ) throws -> [UInt8] {
        let location = try self.locateSeeds(inVolatile: volatile, oldPermanent: oldPermanent)
        let pair = [0x00, 0x40] + location.storageSeed + [0x00, 0x40] + location.platformSeed
        let hits = Self.occurrences(of: pair[...], in: newPermanent, limit: 2)
        guard hits.count == 1, let at = hits.first else {
            throw CloneRekeyError(
                .seedPatch,
                "the SPS|PPS pair occurs \(hits.count == 2 ? "more than once" : "0 times") in the new permanent state"
            )
        }
        guard at >= Self.sized, newPermanent[at - Self.sized] == 0x00, newPermanent[at - Self.sized + 1] == 0x40 else {
            throw CloneRekeyError(.seedPatch, "no 64-byte EPS before the SPS|PPS pair in the new permanent state")
        }
        let newSeed = Array(newPermanent[(at - Self.seedSize)..<at])
        guard newSeed != location.endorsementSeed else {
            throw CloneRekeyError(.seedPatch, "the new permanent state has the same EPS as the old one")
        }
        var patched = volatile
        patched.replaceSubrange((location.offset + 2)..<(location.offset + Self.sized), with: newSeed)
        let bodyCount = patched.count - Self.checksumSize
        let checksum = Insecure.SHA1.hash(data: patched[..<bodyCount])
        patched.replaceSubrange(bodyCount..., with: Array(checksum))
        return patched
    }

    /// Finds the EPS|SPS|PPS triple in a volatile blob after checking its trailing SHA-1.
    /// - Throws: ``CloneRekeyError`` (`.seedPatch`) unless the checksum matches and exactly one
    ///   triple whose seeds all occur in `oldPermanent` is found.
    public static func locateSeeds(inVolatile volatile: [UInt8], oldPermanent: [UInt8]) throws -> SeedLocation {
        let triple = 3 * Self.sized
        guard volatile.count >= triple + Self.checksumSize else {
            throw CloneRekeyError(.seedPatch, "volatile state of \(volatile.count) bytes is too short")
        }
        let bodyCount = volatile.count - Self.checksumSize
        guard Array(Insecure.SHA1.hash(data: volatile[..<bodyCount])) == Array(volatile[bodyCount...]) else {
            throw CloneRekeyError(.seedPatch, "volatile state checksum (SHA-1) does not match")
        }
        var found: [SeedLocation] = []
        var i = 0
        while i + triple <= bodyCount {
            defer { i += 1 }
            guard Self.isSeedHeader(volatile, at: i), Self.isSeedHeader(volatile, at: i + Self.sized),
                Self.isSeedHeader(volatile, at: i + 2 * Self.sized)
            else { continue }
            let seeds = (0..<3).map { k in volatile[(i + k * Self.sized + 2)..<(i + (k + 1) * Self.sized)] }
            guard seeds.allSatisfy({ !Self.occurrences(of: $0, in: oldPermanent, limit: 1).isEmpty }) else { continue }
            found.append(
                SeedLocation(
                    offset: i,
                    endorsementSeed: Array(seeds[0]),
                    storageSeed: Array(seeds[1]),
                    platformSeed: Array(seeds[2])
                )
            )
            if found.count > 1 { break }
        }
        guard found.count == 1, let location = found.first else {
            throw CloneRekeyError(
                .seedPatch,
                "\(found.isEmpty ? "no" : "more than one") EPS|SPS|PPS triple of the permanent state in the volatile state"
            )
        }
        return location
    }

    private static func isSeedHeader(_ bytes: [UInt8], at offset: Int) -> Bool {
        bytes[offset] == 0x00 && bytes[offset + 1] == 0x40
    }

    /// Offsets of `needle` in `haystack`, at most `limit` of them.
    static func occurrences(of needle: ArraySlice<UInt8>, in haystack: [UInt8], limit: Int) -> [Int] {
        guard let first = needle.first, needle.count <= haystack.count else { return [] }
        var result: [Int] = []
        var start = 0
        let last = haystack.count - needle.count
        while start <= last, let candidate = haystack[start...last].firstIndex(of: first) {
            if haystack[candidate..<(candidate + needle.count)].elementsEqual(needle) {
                result.append(candidate)
                if result.count >= limit { break }
            }
            start = candidate + 1
        }
        return result
    }
}
