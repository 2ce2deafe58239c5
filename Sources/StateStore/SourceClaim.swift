import Crypto
import TPMWire
public import VMIdentity
import _VTPMPosix

/// Where a state blob came from, as vtpmd states it in every GET_STATEBLOB blob: one more TLV
/// record (tag 0x7E01, which swtpm skips) beside MIGRATION_DATA in swtpm's container:
///
///     "VTPB" | be16 version 1 | vmID (16) | be64 generation | be64 checkpoint | HMAC-SHA256 (32)
///
/// for a UUID vm-id, and for a named one (Proxmox numbers its VMs)
///
///     "VTPB" | be16 version 2 | u8 n | vm-id name (n) | be64 generation | be64 checkpoint | HMAC-SHA256 (32)
///
/// The HMAC, keyed with the host key, covers a domain label, the blob type, the container's
/// header flags, every other record of the blob and the claim fields, so the claim can neither be
/// edited nor moved to another blob. A blob without the record is foreign (swtpm's).
public struct SourceClaim: Hashable, Sendable, CustomStringConvertible {
    public var vmID: VMID
    public var generation: UInt64
    public var checkpoint: UInt64

    public init(vmID: VMID, generation: UInt64, checkpoint: UInt64) {
        self.vmID = vmID
        self.generation = generation
        self.checkpoint = checkpoint
    }

    public var description: String { "\(self.vmID) generation \(self.generation) checkpoint \(self.checkpoint)" }

    public static let tag: UInt16 = 0x7E01
    static let magic: [UInt8] = Array("VTPB".utf8)
    /// The fixed part of a record besides the vm-id: magic, version, generation, checkpoint, MAC.
    static let fixedSize = 4 + 2 + 8 + 8 + 32
    /// The largest record (version 2 with the longest name).
    static let maximumValueSize = fixedSize + 1 + VMID.maximumNameLength
    static let domain: [UInt8] = Array("swift-vtpm source claim v1".utf8)

    /// Adds the claim to a GET_STATEBLOB blob of `blobType`.
    public static func attach(
        _ claim: SourceClaim,
        to blob: [UInt8],
        blobType: UInt32,
        hostKey: HostKey
    ) throws(StateStoreError) -> [UInt8] {
        var container = try BlobContainer(decoding: blob)
        guard container.value(for: Self.tag) == nil else {
            throw StateStoreError(.malformed, "blob already carries a source claim")
        }
        var w = ByteWriter(capacity: Self.maximumValueSize)
        w.write(bytes: Self.magic)
        if let uuid = claim.vmID.uuidBytes {
            w.write(UInt16(1))
            w.write(bytes: uuid)
        } else {
            let name = Array(claim.vmID.description.utf8)
            w.write(UInt16(2))
            w.write(UInt8(name.count))
            w.write(bytes: name)
        }
        w.write(claim.generation)
        w.write(claim.checkpoint)
        let mac = Self.mac(fields: w.bytes, container: container, blobType: blobType, hostKey: hostKey)
        w.write(bytes: mac)
        container.records.append(BlobContainer.Record(tag: Self.tag, value: w.bytes))
        return container.encoded
    }

