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
/// Those two, MAC'd with the host key, are what earlier builds wrote; they are still read. This build signs:
///
///     "VTPB" | be16 version 3 | host id (16) | vmID (16) | be64 generation | be64 checkpoint | Ed25519 (64)
///     "VTPB" | be16 version 4 | host id (16) | u8 n | vm-id name (n) | be64 generation | be64 checkpoint | Ed25519 (64)
///
/// with the host's signing key (``HostKey/signingKey``), so another host verifies the claim with the public key
/// the signer registered in the cluster's registry, and no host holds another's secret. The MAC or signature
/// covers a domain label, the blob type, the container's header flags, every other record of the blob and the
/// claim fields, so the claim can neither be edited nor moved to another blob. A blob without the record is
/// foreign (swtpm's).
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
    static let signedDomain: [UInt8] = Array("swift-vtpm signed source claim v1".utf8)
    /// The largest signed record (version 4 with the longest name).
    static let maximumSignedValueSize = maximumValueSize + HostID.byteCount + 32

    /// Adds the claim, signed with the host's key, to a GET_STATEBLOB blob of `blobType`.
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
            w.write(UInt16(3))
            w.write(bytes: hostKey.idBytes)
            w.write(bytes: uuid)
        } else {
            let name = Array(claim.vmID.description.utf8)
            w.write(UInt16(4))
            w.write(bytes: hostKey.idBytes)
            w.write(UInt8(name.count))
            w.write(bytes: name)
        }
        w.write(claim.generation)
        w.write(claim.checkpoint)
        let input = Self.macInput(w.bytes, container, blobType, domain: Self.signedDomain)
        let signature: [UInt8]
        do { signature = Array(try hostKey.signingKey.signature(for: input)) } catch {
            throw StateStoreError(.integrity, "cannot sign the source claim: \(error)")
        }
        w.write(bytes: signature)
        container.records.append(BlobContainer.Record(tag: Self.tag, value: w.bytes))
        return container.encoded
    }

    /// Removes and verifies the claim of a SET_STATEBLOB blob, trusting this host's key only.
    /// - Returns: the blob as swtpm would have produced it, and the claim (nil for a foreign blob).
    /// - Throws: See ``detach(from:blobType:hostKey:trustedHost:)``.
    public static func detach(
        from blob: [UInt8],
        blobType: UInt32,
        hostKey: HostKey
    ) throws(StateStoreError) -> (blob: [UInt8], claim: SourceClaim?) {
        try self.detach(from: blob, blobType: blobType, hostKey: hostKey) { id throws(StateStoreError) in
            throw StateStoreError(.integrity, "the blob's source claim was signed by host \(id), not this host")
        }
    }

    /// Removes and verifies the claim of a SET_STATEBLOB blob.
    /// - Parameters:
    ///   - hostKey: This host's key: verifies the MAC of an earlier build's claim, and a claim this host signed.
    ///   - trustedHost: The public key of another host, by host id; throws (`.integrity`, naming why) for a host
    ///     that is not trusted (unknown to the registry, revoked, or the registry cannot be asked).
    /// - Returns: the blob as swtpm would have produced it, and the claim (nil for a foreign blob).
    /// - Throws: `.integrity` for a claim whose MAC or signature does not verify (edited, truncated, or made
    ///   with another host key) or whose signer is not trusted, `.malformed` / `.unsupportedVersion` for a
    ///   damaged record.
    public static func detach(
        from blob: [UInt8],
        blobType: UInt32,
        hostKey: HostKey,
        trustedHost: (String) throws(StateStoreError) -> [UInt8]
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
        guard value.count >= Self.fixedSize + 1, value.count <= Self.maximumSignedValueSize else {
            throw StateStoreError(.malformed, "source claim of \(value.count) bytes")
        }
        var r = ByteReader(value)
        let claim: SourceClaim
        var signer: [UInt8]? = nil
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
            case 3:
                signer = try r.readBytes(count: HostID.byteCount)
                vmID = VMID(uuidBytes: try r.readBytes(count: 16))
            case 4:
                signer = try r.readBytes(count: HostID.byteCount)
                vmID = VMID(nameBytes: try r.readBytes(count: Int(try r.readUInt8())))
            default:
                throw StateStoreError(.unsupportedVersion, "source claim version \(version) is unknown")
            }
            guard let vmID else { throw StateStoreError(.malformed, "source claim has a bad vmID") }
            claim = SourceClaim(vmID: vmID, generation: try r.readUInt64(), checkpoint: try r.readUInt64())
            guard r.remaining == (signer == nil ? 32 : 64) else {
                throw StateStoreError(.malformed, "source claim of \(value.count) bytes has a bad length")
            }
        } catch let error as StateStoreError {
            throw error
        } catch {
            throw StateStoreError(.malformed, "source claim: \(error)")
        }
        let fields = Array(value.prefix(value.count - r.remaining))
        let given = Array(value.suffix(r.remaining))
        guard let signer else {
            let input = Self.macInput(fields, container, blobType, domain: Self.domain)
            guard HMAC<SHA256>.isValidAuthenticationCode(given, authenticating: input, using: hostKey.symmetricKey)
            else {
                throw StateStoreError(
                    .integrity,
                    "the blob's source claim does not verify: it was modified, or made with another host key"
                )
            }
            return (container.encoded, claim)
        }
        let signerID = signer.hexString
        let publicKey = signer == hostKey.idBytes ? hostKey.publicKey : try trustedHost(signerID)
        guard HostID.of(publicKey: publicKey) == signer else {
            throw StateStoreError(.integrity, "the key given for host \(signerID) is not that host's key")
        }
        let input = Self.macInput(fields, container, blobType, domain: Self.signedDomain)
        guard let key = try? Curve25519.Signing.PublicKey(rawRepresentation: publicKey),
            key.isValidSignature(given, for: input)
        else {
            throw StateStoreError(
                .integrity,
                "the blob's source claim does not verify with the key of host \(signerID): it was modified"
            )
        }
        return (container.encoded, claim)
    }

    static func macInput(
        _ fields: [UInt8],
        _ container: BlobContainer,
        _ blobType: UInt32,
        domain: [UInt8]
    ) -> [UInt8] {
        var w = ByteWriter(capacity: 64 + fields.count)
        w.write(bytes: domain)
        w.write(blobType)
        w.write(container.flags.rawValue)
        w.write(bytes: BlobContainer.encodeRecords(container.records))
        w.write(bytes: fields)
        return w.bytes
    }

}

