import Foundation
import Logging
import TPMEngine
import TPMWire
import TestSupport
import Testing
import _VTPMPosix

@testable import VTPMServer

/// vtpmd's protocol core without sockets: bytes go in as the loop would hand them over, actions come
/// out, with the real libtpms behind. libtpms is process-global: one server at a time.
final class CoreHarness {
    let server: Server
    let control: ControlConnection
    let state: String

    init(
        dir: String,
        logger: Logger = Logger(label: "vtpm.test") { _ in SwiftLogNoOpLogHandler() },
        configure: (inout ServerConfiguration) -> Void = { _ in }
    ) throws {
        self.state = "\(dir)/state"
        try FileManager.default.createDirectory(atPath: self.state, withIntermediateDirectories: true)
        var configuration = ServerConfiguration()
        configuration.stateDirectory = self.state
        configure(&configuration)
        self.server = try Server(configuration: configuration, logger: logger)
        self.control = ControlConnection(fd: -1, maximumBlobSize: configuration.maximumBlobSize)
    }

    deinit { self.server.abandon() }

    static var now: UInt64 { ProcessControl.monotonicNanoseconds() }

    /// Feeds control bytes (and descriptors) and returns every action of the messages they complete.
    func control(_ bytes: [UInt8], descriptors: [Int32] = []) -> [ConnectionAction] {
        self.server.receiveControl(bytes, descriptors: descriptors, on: self.control, now: Self.now)
        var actions: [ConnectionAction] = []
        while let more = self.server.stepControl(self.control, now: Self.now) { actions += more }
        return actions
    }

    func control(_ request: ControlRequest) -> [ConnectionAction] { self.control(request.encoded) }

    /// The result code of a request answered with one reply.
    func result(_ request: ControlRequest) -> UInt32? {
        guard case .reply(let bytes)? = self.control(request).first, bytes.count >= 4 else { return nil }
        return bytes.readBigEndianUInt32(at: 0)
    }

    /// Feeds data bytes the way the loop reads them (each read cut to the framer's limit).
    func data(_ bytes: [UInt8]) -> [ConnectionAction] {
        var actions: [ConnectionAction] = []
        var rest = bytes[...]
        while !rest.isEmpty {
            let limit = self.server.dataFramer.readLimit(in: self.server.readBuffer)
            let n = min(rest.count, limit)
            let at = self.server.dataFramer.filled
            self.server.readBuffer.replaceSubrange(at..<(at + n), with: rest.prefix(n))
            rest = rest.dropFirst(n)
            actions += self.server.receivedData(n, now: Self.now)
        }
        return actions
    }

    /// Powers the TPM on and sends TPM2_Startup.
    func start() throws {
        try #require(self.result(.initialize(flags: 0)) == 0)
        try #require(Self.responseCode(self.data(TPMCommands.startup())) == 0)
    }

    static func responseCode(_ actions: [ConnectionAction]) -> UInt32? {
        guard case .reply(let bytes)? = actions.first else { return nil }
        return TPMFrame.responseCode(bytes)
    }
}

/// libtpms is process-global: every suite that runs a server is nested here, so they run one at a time.
@Suite(.serialized)
struct ProtocolCoreTests {}

extension ProtocolCoreTests {
    @Suite
    struct ControlCoreTests {
        @Test func capabilityConfigInfoAndBufferSizeWorkWithTheTPMStopped() throws {
            try withTemporaryDirectory { dir in
                let h = try CoreHarness(dir: dir)
                #expect(h.control(.getCapability) == [.reply([0, 0, 0, 0, 0, 0, 0xff, 0xff])])
                #expect(h.control(.getConfig) == [.reply([0, 0, 0, 0, 0, 0, 0, 0])])
                guard case .reply(let info)? = h.control(.getInfo(flags: 1, offset: 0)).first else {
                    Issue.record("no GET_INFO reply")
                    return
                }
                #expect(
                    info.readBigEndianUInt32(at: 0) == 0
                        && String(decoding: info[12...], as: UTF8.self).contains("TPMSpecification")
                )
                #expect(h.result(.getInfo(flags: 1, offset: 100_000)) == ControlResult.badParameter)
                guard case .reply(let sizes)? = h.control(.setBufferSize(0)).first else {
                    Issue.record("no SET_BUFFERSIZE reply")
                    return
                }
                #expect(sizes.count == 16 && sizes.readBigEndianUInt32(at: 0) == 0)
                #expect(h.result(.setBufferSize(3000)) == 0)
                #expect(h.server.bufferSize == 3000)
            }
        }

