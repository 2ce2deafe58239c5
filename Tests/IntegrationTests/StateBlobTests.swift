import Foundation
import TPMWire
import TestSupport
import Testing

/// GET/SET_STATEBLOB edge cases: incoming state stays in memory until CMD_INIT succeeds, and a
/// failed INIT leaves the disk as it was.
@Suite(.serialized)
struct StateBlobTests {
    /// A running vtpmd with a started TPM and PCR 16 extended with `marker`.
    static func running(_ dir: String, marker: UInt8, extra: [String] = []) throws -> VTPMDInstance {
        let v = try VTPMDInstance(dir: dir, extra: extra)
        let c = try v.control()
        try #require(try c.result(.initialize(flags: 0)) == 0)
        let d = try v.data()
        #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.startup())) == 0)
        let digest = [UInt8](repeating: marker, count: 32)
        #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.pcrExtend(16, digest: digest))) == 0)
        return v
    }

    static func getBlob(
        _ c: ControlClient,
        type: UInt32,
        flags: UInt32 = 1,
        offset: UInt32 = 0
    ) throws -> (UInt32, [UInt8]) {
        let reply = try c.exchange(
            ControlRequest.getStateBlob(flags: flags, type: type, offset: offset).encoded,
            replySize: 600_000,
            timeout: 500
        )
        try #require(reply.count >= 16)
        return (reply.readBigEndianUInt32(at: 0), Array(reply[16...]))
    }

    static func setBlob(_ c: ControlClient, type: UInt32, _ blob: [UInt8], flags: UInt32 = 0) throws -> UInt32 {
        var w = ByteWriter()
        w.write(ControlCode.setStateBlob.rawValue)
        w.write(flags)
        w.write(type)
        w.write(UInt32(blob.count))
        w.write(bytes: blob)
        let reply = try c.exchange(w.bytes, replySize: 4)
        try #require(reply.count == 4)
        return reply.readBigEndianUInt32(at: 0)
    }

    @Test func chunkedReadsReturnTheSameBlob() throws {
        try withTemporaryDirectory { dir in
            let v = try Self.running(dir, marker: 1)
            let c = try v.control()
            let (rc, whole) = try Self.getBlob(c, type: 1)
            #expect(rc == 0)
            let (rc2, tail) = try Self.getBlob(c, type: 1, offset: 100)
            #expect(rc2 == 0 && Array(whole.dropFirst(100)) == tail)
            let (rc3, _) = try Self.getBlob(c, type: 1, offset: UInt32(whole.count + 1))
            #expect(rc3 == ControlResult.badParameter)
        }
    }

    @Test func mismatchedBlobsFailAndTouchNothing() throws {
        try withTemporaryDirectory { dir in
            try FileManager.default.createDirectory(atPath: "\(dir)/a", withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: "\(dir)/b", withIntermediateDirectories: true)
            let a = try Self.running("\(dir)/a", marker: 0xA)
            let ca = try a.control()
            let (_, permA) = try Self.getBlob(ca, type: 1)
            let (_, volA) = try Self.getBlob(ca, type: 2)
            let pcrA = try a.data().transmit(TPMCommands.pcrRead(16))
            let b = try Self.running("\(dir)/b", marker: 0xB)
            let cb = try b.control()
            let (_, volB) = try Self.getBlob(cb, type: 2)

            // A's permanent state with B's volatile state (their seeds differ): refused at SET or INIT.
            #expect(try cb.result(.stop) == 0)
            let before = try BadStateTests.snapshot(b.state)
            let rc1 = try Self.setBlob(cb, type: 1, permA)
            let rc2 = try Self.setBlob(cb, type: 2, volB)
            let rc3 = (rc1 == 0 && rc2 == 0) ? try cb.result(.initialize(flags: 1)) : (rc1 != 0 ? rc1 : rc2)
            #expect(rc3 != 0, "the permanent state of one TPM loaded with the volatile state of another")
            #expect(try BadStateTests.snapshot(b.state) == before)
            #expect(try b.data().transmit(TPMCommands.getRandom(8)) == TPMFrame.errorResponse(0x101))

            // Volatile before permanent (the reverse of QEMU's order): either refused, leaving the disk
            // alone, or accepted as the complete pair, which must then be exactly A's TPM.
            let rv = try Self.setBlob(cb, type: 2, volA)
            let rp = try Self.setBlob(cb, type: 1, permA)
            let ri = (rv == 0 && rp == 0) ? try cb.result(.initialize(flags: 1)) : (rv != 0 ? rv : rp)
            if ri == 0 {
                #expect(try b.data().transmit(TPMCommands.pcrRead(16)) == pcrA)
            } else {
                #expect(try BadStateTests.snapshot(b.state) == before)
            }
            #expect(b.daemon.isRunning)
        }
    }

    @Test func migrationKeyMismatchIsRefused() throws {
        try withTemporaryDirectory { dir in
            try Data("first passphrase".utf8).write(to: URL(fileURLWithPath: "\(dir)/k1"))
            try Data("other passphrase".utf8).write(to: URL(fileURLWithPath: "\(dir)/k2"))
            try FileManager.default.createDirectory(atPath: "\(dir)/a", withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: "\(dir)/b", withIntermediateDirectories: true)
            let a = try Self.running("\(dir)/a", marker: 1, extra: ["--migration-key", "pwdfile=\(dir)/k1"])
            let (rc, perm) = try Self.getBlob(try a.control(), type: 1)
            try #require(rc == 0)
            #expect(perm[5] & 0x06 == 0x06, "migration-encrypted blob")
            let b = try VTPMDInstance(dir: "\(dir)/b", extra: ["--migration-key", "pwdfile=\(dir)/k2"])
            #expect(try Self.setBlob(try b.control(), type: 1, perm) == ControlResult.decryptError)
            var flipped = perm
            flipped[flipped.count / 2] ^= 1
            let c = try VTPMDInstance(dir: "\(dir)/c", extra: ["--migration-key", "pwdfile=\(dir)/k1"])
            #expect(try Self.setBlob(try c.control(), type: 1, flipped) == ControlResult.decryptError)
            #expect(try Self.setBlob(try c.control(), type: 1, Array(perm.dropLast(7))) == ControlResult.badParameter)
            #expect(try Self.setBlob(try c.control(), type: 1, perm) == 0)
            // No migration key at all: TPM_KEYNOTFOUND, as swtpm.
            let d = try VTPMDInstance(dir: "\(dir)/d")
            #expect(try Self.setBlob(try d.control(), type: 1, perm) == ControlResult.keyNotFound)
        }
    }
}