    /// Removes and verifies the claim of a SET_STATEBLOB blob.
    /// - Returns: the blob as swtpm would have produced it, and the claim (nil for a foreign blob).
    /// - Throws: `.integrity` for a claim whose MAC does not verify (edited, truncated, or made
    ///   with another host key), `.malformed` / `.unsupportedVersion` for a damaged record.
    public static func detach(
        from blob: [UInt8],
        blobType: UInt32,
        hostKey: HostKey
    ) throws(StateStoreError) -> (blob: [UInt8], claim: SourceClaim?) {
        guard BlobContainer.shape(of: blob) == .current else { return (blob, nil) }
        var container = try BlobContainer(decoding: blob)
        // swtpm writes tags 1...7 only: any other tag is a damaged record (a flipped bit in the
        // claim's own tag must not turn a claimed blob into a "foreign" one).
        if let unknown = container.records.first(where: { !(1...7).contains($0.tag) && $0.tag != Self.tag }) {
            throw StateStoreError(.malformed, "blob has an unknown record tag 0x\(String(unknown.tag, radix: 16))")
        }
        let claims = container.records.filter { $0.tag == Self.tag }
        guard let record = claims.first else { return (blob, nil) }
        guard claims.count == 1 else { throw StateStoreError(.malformed, "blob carries \(claims.count) source claims") }
        container.records.removeAll { $0.tag == Self.tag }
        let value = record.value
        guard value.count >= Self.fixedSize + 1, value.count <= Self.maximumValueSize else {
            throw StateStoreError(.malformed, "source claim of \(value.count) bytes")
        }
        var r = ByteReader(value)
        let claim: SourceClaim
        do {
            guard try r.readBytes(count: 4) == Self.magic else {
                throw StateStoreError(.malformed, "source claim has a bad magic")
            }
            let version = try r.readUInt16()
            let vmID: VMID?
            switch version {
            case 1:
                vmID = VMID(uuidBytes: try r.readBytes(count: 16))
            case 2:
                vmID = VMID(nameBytes: try r.readBytes(count: Int(try r.readUInt8())))
            default:
                throw StateStoreError(.unsupportedVersion, "source claim version \(version) is unknown")
            }
            guard let vmID else { throw StateStoreError(.malformed, "source claim has a bad vmID") }
            claim = SourceClaim(vmID: vmID, generation: try r.readUInt64(), checkpoint: try r.readUInt64())
            guard r.remaining == 32 else {
                throw StateStoreError(.malformed, "source claim of \(value.count) bytes has a bad length")
            }
        } catch let error as StateStoreError {
            throw error
        } catch {
            throw StateStoreError(.malformed, "source claim: \(error)")
        }
        let fields = Array(value.prefix(value.count - 32))
        let given = Array(value.suffix(32))
        let input = Self.macInput(fields, container, blobType)
        guard HMAC<SHA256>.isValidAuthenticationCode(given, authenticating: input, using: hostKey.symmetricKey) else {
            throw StateStoreError(
                .integrity,
                "the blob's source claim does not verify: it was modified, or made with another host key"
            )
        }
        return (container.encoded, claim)
    }

    static func macInput(_ fields: [UInt8], _ container: BlobContainer, _ blobType: UInt32) -> [UInt8] {
        var w = ByteWriter(capacity: 64 + fields.count)
        w.write(bytes: Self.domain)
        w.write(blobType)
        w.write(container.flags.rawValue)
        w.write(bytes: BlobContainer.encodeRecords(container.records))
        w.write(bytes: fields)
        return w.bytes
    }

    static func mac(fields: [UInt8], container: BlobContainer, blobType: UInt32, hostKey: HostKey) -> [UInt8] {
        Array(
            HMAC<SHA256>.authenticationCode(
                for: Self.macInput(fields, container, blobType),
                using: hostKey.symmetricKey
            )
        )
    }
}

/// The host's secret for source claims: 32 random bytes in a 0600 file, created on first use.
/// Hosts that migrate VMs between each other share it. Never printed.
public struct HostKey: Sendable, CustomStringConvertible {
    let bytes: [UInt8]
    var symmetricKey: SymmetricKey { SymmetricKey(data: self.bytes) }

    public init(bytes: [UInt8]) throws(StateStoreError) {
        guard bytes.count == 32 else {
            throw StateStoreError(.invalidKey, "a host key is 32 bytes, got \(bytes.count)")
        }
        self.bytes = bytes
    }

    public var description: String { "host key" }

    /// Loads `path`, or creates it (0600, atomically) when it does not exist. The file must be a
    /// regular file of ours that nobody else can read or write.
    public static func loadOrCreate(path: String) throws(StateStoreError) -> HostKey {
        let (dirPath, name) = splitPath(path)
        let dir: DirectoryHandle
        do { dir = try DirectoryHandle.open(dirPath) } catch {
            throw StateStoreError(.io, "host key directory: \(error)")
        }
        defer { dir.close() }
        do {
            if let bytes = try dir.readFile(name, maxSize: 4096) {
                guard let status = try dir.status(name), status.mode & 0o077 == 0 else {
                    throw StateStoreError(.hostileFile, "\(path) must not be accessible to group or others")
                }
                return try HostKey(bytes: bytes)
            }
            var generator = SystemRandomNumberGenerator()
            let bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if try dir.createFileExclusively(name, contents: bytes, mode: 0o600) {
                return try HostKey(bytes: bytes)
            }
            // Another process created it first: use that one.
            guard let existing = try dir.readFile(name, maxSize: 4096) else {
                throw StateStoreError(.io, "host key \(path) vanished while it was being created")
            }
            return try HostKey(bytes: existing)
        } catch let error as StateStoreError {
            throw error
        } catch let error as HostileFileError {
            throw StateStoreError(.hostileFile, error.description)
        } catch {
            throw StateStoreError(.io, "host key \(path): \(error)")
        }
    }
}
