import TPMWire

extension SeedPatch {
    /// Gives the new permanent blob the old one's TPM Reset counters back.
    ///
    /// The cold phase's TPM2_Startup(CLEAR) is a TPM Reset: libtpms increments `totalResetCount` and
    /// `resetCount` in PERSISTENT_DATA. `totalResetCount` is part of the HMAC of every saved
    /// context, so without this every context the guest saved before the clone (the kernel
    /// resource manager keeps objects and sessions that way) would fail with TPM_RC_INTEGRITY, and
    /// the guest would see a reset in `clockInfo.resetCount` it never had. Endorsement contexts
    /// still fail: they are keyed by ehProof, which TPM2_ChangeEPS replaced.
    ///
    /// In PERSISTENT_DATA the seeds are followed by phProof, shProof, ehProof (TPM2B each), then
    /// totalResetCount (UINT64) and resetCount (UINT32). Both blobs are read from their SPS|PPS
    /// pair (exactly once each); the patch is refused unless phProof and shProof are unchanged,
    /// ehProof changed, and both counters are exactly one higher in the new blob.
    /// - Parameters:
    ///   - newPermanent: the permanent blob after the cold phase.
    ///   - oldPermanent: the permanent blob the cold phase started from.
    ///   - seeds: the seeds found in the volatile blob (``locateSeeds(inVolatile:oldPermanent:)``).
    /// - Returns: `newPermanent` with the old counter values.
    /// - Throws: ``CloneRekeyError`` (`.seedPatch`) when the layout is not exactly as described.
    public static func restoreResetCounters(
        _ newPermanent: [UInt8],
        oldPermanent: [UInt8],
        seeds: SeedLocation
    ) throws -> [UInt8] {
        let pair = [0x00, 0x40] + seeds.storageSeed + [0x00, 0x40] + seeds.platformSeed
        let old = try Self.readCounters(oldPermanent, after: pair, name: "old")
        let new = try Self.readCounters(newPermanent, after: pair, name: "new")
        guard old.proofs[0] == new.proofs[0], old.proofs[1] == new.proofs[1], old.proofs[2] != new.proofs[2] else {
            throw CloneRekeyError(.seedPatch, "the hierarchy proofs after the seeds are not as ChangeEPS leaves them")
        }
        guard new.total == old.total &+ 1, new.reset == old.reset &+ 1 else {
            throw CloneRekeyError(
                .seedPatch,
                "reset counters went from \(old.total)/\(old.reset) to \(new.total)/\(new.reset), expected one TPM Reset"
            )
        }
        var writer = ByteWriter(capacity: 12)
        writer.write(old.total)
        writer.write(old.reset)
        var patched = newPermanent
        patched.replaceSubrange(new.offset..<(new.offset + 12), with: writer.bytes)
        return patched
    }

    private static func readCounters(
        _ permanent: [UInt8],
        after pair: [UInt8],
        name: String
    ) throws -> (proofs: [[UInt8]], total: UInt64, reset: UInt32, offset: Int) {
        let hits = Self.occurrences(of: pair[...], in: permanent, limit: 2)
        guard hits.count == 1, let at = hits.first else {
            throw CloneRekeyError(
                .seedPatch,
                "the SPS|PPS pair does not occur exactly once in the \(name) permanent state"
            )
        }
        var reader = ByteReader(permanent, offset: at + pair.count)
        do {
            let proofs = try (0..<3).map { _ in try reader.readSized16(max: 64) }
            guard proofs.allSatisfy({ !$0.isEmpty }) else {
                throw CloneRekeyError(.seedPatch, "empty hierarchy proof in the \(name) permanent state")
            }
            let offset = reader.offset
            return (proofs, try reader.readUInt64(), try reader.readUInt32(), offset)
        } catch let error as WireError {
            throw CloneRekeyError(.seedPatch, "\(name) permanent state after the seeds: \(error)")
        }
    }
}
