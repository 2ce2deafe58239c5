import Crypto
import TPMWire

extension RekeyProcedure {
    /// What the history index is extended with for one event: SHA-256 over
    /// `"vtpm-event" | TPM2B kind | TPM2B source | TPM2B vmID | be64 generation`. vtpmd and `vtpm-state`
    /// both use it, so a history value means the same whichever tool rekeyed.
    /// - Parameters:
    ///   - kind: the decision's name ("clone", "rollback", "adopt", "rekey", ...).
    ///   - source: the source state's description, empty when there is none.
    ///   - vmID: the VM that gets the new generation.
    ///   - generation: the new generation.
    /// - Returns: the 32-byte digest.
    public static func historyEvent(kind: String, source: String, vmID: String, generation: UInt64) -> [UInt8] {
        var w = ByteWriter(capacity: 128)
        w.write(bytes: Array("vtpm-event".utf8))
        w.writeSized16(Array(kind.utf8))
        w.writeSized16(Array(source.utf8))
        w.writeSized16(Array(vmID.utf8))
        w.write(generation)
        return Array(SHA256.hash(data: w.bytes))
    }
}
