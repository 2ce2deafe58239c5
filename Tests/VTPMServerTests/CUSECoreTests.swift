import Foundation
import TPMEngine
import TPMWire
import TestSupport
import Testing
import _VTPMPosix

@testable import VTPMServer

/// `vtpmd cuse`'s requests without a kernel: the ioctls, reads and writes the device would hand over, answered by
/// the channel with the real libtpms behind. The same sequences run against the real device, with swtpm_ioctl, in
/// KernelGuestTests.
extension ProtocolCoreTests {
    @Suite
    struct CUSECoreTests {
        /// A channel on a server with a state directory, as `vtpmd cuse` opens it (minus /dev/cuse).
        final class Harness {
            let core: CoreHarness
            let channel: CUSEChannel

            init(dir: String) throws {
                self.core = try CoreHarness(dir: dir)
                self.channel = CUSEChannel(server: self.core.server, name: "vtpm-test")
            }

            /// An ioctl with its argument (zero-filled to the argument's size); the result's bytes and errno.
            func ioctl(
                _ ioctl: CUSEIoctl,
                _ fields: [UInt32] = [],
                data: [UInt8] = []
            ) -> (bytes: [UInt8], error: Int32) {
                var argument = NativeStruct(size: ioctl.argumentSize)
                for (i, value) in fields.enumerated() { argument.setUInt32(value, at: 4 * i) }
                argument.setBytes(data, at: 4 * fields.count)
                return self.channel.cuseIoctl(
                    command: ioctl.number,
                    input: ioctl.writesArgument ? argument.bytes : [],
                    outputSize: ioctl.argumentSize
                )
            }

            /// The TPM_RESULT at the start of an ioctl's output.
            func result(_ ioctl: CUSEIoctl, _ fields: [UInt32] = [], data: [UInt8] = []) -> UInt32? {
                let (bytes, error) = self.ioctl(ioctl, fields, data: data)
                return error == 0 ? NativeStruct.uint32(bytes, at: 0) : nil
            }

            /// A TPM command written, and its response read back whole.
            func transmit(_ command: [UInt8]) -> [UInt8] {
                #expect(self.channel.cuseWrite(command) == 0)
                let (response, error) = self.channel.cuseRead(maximum: 4096)
                #expect(error == 0)
                return response
            }

            /// GET_STATEBLOB at `offset`: result, total length, the part.
            func getBlob(_ type: UInt32, offset: UInt32) -> (result: UInt32, total: UInt32, part: [UInt8]) {
                let (bytes, _) = self.ioctl(.getStateBlob, [StateBlobFlags.decrypted, type, offset])
                let length = Int(NativeStruct.uint32(bytes, at: 12))
                return (
                    NativeStruct.uint32(bytes, at: 0), NativeStruct.uint32(bytes, at: 8), Array(bytes[16..<16 + length])
                )
            }
        }

        @Test func capabilitiesConfigAndIoctlNumbers() throws {
            try withTemporaryDirectory { dir in
                let h = try Harness(dir: dir)
                let (caps, error) = h.ioctl(.getCapability)
                #expect(error == 0 && NativeStruct.uint64(caps, at: 0) == 0x6fff)
                #expect(h.result(.getConfig) == 0)
                // SET_DATAFD has no meaning on a device (swtpm answers EINVAL too).
                #expect(h.ioctl(.setDataFD).error == EINVAL)
                // A number that is not tpm_ioctl.h's, or an argument of the wrong size, is refused.
                #expect(h.channel.cuseIoctl(command: 0x8004_5000, input: [], outputSize: 4).error == EINVAL)
                #expect(
                    h.channel.cuseIoctl(command: CUSEIoctl.initialize.number, input: [0, 0], outputSize: 4).error
                        == EINVAL
                )
                // Commands that need a running TPM say TPM_BAD_ORDINAL, as swtpm cuse.
                #expect(h.result(.getTPMEstablished) == ControlResult.badOrdinal)
                #expect(h.result(.hashStart) == ControlResult.badOrdinal)
                // A TPM command before INIT is answered with TPM_RC_FAILURE.
                #expect(TPMFrame.responseCode(h.transmit(TPMCommands.startup())) == TPMFrame.rcFailure)
            }
        }