        @Test func commandsThatNeedARunningTPMSayBadOrdinalAtTheSizeQEMUReads() throws {
            try withTemporaryDirectory { dir in
                let h = try CoreHarness(dir: dir)
                #expect(h.control(.getTPMEstablished) == [.reply(ControlReply.established(result: 0x0a, bit: false))])
                #expect(
                    h.control(.getStateBlob(flags: 0, type: 1, offset: 0)).first.map { action in
                        if case .reply(let b) = action { return b.count == 16 && b.readBigEndianUInt32(at: 0) == 0x0a }
                        return false
                    } == true
                )
                for request: ControlRequest in [
                    .hashStart, .hashEnd, .cancelTPMCommand, .storeVolatile, .resetTPMEstablished(locality: 3),
                ] {
                    #expect(h.result(request) == ControlResult.badOrdinal, "\(request)")
                }
                // HASH_DATA with the TPM stopped: the body is consumed, then the answer.
                var hash = ByteWriter()
                hash.write(ControlCode.hashData.rawValue)
                hash.write(UInt32(5000))
                hash.write(bytes: [UInt8](repeating: 1, count: 5000))
                #expect(h.control(hash.bytes) == [.reply(ControlReply.result(ControlResult.badOrdinal))])
            }
        }

        @Test func initStopAndShutdown() throws {
            try withTemporaryDirectory { dir in
                let h = try CoreHarness(dir: dir)
                #expect(h.result(.initialize(flags: 0)) == 0)
                #expect(h.server.engine.isRunning)
                #expect(FileManager.default.fileExists(atPath: "\(h.state)/tpm2-00.permall"))
                #expect(h.result(.setBufferSize(4096)) == ControlResult.badOrdinal)
                #expect(h.result(.stop) == 0)
                #expect(!h.server.engine.isRunning)
                #expect(h.result(.stop) == 0)
                #expect(h.control(.shutdown) == [.reply([0, 0, 0, 0]), .exit])
            }
        }

        @Test func localityEstablishedAndCancel() throws {
            try withTemporaryDirectory { dir in
                let h = try CoreHarness(dir: dir) { $0.rejectLocality4 = true }
                #expect(h.result(.setLocality(3)) == 0)
                #expect(h.server.engine.locality == 3)
                #expect(h.result(.setLocality(4)) == ControlResult.badLocality)
                #expect(h.result(.setLocality(5)) == ControlResult.badLocality)
                try h.start()
                #expect(h.control(.getTPMEstablished) == [.reply(ControlReply.established(result: 0, bit: false))])
                // HASH_START/DATA/END set the established bit; RESET from locality 3 clears it.
                #expect(h.result(.hashStart) == 0)
                var hash = ByteWriter()
                hash.write(ControlCode.hashData.rawValue)
                hash.write(UInt32(3))
                hash.write(bytes: [1, 2, 3])
                #expect(h.control(hash.bytes) == [.reply([0, 0, 0, 0])])
                #expect(h.result(.hashEnd) == 0)
                #expect(h.control(.getTPMEstablished) == [.reply(ControlReply.established(result: 0, bit: true))])
                #expect(h.result(.resetTPMEstablished(locality: 9)) == ControlResult.badLocality)
                #expect(h.result(.resetTPMEstablished(locality: 3)) == 0)
                #expect(h.control(.getTPMEstablished) == [.reply(ControlReply.established(result: 0, bit: false))])
                #expect(h.result(.cancelTPMCommand) == 0)
            }
        }

        @Test func stateBlobsRoundTripAndStoreVolatileWritesTheFile() throws {
            try withTemporaryDirectory { dir in
                let h = try CoreHarness(dir: dir)
                try h.start()
                #expect(h.result(.storeVolatile) == 0)
                #expect(FileManager.default.fileExists(atPath: "\(h.state)/tpm2-00.volatilestate"))
                var blobs: [UInt32: [UInt8]] = [:]
                for type: UInt32 in [1, 2] {
                    guard case .reply(let reply)? = h.control(.getStateBlob(flags: 0, type: type, offset: 0)).first
                    else {
                        Issue.record("no GET_STATEBLOB reply")
                        return
                    }
                    #expect(reply.readBigEndianUInt32(at: 0) == 0)
                    blobs[type] = Array(reply[16...])
                    #expect(blobs[type]?.count == Int(reply.readBigEndianUInt32(at: 12)))
                }
                // A savestate blob never exists for a TPM 2.
                guard case .reply(let none)? = h.control(.getStateBlob(flags: 0, type: 3, offset: 0)).first else {
                    return
                }
                #expect(none.readBigEndianUInt32(at: 0) == ControlResult.retry)
                // Unknown type.
                guard case .reply(let bad)? = h.control(.getStateBlob(flags: 0, type: 9, offset: 0)).first else {
                    return
                }
                #expect(bad.readBigEndianUInt32(at: 0) == ControlResult.badParameter)
                // SET_STATEBLOB is refused while running, taken when stopped, in any split.
                let set = ControlDecoderFixtures.stateBlob(type: 1, body: blobs[1] ?? [])
                #expect(h.control(set) == [.reply(ControlReply.result(ControlResult.badOrdinal))])
                #expect(h.result(.stop) == 0)
                var actions: [ConnectionAction] = []
                for piece in stride(from: 0, to: set.count, by: 97) {
                    actions += h.control(Array(set[piece..<min(piece + 97, set.count)]))
                }
                #expect(actions == [.reply([0, 0, 0, 0])])
                #expect(h.control(ControlDecoderFixtures.stateBlob(type: 7, body: [1, 2])) == [.reply([0, 0, 0, 3])])
                #expect(h.result(.initialize(flags: 0)) == 0)
            }
        }

        @Test func setDataFDAsksTheLoopToAdoptTheDescriptor() throws {
            try withTemporaryDirectory { dir in
                let h = try CoreHarness(dir: dir)
                #expect(h.control(.setDataFD) == [.reply(ControlReply.result(ControlResult.badParameter))])
                let (a, b) = try Socket.pair()
                defer { closeDescriptor(a) }
                #expect(
                    h.control(ControlRequest.setDataFD.encoded, descriptors: [b]) == [
                        .reply([0, 0, 0, 0]), .adoptDataDescriptor(b),
                    ]
                )
                h.server.dataConnection = b
                let (c, d) = try Socket.pair()
                defer { closeDescriptor(c) }
                // A second data channel is refused, and its descriptor closed.
                #expect(
                    h.control(ControlRequest.setDataFD.encoded, descriptors: [d]) == [
                        .reply(ControlReply.result(ControlResult.ioError))
                    ]
                )
                #expect(fcntlIsOpen(d) == false)
            }
        }

        @Test func setDataFDRefusesADescriptorThatIsNotASocket() throws {
            try withTemporaryDirectory { dir in
                let h = try CoreHarness(dir: dir)
                let null = try #require(FileHandle(forReadingAtPath: "/dev/null"))
                let fd = dup(null.fileDescriptor)
                #expect(
                    h.control(ControlRequest.setDataFD.encoded, descriptors: [fd])
                        == [.reply(ControlReply.result(ControlResult.badParameter))]
                )
                #expect(fcntlIsOpen(fd) == false)
            }
        }

        @Test func descriptorsBeyondAFewAreClosedAtOnce() throws {
            try withTemporaryDirectory { dir in
                let h = try CoreHarness(dir: dir)
                var pairs: [(Int32, Int32)] = []
                for _ in 0..<6 { pairs.append(try Socket.pair()) }
                defer { for (a, _) in pairs { closeDescriptor(a) } }
                // Half a HASH_DATA header with six descriptors: four are held (for a SET_DATAFD to come), two closed.
                #expect(h.control([0, 0, 0, 7, 0], descriptors: pairs.map(\.1)).isEmpty)
                #expect(pairs.map { fcntlIsOpen($0.1) } == [true, true, true, true, false, false])
                h.control.releaseDescriptors()
            }
        }

        @Test func descriptorsThatCameWithOtherCommandsAreClosed() throws {
            try withTemporaryDirectory { dir in
                let h = try CoreHarness(dir: dir)
                let (a, b) = try Socket.pair()
                defer { closeDescriptor(a) }
                #expect(h.control(ControlRequest.getCapability.encoded, descriptors: [b]).count == 1)
                #expect(fcntlIsOpen(b) == false)
            }
        }

        @Test func theIdentityQueryAnswersWithoutAVMID() throws {
            try withTemporaryDirectory { dir in
                let h = try CoreHarness(dir: dir)
                let body = Array("{\"vm_id\": null}".utf8)
                #expect(h.control(.vtpmGetIdentity) == [.reply([0, 0, 0, 0, 0, 0, 0, UInt8(body.count)] + body)])
            }
        }
    }

}

