import TPMWire
public import VMIdentity
import _VTPMPosix

/// The identity of a TPM state: recorded inside the permanent state file (``IdentityRecord``, so it
/// travels with a copied directory, a copied file volume and a permall copied alone) and, in a state
/// directory, in the `vtpm-instance.permall` marker too.
public struct InstanceIdentity: Sendable, Hashable, CustomStringConvertible {
    /// The VM the endorsement hierarchy belongs to; nil in markers of version 1 (before identities)
    /// and for state adopted without one.
    public var vmID: VMID?
    /// 0 at manufacture, +1 at every rekey.
    public var generation: UInt64
    /// For a clone: the VM it was cloned from.
    public var parent: VMID?
    /// Unix seconds when the marker was first written.
    public var createdAt: UInt64
    public var creator: String

    public init(
        vmID: VMID?,
        generation: UInt64,
        parent: VMID? = nil,
        createdAt: UInt64? = nil,
        creator: String = "vtpmd"
    ) {
        self.vmID = vmID
        self.generation = generation
        self.parent = parent
        self.createdAt = createdAt ?? UInt64(ProcessControl.wallClock().seconds)
        self.creator = creator
    }

    public var description: String {
        "vm \(self.vmID.map { "\($0)" } ?? "unknown") generation \(self.generation)"
            + (self.parent.map { " (clone of \($0))" } ?? "")
    }
}

/// `vtpm-instance.permall`: written with the first permanent state and at every rekey. Its
/// presence means "this directory held a TPM", so a missing `permall` is an error rather than a
/// reason to manufacture, and it records the directory's identity.
/// Format: a state-file container (see `StateFile`: integrity-checked) whose data is
/// `"VTPMINST" | be16 version | be64 creation time (Unix seconds) | TPM2B creator`, and from
/// version 2 on `| vmID? | be64 generation | parent?`, where an optional vm-id is `u8 0` (none) or
/// the vm-id's binary form (``VMID/encoded``: `u8 1` + 16 UUID bytes, or `u8 2` + `u8 n` + name).
package enum InstanceMarker {
    static let magic: [UInt8] = Array("VTPMINST".utf8)
    static let version: UInt16 = 2

    static func encode(_ identity: InstanceIdentity) throws(StateStoreError) -> [UInt8] {
        var w = ByteWriter(capacity: 96)
        w.write(bytes: self.magic)
        w.write(self.version)
        w.write(identity.createdAt)
        w.writeSized16(Array(identity.creator.utf8.prefix(255)))
        IdentityRecord.writeOptional(identity.vmID, into: &w)
        w.write(identity.generation)
        IdentityRecord.writeOptional(identity.parent, into: &w)
        return try StateFile.encode(w.bytes, key: nil, generation: identity.generation &+ 1)
    }

    package static func decode(_ stored: [UInt8]) throws(StateStoreError) -> InstanceIdentity {
        let (data, _) = try StateFile.decode(stored, key: nil)
        var r = ByteReader(data)
        do {
            guard try r.readBytes(count: 8) == self.magic else {
                throw StateStoreError(.malformed, "instance marker has a bad magic")
            }
            let version = try r.readUInt16()
            guard version == 1 || version == 2 else {
                throw StateStoreError(.unsupportedVersion, "instance marker version \(version) is unknown")
            }
            let created = try r.readUInt64()
            let creator = String(decoding: try r.readSized16(max: 255), as: UTF8.self)
            var identity = InstanceIdentity(vmID: nil, generation: 0, createdAt: created, creator: creator)
            if version >= 2 {
                identity.vmID = try IdentityRecord.readOptional(&r, what: "instance marker")
                identity.generation = try IdentityRecord.checkedGeneration(try r.readUInt64(), what: "instance marker")
                identity.parent = try IdentityRecord.readOptional(&r, what: "instance marker")
            }
            try r.finish()
            return identity
        } catch let error as StateStoreError {
            throw error
        } catch {
            throw StateStoreError(.malformed, "instance marker: \(error)")
        }
    }
}

/// The identity record inside the permanent state file: one more TLV (tag 0x7E03, which swtpm skips),
/// placed before the integrity record, so its SHA-256 covers it:
///
///     "VTPD" | be16 version 1 | vmID? | be64 generation | parent? | be64 creation time | TPM2B creator
///
/// (optional vm-ids as in the marker). It makes the identity travel with the state itself.
package enum IdentityRecord {
    static let magic: [UInt8] = Array("VTPD".utf8)
    static let version: UInt16 = 1

    static func encode(_ identity: InstanceIdentity) -> [UInt8] {
        var w = ByteWriter(capacity: 128)
        w.write(bytes: self.magic)
        w.write(self.version)
        self.writeOptional(identity.vmID, into: &w)
        w.write(identity.generation)
        self.writeOptional(identity.parent, into: &w)
        w.write(identity.createdAt)
        w.writeSized16(Array(identity.creator.utf8.prefix(255)))
        return w.bytes
    }

    package static func decode(_ value: [UInt8]) throws(StateStoreError) -> InstanceIdentity {
        var r = ByteReader(value)
        do {
            guard try r.readBytes(count: 4) == self.magic else {
                throw StateStoreError(.malformed, "identity record has a bad magic")
            }
            let version = try r.readUInt16()
            guard version == self.version else {
                throw StateStoreError(.unsupportedVersion, "identity record version \(version) is unknown")
            }
            let vmID = try self.readOptional(&r, what: "identity record")
            let generation = try self.checkedGeneration(try r.readUInt64(), what: "identity record")
            let parent = try self.readOptional(&r, what: "identity record")
            let created = try r.readUInt64()
            let creator = String(decoding: try r.readSized16(max: 255), as: UTF8.self)
            try r.finish()
            return InstanceIdentity(
                vmID: vmID,
                generation: generation,
                parent: parent,
                createdAt: created,
                creator: creator
            )
        } catch let error as StateStoreError {
            throw error
        } catch {
            throw StateStoreError(.malformed, "identity record: \(error)")
        }
    }

    /// Generations are at most `Int64.max` (the registry stores them as BIGINT); a larger one is damage.
    static func checkedGeneration(_ value: UInt64, what: String) throws(StateStoreError) -> UInt64 {
        guard value <= UInt64(Int64.max) else {
            throw StateStoreError(.malformed, "\(what) holds an impossible generation \(value)")
        }
        return value
    }

    static func writeOptional(_ vmID: VMID?, into w: inout ByteWriter) {
        if let vmID { w.write(bytes: vmID.encoded) } else { w.write(UInt8(0)) }
    }

    /// An optional vm-id: `u8 0`, or the binary form ``VMID/decode(prefixOf:)`` reads.
    static func readOptional(_ r: inout ByteReader, what: String) throws -> VMID? {
        let kind = try r.readUInt8()
        if kind == 0 { return nil }
        guard let (vmID, count) = VMID.decode(prefixOf: r.bytes[(r.offset - 1)...]) else {
            throw StateStoreError(.malformed, "\(what) holds a bad vm-id (kind \(kind))")
        }
        try r.skip(count - 1)
        return vmID
    }
}