        @Test func commandsAndPartialReads() throws {
            try withTemporaryDirectory { dir in
                let h = try Harness(dir: dir)
                #expect(h.result(.initialize, [0]) == 0)
                #expect(TPMFrame.responseCode(h.transmit(TPMCommands.startup())) == 0)
                // A response read in pieces, then end of file (swtpm's test_tpm2_partial_reads).
                #expect(h.channel.cuseWrite(TPMCommands.getRandom(8)) == 0)
                let head = h.channel.cuseRead(maximum: 4).bytes
                let rest = h.channel.cuseRead(maximum: 4096).bytes
                #expect(head.count == 4 && TPMFrame.responseCode(head + rest) == 0 && (head + rest).count == 20)
                #expect(h.channel.cuseRead(maximum: 4096).bytes.isEmpty)
                // A write that is not one whole command is answered TPM_RC_COMMAND_SIZE, never executed.
                #expect(TPMFrame.responseCode(h.transmit([0x80, 0x01, 0, 0, 0, 12, 0, 0])) == TPMFrame.rcCommandSize)
                var truncated = TPMCommands.getRandom(8)
                truncated.removeLast()
                #expect(TPMFrame.responseCode(h.transmit(truncated)) == TPMFrame.rcCommandSize)
                // Hashing through the ioctls sets the established bit.
                #expect(h.result(.hashStart) == 0)
                #expect(h.result(.hashData, [5], data: Array("hello".utf8)) == 0)
                #expect(h.result(.hashData, [4097]) == ControlResult.fail)
                #expect(h.result(.hashEnd) == 0)
                let (established, _) = h.ioctl(.getTPMEstablished)
                #expect(NativeStruct.uint32(established, at: 0) == 0 && established[4] == 1)
                #expect(h.result(.resetTPMEstablished, [0]) == ControlResult.badLocality)
                #expect(h.result(.resetTPMEstablished, [3]) == 0)
                #expect(h.result(.setLocality, [5]) == ControlResult.badLocality)
                #expect(h.result(.setLocality, [2]) == 0)
                #expect(h.core.server.engine.locality == 2)
                #expect(h.result(.setLocality, [0]) == 0)
            }
        }