extension ProtocolCoreTests {
    /// Framing errors of the control channel, and their deadlines, as the core answers them.
    @Suite
    struct ControlFramingCoreTests {
        @Test func pipelinedMessagesAreAnsweredInOrder() throws {
            try withTemporaryDirectory { dir in
                let h = try CoreHarness(dir: dir)
                let actions = h.control(
                    ControlRequest.initialize(flags: 0).encoded + ControlRequest.getTPMEstablished.encoded
                        + ControlRequest.stop.encoded + ControlRequest.getTPMEstablished.encoded
                )
                #expect(
                    actions == [
                        .reply([0, 0, 0, 0]), .reply(ControlReply.established(result: 0, bit: false)),
                        .reply([0, 0, 0, 0]),
                        .reply(ControlReply.established(result: ControlResult.badOrdinal, bit: false)),
                    ]
                )
            }
        }

        @Test func anUnknownCodeIsBadOrdinalAndTheConnectionLivesOn() throws {
            try withTemporaryDirectory { dir in
                let h = try CoreHarness(dir: dir)
                #expect(h.control([0, 0, 0, 0x55, 1, 2]) == [.reply([0, 0, 0, 0x0a])])
                #expect(h.control(.getConfig).count == 1)
            }
        }

        @Test func aBlobBeyondTheLimitIsRefusedAndTheConnectionClosed() throws {
            try withTemporaryDirectory { dir in
                let h = try CoreHarness(dir: dir) { $0.maximumBlobSize = 1000 }
                var header = ByteWriter()
                header.write(ControlCode.setStateBlob.rawValue)
                header.write(UInt32(0))
                header.write(UInt32(1))
                header.write(UInt32(1001))
                #expect(h.control(header.bytes) == [.reply([0, 0, 0, 3]), .close(reason: "SET_STATEBLOB too large")])
            }
        }

