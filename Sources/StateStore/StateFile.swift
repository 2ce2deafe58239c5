import Crypto
import TPMWire

/// The on-disk form of a libtpms blob (`tpm2-00.permall`, ...): swtpm's container, so swtpm reads
/// vtpmd's files and the reverse, plus one vtpmd record swtpm skips:
///
///     tag 0x7E02, value = "VTPI" | be16 format 1 | be64 write generation | SHA-256
///
/// The permanent state of a TPM with an identity also carries, just before it,
///
///     tag 0x7E03, value = the identity record (`IdentityRecord`: vm-id, generation, parent)
///
/// The SHA-256 covers the 10-byte header and every record before it. A file with the record is
/// checked (a flipped bit is refused instead of being handed to libtpms); a file without it was
/// written by swtpm and is accepted as swtpm accepts it.
public enum StateFile {
    static let integrityMagic: [UInt8] = Array("VTPI".utf8)
    static let integrityVersion: UInt16 = 1

    /// What `decode` learnt besides the libtpms bytes.
    public struct Info: Sendable, Hashable {
        /// The write generation from vtpmd's integrity record; nil for a file written by swtpm.
        public var generation: UInt64?
        /// Whether the file was encrypted with the state key.
        public var encrypted: Bool
        /// The identity record (permanent state of a TPM with an identity); nil otherwise.
        public var identity: InstanceIdentity? = nil
    }

    /// Builds the file for `plain` libtpms bytes, encrypted when `key` is given.
    /// - Parameters:
    ///   - plain: The libtpms bytes.
    ///   - key: The state key (`--key`), or nil.
    ///   - generation: The write generation for the integrity record.
    ///   - identity: The identity record to carry (permanent state), or nil.
    public static func encode(
        _ plain: [UInt8],
        key: StateKey?,
        generation: UInt64,
        identity: InstanceIdentity? = nil
    ) throws(StateStoreError) -> [UInt8] {
        var flags = BlobContainer.Flags()
        var records: [BlobContainer.Record]
        if let key {
            flags.insert(.encrypted)
            if key.size == .aes256 { flags.insert(.encrypted256BitKey) }
            records = try key.encryptLayer(
                plain,
                dataTag: BlobContainer.Tag.encryptedData,
                ivTag: BlobContainer.Tag.ivEncryptedData
            )
        } else {
            records = [BlobContainer.Record(tag: BlobContainer.Tag.data, value: plain)]
        }
        if let identity {
            records.append(
                BlobContainer.Record(tag: BlobContainer.Tag.vtpmIdentity, value: IdentityRecord.encode(identity))
            )
        }
        let total =
            BlobContainer.headerSize + records.reduce(0) { $0 + 6 + $1.value.count } + 6 + self.integrityRecordSize
        records.append(
            BlobContainer.Record(
                tag: BlobContainer.Tag.vtpmIntegrity,
                value: self.integrityRecord(
                    header: self.header(flags: flags, total: total),
                    records: records,
                    generation: generation
                )
            )
        )
        return BlobContainer(flags: flags, records: records).encoded
    }