        @Test func stateBlobsByIoctlsAndByReadAndWrite() throws {
            try withTemporaryDirectory { dir in
                let h = try Harness(dir: dir)
                #expect(h.result(.initialize, [0]) == 0)
                #expect(TPMFrame.responseCode(h.transmit(TPMCommands.startup())) == 0)
                let digest = [UInt8](repeating: 0x5a, count: 32)
                #expect(TPMFrame.responseCode(h.transmit(TPMCommands.pcrExtend(16, digest: digest))) == 0)
                let pcr16 = h.transmit(TPMCommands.pcrRead(16))

                // The volatile blob is larger than one ioctl: its first part, then the rest by read() ...
                let first = h.getBlob(StateBlobType.volatile.rawValue, offset: 0)
                #expect(first.result == 0 && first.part.count == CUSEIoctl.chunkSize && first.total > 3072)
                var byRead: [UInt8] = []
                while true {
                    let piece = h.channel.cuseRead(maximum: 100).bytes
                    byRead += piece
                    if piece.count < 100 { break }
                }
                // ... or by ioctls at an offset: the same bytes.
                var byOffset: [UInt8] = []
                while UInt32(CUSEIoctl.chunkSize + byOffset.count) < first.total {
                    let next = h.getBlob(
                        StateBlobType.volatile.rawValue,
                        offset: UInt32(CUSEIoctl.chunkSize + byOffset.count)
                    )
                    #expect(next.result == 0 && next.total == first.total && !next.part.isEmpty)
                    byOffset += next.part
                }
                #expect(byRead == byOffset && first.part.count + byRead.count == Int(first.total))
                let volatile = first.part + byRead
                let permanent = h.getBlob(StateBlobType.permanent.rawValue, offset: 0)
                #expect(permanent.result == 0 && permanent.part.count == Int(permanent.total))

                // A running TPM takes no blob.
                #expect(h.result(.setStateBlob, [0, 1, 0]) == ControlResult.badOrdinal)
                #expect(h.result(.stop) == 0)
                // Permanent by ioctls only (one short part), volatile by an empty first part, write()s and an
                // empty last part, as swtpm_ioctl does with SWTPM_IOCTL_BUFFERSIZE.
                #expect(h.result(.setStateBlob, [0, 1, UInt32(permanent.part.count)], data: permanent.part) == 0)
                #expect(h.result(.setStateBlob, [0, 2, 0]) == 0)
                var offset = 0
                while offset < volatile.count {
                    let piece = Array(volatile[offset..<min(offset + 1000, volatile.count)])
                    #expect(h.channel.cuseWrite(piece) == 0)
                    offset += piece.count
                }
                #expect(h.result(.setStateBlob, [0, 2, 0]) == 0)
                #expect(h.result(.initialize, [0]) == 0)
                // The state came back: PCR 16 as it was, without a new Startup.
                #expect(h.transmit(TPMCommands.pcrRead(16)) == pcr16)

                // Transfers out of order are refused and forgotten.
                _ = h.getBlob(StateBlobType.volatile.rawValue, offset: 0)
                #expect(h.channel.cuseWrite(TPMCommands.getRandom(8)) == EIO)
                #expect(TPMFrame.responseCode(h.transmit(TPMCommands.getRandom(8))) == 0)
                #expect(h.result(.stop) == 0)
                #expect(
                    h.result(.setStateBlob, [0, 2, UInt32(CUSEIoctl.chunkSize)], data: Array(volatile.prefix(3072)))
                        == 0
                )
                #expect(h.channel.cuseRead(maximum: 100).error == EIO)
                #expect(h.result(.setStateBlob, [0, 2, 3073]) == ControlResult.badParameter)
            }
        }

        @Test func arbitraryRequestsGetAnAnswer() throws {
            try withTemporaryDirectory { dir in
                let h = try Harness(dir: dir)
                var generator = SystemRandomNumberGenerator()
                for round in 0..<3000 {
                    let ioctl = CUSEIoctl.allCases.randomElement(using: &generator)!
                    if ioctl == .shutdown { continue }
                    let size = ioctl.writesArgument ? ioctl.argumentSize : 0
                    var input = (0..<size).map { _ in UInt8.random(in: 0...255, using: &generator) }
                    // Mostly small lengths and types, so the requests get past the first checks.
                    if size >= 12 && round % 2 == 0 {
                        input.replaceSubrange(
                            4..<12,
                            with: [UInt8.random(in: 0...3), 0, 0, 0, UInt8.random(in: 0...255), 0, 0, 0]
                        )
                    }
                    let (bytes, error) = h.channel.cuseIoctl(
                        command: ioctl.number,
                        input: input,
                        outputSize: ioctl.argumentSize
                    )
                    #expect(error != 0 || bytes.count == ioctl.argumentSize)
                    _ = h.channel.cuseWrite((0..<Int.random(in: 0...64)).map { _ in UInt8.random(in: 0...255) })
                    _ = h.channel.cuseRead(maximum: Int.random(in: 0...5000))
                }
                // libtpms keeps the established bit and the buffer size process-wide (swtpm runs one TPM per
                // process): leave them as the next test expects them.
                #expect(h.result(.initialize, [0]) == 0)
                #expect(h.result(.resetTPMEstablished, [3]) == 0)
                #expect(h.result(.setLocality, [0]) == 0)
                _ = h.ioctl(.stop)
                #expect(h.result(.setBufferSize, [4096]) == 0)
            }
        }
    }
}