        @Test func incompleteMessagesAreAnsweredAndClosedAtTheirDeadline() throws {
            let cases: [(bytes: [UInt8], deadline: UInt64, actions: [ConnectionAction])] = [
                ([0, 0], Server.controlDeadlineNanoseconds, [.close(reason: "short command")]),
                (
                    [0, 0, 0, 2, 0], Server.controlDeadlineNanoseconds,
                    [.reply([0, 0, 0, 3]), .close(reason: "incomplete command")]
                ),
                (
                    ControlRequest.getStateBlob(flags: 0, type: 1, offset: 0).encoded.dropLast(2).map { $0 },
                    Server.controlDeadlineNanoseconds,
                    [
                        .reply(ControlReply.stateBlob(result: 3, flags: 0, data: [])),
                        .close(reason: "incomplete command"),
                    ]
                ),
                (
                    Array(
                        ControlDecoderFixtures.stateBlob(type: 1, body: [UInt8](repeating: 0, count: 100)).prefix(50)
                    ),
                    Server.bodyDeadlineNanoseconds, [.reply([0, 0, 0, 3]), .close(reason: "incomplete body")]
                ),
                (
                    [0, 0, 0, 7, 0, 0, 0x10, 0, 1, 2, 3], Server.bodyDeadlineNanoseconds,
                    [.reply([0, 0, 0, 0x1f]), .close(reason: "incomplete body")]
                ),
            ]
            for c in cases {
                try withTemporaryDirectory { dir in
                    let h = try CoreHarness(dir: dir)
                    let start = CoreHarness.now
                    #expect(h.control(c.bytes).isEmpty)
                    let deadline = try #require(h.server.controlDeadline(h.control))
                    #expect(deadline >= start + c.deadline && deadline <= CoreHarness.now + c.deadline)
                    #expect(h.server.expireControl(h.control) == c.actions, "\(c.bytes)")
                }
            }
        }

        @Test func aCompleteMessageHasNoDeadline() throws {
            try withTemporaryDirectory { dir in
                let h = try CoreHarness(dir: dir)
                _ = h.control(.getCapability)
                #expect(h.server.controlDeadline(h.control) == nil)
                #expect(h.server.expireControl(h.control).isEmpty)
            }
        }
    }

}

extension ProtocolCoreTests {
    /// The data channel's core: framing errors, locality, and commands executed in place.
    @Suite
    struct DataCoreTests {
        static let commandSize = ConnectionAction.reply(TPMFrame.errorResponse(TPMFrame.rcCommandSize))

