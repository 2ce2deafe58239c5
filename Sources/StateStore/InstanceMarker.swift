import TPMWire
import _VTPMPosix

/// `vtpm-instance.permall`: written once, with the first permanent state. Its presence means "this
/// directory held a TPM", so a missing `permall` is an error rather than a reason to manufacture.
/// Format: a state-file container (see `StateFile`) whose data is
/// `"VTPMINST" | be16 version 1 | be64 creation time (Unix seconds) | TPM2B creator`.
enum InstanceMarker {
    static let magic: [UInt8] = Array("VTPMINST".utf8)

    static func encode(createdBy creator: String) throws(StateStoreError) -> [UInt8] {
        var w = ByteWriter(capacity: 64)
        w.write(bytes: self.magic)
        w.write(UInt16(1))
        w.write(UInt64(ProcessControl.wallClock().seconds))
        w.writeSized16(Array(creator.utf8.prefix(255)))
        return try StateFile.encode(w.bytes, key: nil, generation: 1)
    }
}