/// The host's secret for source claims: 32 random bytes in a 0600 file, created on first use. Claims are
/// signed with a key derived from it (``signingKey``); hosts that share a registry register the public half
/// and verify each other's claims with it, so the file never leaves its host. (Hosts with separate
/// registries can still share the file itself, as before: the same file is the same host id.) Never printed.
public struct HostKey: Sendable, CustomStringConvertible {
    let bytes: [UInt8]
    var symmetricKey: SymmetricKey { SymmetricKey(data: self.bytes) }

    public init(bytes: [UInt8]) throws(StateStoreError) {
        guard bytes.count == 32 else {
            throw StateStoreError(.invalidKey, "a host key is 32 bytes, got \(bytes.count)")
        }
        self.bytes = bytes
        self.signingKey = try Self.deriveSigningKey(bytes)
        self.publicKey = Array(self.signingKey.publicKey.rawRepresentation)
        self.idBytes = HostID.of(publicKey: self.publicKey)
    }

    public var description: String { "host key \(self.id)" }

    /// The key this host signs claims with: Ed25519, its seed derived from the host key file's secret with
    /// HKDF-SHA256 (RFC 5869, a zero salt, its own label), so the file stays 32 random bytes and earlier
    /// builds' MAC claims still verify.
    let signingKey: Curve25519.Signing.PrivateKey

    static func deriveSigningKey(_ secret: [UInt8]) throws(StateStoreError) -> Curve25519.Signing.PrivateKey {
        // HKDF with one block of output: PRK = HMAC(salt, IKM), OKM = HMAC(PRK, info || 0x01).
        let prk = HMAC<SHA256>.authenticationCode(
            for: secret,
            using: SymmetricKey(data: [UInt8](repeating: 0, count: 32))
        )
        let seed = HMAC<SHA256>.authenticationCode(
            for: Array("swift-vtpm host signing key v1".utf8) + [1],
            using: SymmetricKey(data: Array(prk))
        )
        do { return try Curve25519.Signing.PrivateKey(rawRepresentation: Array(seed)) } catch {
            throw StateStoreError(.invalidKey, "cannot derive the host signing key: \(error)")
        }
    }

    /// The public half of ``signingKey`` (32 bytes), which the host registers.
    public let publicKey: [UInt8]

    /// The host id: ``HostID`` of ``publicKey``.
    let idBytes: [UInt8]

    /// The host id in lower-case hexadecimal, as the registry records it.
    public var id: String { self.idBytes.hexString }

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
