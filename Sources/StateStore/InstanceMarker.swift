import TPMWire
import _VTPMPosix

/// The identity recorded in a state directory (`vtpm-instance.permall`).
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
/// version 2 on `| u8 has-vmID [| vmID(16)] | be64 generation | u8 has-parent [| parent(16)]`.
enum InstanceMarker {
    static let magic: [UInt8] = Array("VTPMINST".utf8)
    static let version: UInt16 = 2

    static func encode(_ identity: InstanceIdentity) throws(StateStoreError) -> [UInt8] {
        var w = ByteWriter(capacity: 96)
        w.write(bytes: self.magic)
        w.write(self.version)
        w.write(identity.createdAt)
        w.writeSized16(Array(identity.creator.utf8.prefix(255)))
        if let vm = identity.vmID {
            w.write(UInt8(1))
            w.write(bytes: vm.bytes)
        } else {
            w.write(UInt8(0))
        }
        w.write(identity.generation)
        if let parent = identity.parent {
            w.write(UInt8(1))
            w.write(bytes: parent.bytes)
        } else {
            w.write(UInt8(0))
        }
        return try StateFile.encode(w.bytes, key: nil, generation: identity.generation + 1)
    }

    static func decode(_ stored: [UInt8]) throws(StateStoreError) -> InstanceIdentity {
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
                if try r.readUInt8() == 1 { identity.vmID = VMID(bytes: try r.readBytes(count: 16)) }
                identity.generation = try r.readUInt64()
                if try r.readUInt8() == 1 { identity.parent = VMID(bytes: try r.readBytes(count: 16)) }
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