    /// Recovers the libtpms bytes from a file, verifying vtpmd's integrity record when present and
    /// decrypting with `key` when the file is encrypted.
    /// - Parameters:
    ///   - bytes: The stored file.
    ///   - key: The state key (`--key`), or nil.
    ///   - decrypt: false: only check the file and read its records (``Info``); `plain` is then empty.
    public static func decode(
        _ bytes: [UInt8],
        key: StateKey?,
        decrypt: Bool = true
    ) throws(StateStoreError) -> (plain: [UInt8], info: Info) {
        switch BlobContainer.shape(of: bytes) {
        case .headerless:
            // swtpm's first format: raw libtpms bytes, or v1-encrypted when a key is configured.
            if !decrypt { return ([], Info(generation: nil, encrypted: key != nil)) }
            if let key { return (try key.decryptLegacy(bytes), Info(generation: nil, encrypted: true)) }
            guard bytes.first == 0 else {
                throw StateStoreError(.malformed, "neither a state container nor a libtpms blob")
            }
            return (bytes, Info(generation: nil, encrypted: false))
        case .legacyHeader(let flags):
            let body = Array(bytes.dropFirst(BlobContainer.headerSize))
            if !decrypt { return ([], Info(generation: nil, encrypted: flags.contains(.encrypted))) }
            if flags.contains(.encrypted) {
                guard let key else {
                    throw StateStoreError(.keyMissing, "the state is encrypted and no --key was given")
                }
                return (try key.decryptLegacy(body), Info(generation: nil, encrypted: true))
            }
            return (body, Info(generation: nil, encrypted: false))
        case .current:
            break
        }
        let container = try BlobContainer(decoding: bytes)
        var generation: UInt64? = nil
        var records = container.records
        if let index = records.firstIndex(where: { $0.tag == BlobContainer.Tag.vtpmIntegrity }) {
            guard index == records.count - 1 else {
                throw StateStoreError(.malformed, "integrity record is not the last record")
            }
            let stored = records[index].value
            records.removeLast()
            var r = ByteReader(stored)
            do {
                let magic = try r.readBytes(count: 4)
                let version = try r.readUInt16()
                guard magic == self.integrityMagic else { throw StateStoreError(.malformed, "bad integrity magic") }
                guard version == self.integrityVersion else {
                    throw StateStoreError(.unsupportedVersion, "integrity record version \(version) is unknown")
                }
                generation = try r.readUInt64()
            } catch let error as StateStoreError {
                throw error
            } catch {
                throw StateStoreError(.malformed, "integrity record: \(error)")
            }
            let expected = self.integrityRecord(
                header: Array(bytes.prefix(BlobContainer.headerSize)),
                records: records,
                generation: generation ?? 0
            )
            guard expected == stored else {
                throw StateStoreError(.integrity, "SHA-256 mismatch: the file was modified or corrupted")
            }
        }
        var identity: InstanceIdentity? = nil
        if let index = records.firstIndex(where: { $0.tag == BlobContainer.Tag.vtpmIdentity }) {
            // Only inside a checked file, and only once.
            guard generation != nil, index == records.count - 1 else {
                throw StateStoreError(.malformed, "identity record outside its place before the integrity record")
            }
            identity = try IdentityRecord.decode(records[index].value)
            records.removeLast()
        }
        // Only swtpm's tags may remain: anything else (a damaged tag among them) is refused rather than
        // skipped, so a flipped bit in vtpmd's own record cannot make the file look like swtpm's.
        if let unknown = records.first(where: { !(1...7).contains($0.tag) }) {
            throw StateStoreError(.malformed, "unknown record tag 0x\(String(unknown.tag, radix: 16))")
        }
        if !decrypt {
            return (
                [], Info(generation: generation, encrypted: container.flags.contains(.encrypted), identity: identity)
            )
        }
        if container.flags.contains(.encrypted) {
            guard let key else {
                throw StateStoreError(.keyMissing, "the state is encrypted and no --key was given")
            }
            guard (key.size == .aes256) == container.flags.contains(.encrypted256BitKey) else {
                throw StateStoreError(.keyMismatch, "the state was encrypted with a key of another size")
            }
            let plain = try key.decryptLayer(
                records,
                dataTag: BlobContainer.Tag.encryptedData,
                ivTag: BlobContainer.Tag.ivEncryptedData
            )
            return (plain, Info(generation: generation, encrypted: true, identity: identity))
        }
        guard let plain = records.first(where: { $0.tag == BlobContainer.Tag.data })?.value else {
            throw StateStoreError(.malformed, "no data record")
        }
        return (plain, Info(generation: generation, encrypted: false, identity: identity))
    }

    static let integrityRecordSize = 4 + 2 + 8 + 32

    /// The 10-byte header as `BlobContainer.encoded` writes it.
    static func header(flags: BlobContainer.Flags, total: Int) -> [UInt8] {
        var w = ByteWriter(capacity: 10)
        w.write(BlobContainer.version)
        w.write(UInt8(1))
        w.write(UInt16(BlobContainer.headerSize))
        w.write(flags.rawValue)
        w.write(UInt32(total))
        return w.bytes
    }

    /// The record's value: magic, version, generation, SHA-256 over the whole header, every record
    /// before it and the generation.
    static func integrityRecord(header: [UInt8], records: [BlobContainer.Record], generation: UInt64) -> [UInt8] {
        var hasher = SHA256()
        hasher.update(data: header)
        hasher.update(data: BlobContainer.encodeRecords(records))
        var w = ByteWriter(capacity: 46)
        w.write(bytes: self.integrityMagic)
        w.write(self.integrityVersion)
        w.write(generation)
        // The generation is covered too: it is part of what the digest vouches for.
        var g = ByteWriter(capacity: 8)
        g.write(generation)
        hasher.update(data: g.bytes)
        w.write(bytes: Array(hasher.finalize()))
        return w.bytes
    }
}
