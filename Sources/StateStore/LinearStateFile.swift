import TPMWire

/// swtpm's single-file ("linear") state store, used by `--tpmstate backend-uri=file://PATH`.
///
/// All blobs of one TPM live in one file. The file starts with a fixed 192-byte header, all
/// integers little-endian:
///
/// | offset | size | field                                                                |
/// |-------:|-----:|----------------------------------------------------------------------|
/// |      0 |    8 | magic `0x737774706d6c696e` ("swtpmlin"; on disk `6e 69 6c 6d 70 74 77 73`) |
/// |      8 |    1 | version, 1                                                           |
/// |      9 |    1 | padding, 0 (swtpm neither sets nor checks it)                        |
/// |     10 |    2 | header size, 192                                                     |
/// |     12 |  180 | 15 slots of 12 bytes: offset, data length, section length (u32 each) |
///
/// Slot 0 holds `permall`, slot 1 `volatilestate`, slot 2 `savestate`; slots 3–14 are reserved
/// and always zero. A slot with offset 0 is unused (its lengths are zero too). A used slot's
/// section starts at `offset` (at or after the header) and spans `section length` bytes, of
/// which the first `data length` are the blob; the rest is slack so the blob can grow in place.
/// swtpm sizes a new section as the next power of two of the blob length and appends it at the
/// end of the last section; the file ends where the last section ends.
///
/// The blobs are swtpm's per-blob containers (the bytes a `tpm2-00.<name>` file holds in the
/// directory backend); this type does not look inside them.
///
/// swtpm treats a file without the magic (in particular a new, empty one) as unformatted and
/// writes a fresh header over it. This decoder only does that for input that holds no data at
/// all (zero length or all zero bytes, see ``isUnformatted(_:)``); anything else without the
/// magic is rejected so a damaged file is never silently discarded.
public struct LinearStateFile: Hashable, Sendable {
    /// The magic number, read as a little-endian u64.
    public static let magic: UInt64 = 0x7377_7470_6d6c_696e
    /// The format version swtpm 0.7.1 (and later, so far) writes and this build reads.
    public static let version: UInt8 = 1
    /// Number of slots in the header.
    public static let slotCount = 15
    /// Size of one slot: offset, data length, section length.
    public static let slotSize = 12
    /// Size of the header swtpm writes: 8 + 1 + 1 + 2 + 15 × 12.
    public static let headerSize = 12 + slotCount * slotSize
    /// The blob names in slot order; only these can be stored.
    public static let blobNames = ["permall", "volatilestate", "savestate"]

    /// The blobs by name (`permall`, `volatilestate`, `savestate`); an absent key is an unused slot.
    public var blobs: [String: [UInt8]]

    /// A store without blobs: what swtpm has right after formatting a new file.
    public init() {
        self.blobs = [:]
    }

    /// A store holding `blobs`; the names are checked when encoding.
    public init(blobs: [String: [UInt8]]) {
        self.blobs = blobs
    }

    /// True when no blob is stored (a new or freshly formatted file, or one whose blobs were
    /// all deleted).
    public var isEmpty: Bool { self.blobs.isEmpty }

    /// True for file contents swtpm would format from scratch without losing anything: zero
    /// length (a file swtpm or vtpmd just created) or only zero bytes (swtpm extends a short
    /// file with zeros before it writes the header, so a crash in between leaves zeros).
    public static func isUnformatted(_ bytes: [UInt8]) -> Bool {
        bytes.allSatisfy { $0 == 0 }
    }

    /// The slot index for a blob name, or nil for names swtpm does not store.
    public static func slot(for name: String) -> Int? {
        self.blobNames.firstIndex(of: name)
    }

