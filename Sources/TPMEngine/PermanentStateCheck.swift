/// Checks libtpms does not make on a permanent state blob before it loads it.
///
/// libtpms (0.9.2, and its master as of 2026) takes `PERSISTENT_DATA.auditHashAlg` from the blob without
/// checking it. A blob with an invalid algorithm there and a command marked for command audit loads, and the
/// first audited command dereferences a null hash descriptor: the process dies (found by `make fuzz`, target
/// `libtpms-state`; the input is kept in `Fuzz/regressions/libtpms-state/`). A state blob comes from the state
/// directory or from SET_STATEBLOB (QEMU's migration stream, a snapshot), so vtpmd refuses such a blob before
/// libtpms sees it.
///
/// The reader follows libtpms' own unmarshalling of `PERSISTENT_ALL` (NVMarshal.c) up to that field: the
/// header, the compile-time constants, and `PERSISTENT_DATA` through `auditCommands`. It checks nothing that
/// libtpms checks: where libtpms would refuse the blob, the reader may stop early and leaves the verdict to
/// libtpms, and where libtpms reads on, the reader reaches the same offset.
enum PermanentStateCheck {
    static let persistentAllMagic: UInt32 = 0xab36_4723
    static let compileConstantsMagic: UInt32 = 0xc9ea_6431
    static let persistentDataMagic: UInt32 = 0x1221_3443
    static let pcrPolicyMagic: UInt32 = 0x176b_e626
    /// The hash algorithms libtpms implements: SHA-1, SHA-256, SHA-384, SHA-512.
    static let hashAlgorithms: Set<UInt16> = [0x0004, 0x000b, 0x000c, 0x000d]

    /// Why libtpms must not load `blob`, or nil.
    static func refusal(_ blob: [UInt8]) -> String? {
        guard let algorithm = self.auditHashAlgorithm(blob) else { return nil }
        guard self.hashAlgorithms.contains(algorithm) else {
            return "the permanent state's command-audit hash algorithm 0x\(String(algorithm, radix: 16)) is not one "
                + "libtpms implements (libtpms would crash at the first audited command)"
        }
        return nil
    }

    /// `PERSISTENT_DATA.auditHashAlg`, or nil where libtpms itself would not get that far.
    static func auditHashAlgorithm(_ blob: [UInt8]) -> UInt16? {
        var r = Reader(blob)
        guard r.header(self.persistentAllMagic) != nil else { return nil }
        // PACompileConstants: a count, then be32 constants, as many as the version has (libtpms only logs a count
        // that differs, and reads on), then a skip block.
        guard let constants = r.header(self.compileConstantsMagic), r.uint32() != nil else { return nil }
        let expected: Int
        switch constants {
        case 1, 2: expected = 88
        case 3: expected = 120
        default: return nil
        }
        guard r.skip(4 * expected) else { return nil }
        if constants >= 2 { guard r.skipBlock(needed: false) else { return nil } }
        // PERSISTENT_DATA up to auditHashAlg.
        guard r.header(self.persistentDataMagic) != nil, r.skip(1 + 3 * 2) else { return nil }
        for _ in 0..<12 { guard r.sized() else { return nil } }  // 3 policies, 3 auths, 3 seeds, 3 proofs
        guard r.skip(8 + 4) else { return nil }
        // pcrPolicies: a block libtpms needs (NUM_POLICY_PCR_GROUP is 1) and parses field by field.
        guard let hasBlock = r.uint8(), r.uint16() != nil, hasBlock != 0 else { return nil }
        guard let policy = r.header(self.pcrPolicyMagic), r.uint16() == 1, r.skip(2), r.sized() else { return nil }
        if policy >= 2 { guard r.skipBlock(needed: false) else { return nil } }
        // pcrAllocated: a count of selections (hash, size, that many bytes).
        guard let selections = r.uint32(), selections <= 16 else { return nil }
        for _ in 0..<selections {
            guard r.skip(2), let size = r.uint8(), r.skip(Int(size)) else { return nil }
        }
        // ppList, four counters, lockOutAuthEnabled, orderlyState, auditCommands, then the algorithm.
        guard r.sized(), r.skip(4 * 4 + 1 + 2), r.sized() else { return nil }
        return r.uint16()
    }

    /// A bounds-checked big-endian reader over the blob.
    struct Reader {
        let bytes: [UInt8]
        var offset = 0

        init(_ bytes: [UInt8]) { self.bytes = bytes }

        mutating func skip(_ count: Int) -> Bool {
            guard count >= 0, count <= self.bytes.count - self.offset else { return false }
            self.offset += count
            return true
        }

        mutating func uint8() -> UInt8? {
            guard self.offset < self.bytes.count else { return nil }
            defer { self.offset += 1 }
            return self.bytes[self.offset]
        }

        mutating func uint16() -> UInt16? {
            guard let high = self.uint8(), let low = self.uint8() else { return nil }
            return UInt16(high) << 8 | UInt16(low)
        }

        mutating func uint32() -> UInt32? {
            guard let high = self.uint16(), let low = self.uint16() else { return nil }
            return UInt32(high) << 16 | UInt32(low)
        }

        /// A 16-bit size and that many bytes (a TPM2B, or one of libtpms' arrays).
        mutating func sized() -> Bool {
            guard let size = self.uint16() else { return false }
            return self.skip(Int(size))
        }

        /// libtpms' `NV_HEADER`: version, magic, and from version 2 a minimum version. Returns the version.
        mutating func header(_ magic: UInt32) -> UInt16? {
            guard let version = self.uint16(), self.uint32() == magic else { return nil }
            if version >= 2 { guard self.uint16() != nil else { return nil } }
            return version
        }

        /// libtpms' `block_skip_read` for a block it does not need: a flag and a size, the block skipped.
        mutating func skipBlock(needed: Bool) -> Bool {
            guard let hasBlock = self.uint8(), let size = self.uint16() else { return false }
            if hasBlock != 0 && !needed { return self.skip(Int(size)) }
            return true
        }
    }
}