        @Test func commandsAreAnsweredOnlyWhileTheTPMRuns() throws {
            try withTemporaryDirectory { dir in
                let h = try CoreHarness(dir: dir)
                #expect(h.data(TPMCommands.getRandom(8)) == [.reply(TPMFrame.errorResponse(TPMFrame.rcFailure))])
                try h.start()
                // Byte by byte: one response once the frame is complete.
                var actions: [ConnectionAction] = []
                for byte in TPMCommands.getRandom(8) { actions += h.data([byte]) }
                #expect(actions.count == 1)
                #expect(CoreHarness.responseCode(actions) == 0)
                if case .reply(let r)? = actions.first { #expect(r.count == 20) }
            }
        }

        @Test func framesThatLieAboutTheirSizeAreRejected() throws {
            try withTemporaryDirectory { dir in
                let h = try CoreHarness(dir: dir)
                try h.start()
                let close = ConnectionAction.close(reason: "malformed command")
                #expect(h.data([0x80, 0x01, 0, 0, 0, 6, 0, 0, 1, 0x7b]) == [Self.commandSize, close])
                #expect(h.data([0x80, 0x01, 0, 0, 0x20, 0, 0, 0, 1, 0x7b]) == [Self.commandSize, close])
                #expect(h.data(TPMCommands.getRandom(4) + TPMCommands.getRandom(4)) == [Self.commandSize, close])
                // Short: waits, then is rejected at its deadline.
                #expect(h.data([0x80, 0x01, 0, 0, 0, 14, 0, 0, 1, 0x7b, 0, 8]).isEmpty)
                #expect(h.server.dataDeadline != nil)
                #expect(h.server.expireData() == [Self.commandSize, close])
                #expect(h.server.dataDeadline == nil)
                // On QEMU's channel (SET_DATAFD) the connection stays.
                h.server.dataFromControl = true
                #expect(h.data([0x80, 0x01, 0, 0, 0, 6, 0, 0, 1, 0x7b]) == [Self.commandSize])
                #expect(h.data([0, 0, 0, 8, 0, 0, 0, 0, 12] + TPMCommands.getRandom(4)) == [Self.commandSize])
                #expect(CoreHarness.responseCode(h.data(TPMCommands.getRandom(4))) == 0)
            }
        }

        @Test func sendCommandFramingAppliesItsLocalityToOneCommand() throws {
            try withTemporaryDirectory { dir in
                let h = try CoreHarness(dir: dir) { $0.rejectLocality4 = true }
                try h.start()
                let command = TPMCommands.getRandom(4)
                let framed = [0, 0, 0, 8, 3, 0, 0, 0, UInt8(command.count)] + command
                guard case .reply(let r)? = h.data(framed).first else {
                    Issue.record("no reply")
                    return
                }
                #expect(r.readBigEndianUInt32(at: 0) == UInt32(r.count - 8))
                #expect(TPMFrame.responseCode(Array(r[4..<(r.count - 4)])) == 0)
                #expect(h.server.engine.locality == 0)
                let four = [0, 0, 0, 8, 4, 0, 0, 0, UInt8(command.count)] + command
                guard case .reply(let refused)? = h.data(four).first else { return }
                #expect(TPMFrame.responseCode(Array(refused[4..<14])) == TPMFrame.rcLocality)
            }
        }

        @Test func disconnectModeClosesAfterEachResponse() throws {
            try withTemporaryDirectory { dir in
                let h = try CoreHarness(dir: dir) { $0.disconnectAfterResponse = true }
                try h.start()
                let actions = h.data(TPMCommands.getRandom(4))
                #expect(actions.count == 2 && actions.last == .close(reason: "disconnect after response"))
            }
        }
    }

}

/// Whether a descriptor is open in this process.
func fcntlIsOpen(_ fd: Int32) -> Bool {
    FileManager.default.fileExists(atPath: "/proc/self/fd/\(fd)")
}

enum ControlDecoderFixtures {
    static func stateBlob(type: UInt32, body: [UInt8], flags: UInt32 = 0) -> [UInt8] {
        var w = ByteWriter()
        w.write(ControlCode.setStateBlob.rawValue)
        w.write(flags)
        w.write(type)
        w.write(UInt32(body.count))
        w.write(bytes: body)
        return w.bytes
    }
}