    /// Decodes a whole linear file.
    ///
    /// Unformatted input (see ``isUnformatted(_:)``) decodes as an empty store. Otherwise the
    /// magic, version, header size and every slot are checked: each used section must start at
    /// or after the header, end within the file, hold its data length, and not overlap another
    /// section; reserved slots must be zero.
    ///
    /// - Throws: `StateStoreError` `.malformed` for anything that does not follow the format,
    ///   `.unsupportedVersion` for a version newer than 1 (swtpm refuses those too).
    public init(decoding bytes: [UInt8]) throws(StateStoreError) {
        if Self.isUnformatted(bytes) {
            self.blobs = [:]
            return
        }
        guard bytes.count >= Self.headerSize else {
            throw StateStoreError(
                .malformed,
                "linear state file of \(bytes.count) bytes is shorter than the \(Self.headerSize)-byte header"
            )
        }
        // swtpm keeps the file length in a u32.
        guard UInt64(bytes.count) <= UInt64(UInt32.max) else {
            throw StateStoreError(.malformed, "linear state file of \(bytes.count) bytes exceeds 4 GiB")
        }
        let header: Header
        do {
            header = try Header(reading: bytes)
        } catch {
            throw StateStoreError(.malformed, "linear state file header: \(error.message)")
        }
        guard header.magic == Self.magic else {
            throw StateStoreError(
                .malformed,
                "linear state file has bad magic \(Self.hex(header.magic)) (expected \"swtpmlin\")"
            )
        }
        guard header.version != 0 else {
            throw StateStoreError(.malformed, "linear state file has version 0")
        }
        guard header.version <= Self.version else {
            throw StateStoreError(
                .unsupportedVersion,
                "linear state file has format version \(header.version); this build reads \(Self.version)"
            )
        }
        let headerSize = Int(header.headerSize)
        guard headerSize >= Self.headerSize, headerSize <= bytes.count else {
            throw StateStoreError(
                .malformed,
                "linear state file header size \(headerSize) is outside \(Self.headerSize)...\(bytes.count)"
            )
        }

        // Check every slot, including the reserved ones, before taking any data.
        var used: [(slot: Int, start: Int, end: Int)] = []
        for (index, slot) in header.slots.enumerated() {
            if slot.offset == 0 {
                guard slot.dataLength == 0, slot.sectionLength == 0 else {
                    throw StateStoreError(
                        .malformed,
                        "linear state file slot \(index) is unused but has data length \(slot.dataLength), "
                            + "section length \(slot.sectionLength)"
                    )
                }
                continue
            }
            guard index < Self.blobNames.count else {
                throw StateStoreError(.malformed, "linear state file uses reserved slot \(index)")
            }
            // Int is 64-bit on every supported platform, so none of these sums overflow.
            let start = Int(slot.offset)
            let end = start + Int(slot.sectionLength)
            guard start >= headerSize else {
                throw StateStoreError(
                    .malformed,
                    "linear state file slot \(index) starts at \(start), inside the \(headerSize)-byte header"
                )
            }
            guard end <= bytes.count else {
                throw StateStoreError(
                    .malformed,
                    "linear state file slot \(index) section \(start)..<\(end) extends beyond the file "
                        + "(\(bytes.count) bytes)"
                )
            }
            guard slot.dataLength <= slot.sectionLength else {
                throw StateStoreError(
                    .malformed,
                    "linear state file slot \(index) holds \(slot.dataLength) bytes in a "
                        + "\(slot.sectionLength)-byte section"
                )
            }
            used.append((index, start, end))
        }
        // Empty sections occupy nothing, so only non-empty ones can overlap.
        let occupied = used.filter { $0.start < $0.end }.sorted { $0.start < $1.start }
        for (previous, next) in zip(occupied, occupied.dropFirst()) where next.start < previous.end {
            throw StateStoreError(
                .malformed,
                "linear state file slots \(previous.slot) (\(previous.start)..<\(previous.end)) and "
                    + "\(next.slot) (\(next.start)..<\(next.end)) overlap"
            )
        }

        var blobs: [String: [UInt8]] = [:]
        for entry in used {
            let length = Int(header.slots[entry.slot].dataLength)
            blobs[Self.blobNames[entry.slot]] = Array(bytes[entry.start..<entry.start + length])
        }
        self.blobs = blobs
    }

    /// The file bytes, laid out as swtpm 0.7.1 lays out a file it wrote from scratch: the header,
    /// then `permall`, `volatilestate` and `savestate` (those present) back to back, each in a
    /// section of the next power of two of its length (0 for an empty blob), zero-filled; the
    /// file ends with the last section. An empty store encodes as the bare 192-byte header, which
    /// is what swtpm writes when it formats a new file.
    ///
    /// - Throws: `StateStoreError` `.malformed` for a blob name other than ``blobNames``, or if
    ///   a section or the file would not fit swtpm's u32 fields.
    public var encoded: [UInt8] {
        get throws(StateStoreError) {
            for name in self.blobs.keys where Self.slot(for: name) == nil {
                throw StateStoreError(
                    .malformed,
                    "linear state file cannot hold a blob named \"\(name)\" "
                        + "(only \(Self.blobNames.joined(separator: ", ")))"
                )
            }
            let unused = Slot(offset: 0, dataLength: 0, sectionLength: 0)
            var slots = [Slot](repeating: unused, count: Self.slotCount)
            var end = UInt64(Self.headerSize)
            for (index, name) in Self.blobNames.enumerated() {
                guard let blob = self.blobs[name] else { continue }
                guard let section = Self.sectionLength(forDataLength: blob.count) else {
                    throw StateStoreError(
                        .malformed,
                        "blob \"\(name)\" of \(blob.count) bytes is too large for a linear state file"
                    )
                }
                guard end + UInt64(section) <= UInt64(UInt32.max) else {
                    throw StateStoreError(.malformed, "linear state file would exceed 4 GiB")
                }
                slots[index] = Slot(offset: UInt32(end), dataLength: UInt32(blob.count), sectionLength: section)
                end += UInt64(section)
            }

            var w = ByteWriter(capacity: Int(end))
            // ByteWriter writes big-endian; byte-swapping first yields little-endian.
            w.write(Self.magic.byteSwapped)
            w.write(Self.version)
            w.write(UInt8(0))
            w.write(UInt16(Self.headerSize).byteSwapped)
            for slot in slots {
                w.write(slot.offset.byteSwapped)
                w.write(slot.dataLength.byteSwapped)
                w.write(slot.sectionLength.byteSwapped)
            }
            for (index, name) in Self.blobNames.enumerated() {
                guard let blob = self.blobs[name] else { continue }
                w.write(bytes: blob)
                w.write(bytes: repeatElement(UInt8(0), count: Int(slots[index].sectionLength) - blob.count))
            }
            return w.bytes
        }
    }

    /// The section swtpm allocates for `count` bytes: the next power of two (`count` itself if it
    /// is one, 0 for 0), or nil if that does not fit a u32.
    public static func sectionLength(forDataLength count: Int) -> UInt32? {
        guard count >= 0, count <= 1 << 31 else { return nil }
        guard count > 1 else { return UInt32(count) }
        let shift = UInt32.bitWidth - UInt32(count - 1).leadingZeroBitCount
        return UInt32(1) << UInt32(shift)
    }

    // MARK: - Header

    struct Slot: Hashable, Sendable {
        var offset: UInt32
        var dataLength: UInt32
        var sectionLength: UInt32
    }

    struct Header: Sendable {
        var magic: UInt64
        var version: UInt8
        var headerSize: UInt16
        var slots: [Slot]

        /// Reads the fixed header fields; the caller has checked that the header is present.
        init(reading bytes: [UInt8]) throws(WireError) {
            var r = ByteReader(bytes)
            // ByteReader reads big-endian; byte-swapping yields the little-endian value.
            self.magic = try r.readUInt64().byteSwapped
            self.version = try r.readUInt8()
            _ = try r.readUInt8()  // padding
            self.headerSize = try r.readUInt16().byteSwapped
            var slots: [Slot] = []
            slots.reserveCapacity(LinearStateFile.slotCount)
            for _ in 0..<LinearStateFile.slotCount {
                let offset = try r.readUInt32().byteSwapped
                let dataLength = try r.readUInt32().byteSwapped
                let sectionLength = try r.readUInt32().byteSwapped
                slots.append(Slot(offset: offset, dataLength: dataLength, sectionLength: sectionLength))
            }
            self.slots = slots
        }
    }

    private static func hex(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return "0x" + String(repeating: "0", count: max(0, 16 - digits.count)) + digits
    }
}
