import Foundation
import TPMWire
import TestSupport
import Testing
import _VTPMPosix

/// vtpmd started with a UNIX control socket and a TCP data port, driven byte by byte.
final class VTPMDInstance {
    let dir: String
    let state: String
    let ctrlPath: String
    let dataPort: UInt16
    let daemon: Daemon

    init(dir: String, extra: [String] = [], state: String? = nil, environment: [String: String] = [:]) throws {
        self.dir = dir
        self.state = state ?? "\(dir)/state"
        try? FileManager.default.createDirectory(atPath: self.state, withIntermediateDirectories: true)
        self.ctrlPath = "\(dir)/ctrl.sock"
        try? FileManager.default.removeItem(atPath: self.ctrlPath)
        self.dataPort = try freePort()
        self.daemon = try Daemon(
            Binaries.vtpmd,
            [
                "socket", "--tpm2", "--tpmstate", "dir=\(self.state)", "--ctrl", "type=unixio,path=\(self.ctrlPath)",
                "--server", "type=tcp,port=\(self.dataPort)", "--log", "file=\(dir)/vtpmd.log,level=20",
            ] + extra,
            waitFor: self.ctrlPath,
            environment: environment
        )
    }

    func control() throws -> ControlClient { try ControlClient(unixPath: self.ctrlPath) }
    func data() throws -> DataClient { try DataClient(tcpPort: self.dataPort) }
    var log: String { (try? String(contentsOfFile: "\(self.dir)/vtpmd.log", encoding: .utf8)) ?? "" }
}

@Suite(.serialized)
struct ControlChannelTests {
    @Test func capabilitiesInfoAndBufferSize() throws {
        try withTemporaryDirectory { dir in
            let v = try VTPMDInstance(dir: dir)
            let c = try v.control()
            let caps = try c.request(.getCapability, replySize: 8)
            #expect(caps == [0, 0, 0, 0, 0, 0, 0xff, 0xff])
            // Query works with the TPM stopped; sizes clamp to libtpms' range.
            #expect(
                try c.request(.setBufferSize(0), replySize: 16).hexString == "00000000000010000000" + "0af800001000"
            )
            #expect(try c.request(.setBufferSize(100), replySize: 16).hexString == "0000000000000af800000af800001000")
            #expect(
                try c.request(.setBufferSize(1_000_000), replySize: 16).hexString == "000000000000100000000af800001000"
            )
            let info = try c.request(.getInfo(flags: 1, offset: 0), replySize: 200)
            let text = String(decoding: info.dropFirst(12), as: UTF8.self)
            #expect(text.hasPrefix("{\"TPMSpecification\":{\"family\":\"2.0\""))
            #expect(try c.result(.getInfo(flags: 1, offset: 1000)) == ControlResult.badParameter)
            #expect(try c.request(.getConfig, replySize: 8) == [0, 0, 0, 0, 0, 0, 0, 0])
        }
    }

    @Test func commandsThatNeedARunningTPMSayBadOrdinal() throws {
        try withTemporaryDirectory { dir in
            let v = try VTPMDInstance(dir: dir)
            let c = try v.control()
            // Full 8-byte reply, so QEMU 7.2's fixed-size read never blocks.
            #expect(try c.request(.getTPMEstablished, replySize: 8) == [0, 0, 0, 0x0a, 0, 0, 0, 0])
            #expect(try c.result(.storeVolatile) == ControlResult.badOrdinal)
            #expect(try c.result(.hashStart) == ControlResult.badOrdinal)
            #expect(try c.result(.cancelTPMCommand) == ControlResult.badOrdinal)
            let blob = try c.request(.getStateBlob(flags: 1, type: 1, offset: 0), replySize: 16)
            #expect(blob.count == 16 && blob.readBigEndianUInt32(at: 0) == ControlResult.badOrdinal)
            // A TPM command before INIT: the fatal reply QEMU's probe expects.
            let d = try v.data()
            #expect(try d.transmit(TPMCommands.readClock) == TPMFrame.errorResponse(0x101))
        }
    }

    @Test func malformedControlMessagesAreRejected() throws {
        try withTemporaryDirectory { dir in
            let v = try VTPMDInstance(dir: dir)
            let c = try v.control()
            // Unknown code.
            #expect(try c.exchange([0, 0, 0, 0x55], replySize: 4) == ControlReply.result(ControlResult.badOrdinal))
            // Locality out of range, then in range.
            #expect(try c.result(.setLocality(5)) == ControlResult.badLocality)
            #expect(try c.result(.setLocality(4)) == 0)
            // Two messages in one write: two replies, in order.
            try c.send(ControlRequest.stop.encoded + ControlRequest.getCapability.encoded)
            #expect(try c.read(12) == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff])
            #expect(try c.result(.setLocality(4)) == 0)
            // SET_STATEBLOB with an unknown type, and a truncated/garbage blob.
            var w = ByteWriter()
            w.write(ControlCode.setStateBlob.rawValue)
            w.write(UInt32(0))
            w.write(UInt32(7))
            w.write(UInt32(4))
            w.write(bytes: Array("abcd".utf8))
            #expect(try c.exchange(w.bytes, replySize: 4) == ControlReply.result(ControlResult.badParameter))
            for (type, body) in [
                (UInt32(1), Array("xxxxxxxxxxxx".utf8)), (1, [2, 1, 0, 10, 0, 4, 0, 0, 0]), (2, [2, 1]),
            ] {
                var g = ByteWriter()
                g.write(ControlCode.setStateBlob.rawValue)
                g.write(UInt32(0))
                g.write(type)
                g.write(UInt32(body.count))
                g.write(bytes: body)
                let reply = try c.exchange(g.bytes, replySize: 4)
                #expect(reply.count == 4 && reply != ControlReply.result(0), "blob \(body.hexString)")
            }
            // A blob length beyond the limit: error and the connection is closed.
            var huge = ByteWriter()
            huge.write(ControlCode.setStateBlob.rawValue)
            huge.write(UInt32(0))
            huge.write(UInt32(1))
            huge.write(UInt32(0x7fff_ffff))
            #expect(try c.exchange(huge.bytes, replySize: 4) == ControlReply.result(ControlResult.badParameter))
            #expect(c.isClosed())
            // A short command (2 of 4 INIT payload bytes): error after the deadline, then closed.
            let c2 = try v.control()
            try c2.send([0, 0, 0, 2, 0, 0])
            #expect(try c2.read(4, timeout: 3000) == ControlReply.result(ControlResult.badParameter))
            #expect(c2.isClosed())
            // The daemon is alive and well.
            let c3 = try v.control()
            #expect(try c3.result(.initialize(flags: 0)) == 0)
            #expect(
                try c3.request(.getStateBlob(flags: 1, type: 9, offset: 0), replySize: 16).readBigEndianUInt32(at: 0)
                    == ControlResult.badParameter
            )
            #expect(try c3.result(.setBufferSize(4096)) == ControlResult.badOrdinal)
            #expect(try c3.result(.resetTPMEstablished(locality: 9)) == ControlResult.badLocality)
            #expect(v.daemon.isRunning)
        }
    }

    @Test func setStateBlobIsRefusedWhileRunningAndStateRoundTrips() throws {
        try withTemporaryDirectory { dir in
            let v = try VTPMDInstance(dir: dir)
            let c = try v.control()
            #expect(try c.result(.initialize(flags: 0)) == 0)
            let d = try v.data()
            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.startup())) == 0)
            let digest = [UInt8](repeating: 0x42, count: 32)
            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.pcrExtend(16, digest: digest))) == 0)
            let pcrBefore = try d.transmit(TPMCommands.pcrRead(16))
            // savevm: GET_STATEBLOB x3, the TPM keeps running.
            var blobs: [[UInt8]] = []
            for type: UInt32 in [1, 2] {
                let reply = try c.exchange(
                    ControlRequest.getStateBlob(flags: 1, type: type, offset: 0).encoded,
                    replySize: 600_000,
                    timeout: 500
                )
                #expect(reply.readBigEndianUInt32(at: 0) == 0)
                let total = Int(reply.readBigEndianUInt32(at: 8))
                #expect(reply.count == 16 + total)
                blobs.append(Array(reply[16...]))
            }
            #expect(
                try c.request(.getStateBlob(flags: 1, type: 3, offset: 0), replySize: 16).readBigEndianUInt32(at: 0)
                    == 0x800
            )
            #expect(try c.result(.setBufferSize(0), replySize: 16) == 0)
            var w = ByteWriter()
            w.write(ControlCode.setStateBlob.rawValue)
            w.write(UInt32(0))
            w.write(UInt32(1))
            w.write(UInt32(blobs[0].count))
            w.write(bytes: blobs[0])
            #expect(try c.exchange(w.bytes, replySize: 4) == ControlReply.result(ControlResult.badOrdinal))
            // Change the PCR, then loadvm: STOP, SET x2, INIT(1) restores it.
            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.pcrExtend(16, digest: digest))) == 0)
            #expect(try c.result(.stop) == 0)
            for (i, blob) in blobs.enumerated() {
                var s = ByteWriter()
                s.write(ControlCode.setStateBlob.rawValue)
                s.write(UInt32(0))
                s.write(UInt32(i + 1))
                s.write(UInt32(blob.count))
                s.write(bytes: blob)
                #expect(try c.exchange(s.bytes, replySize: 4) == ControlReply.result(0))
            }
            #expect(try c.result(.initialize(flags: 1)) == 0)
            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.startup())) == 0x100)
            #expect(try d.transmit(TPMCommands.pcrRead(16)) == pcrBefore)
            #expect(!FileManager.default.fileExists(atPath: "\(v.state)/tpm2-00.volatilestate"))
        }
    }

    @Test func dataFramesThatLieAboutTheirSizeAreRejectedWithoutCallingLibtpms() throws {
        try withTemporaryDirectory { dir in
            let v = try VTPMDInstance(dir: dir, extra: ["--flags", "not-need-init,startup-clear"])
            let commandSize = TPMFrame.errorResponse(TPMFrame.rcCommandSize)
            // Header size below 10.
            let d1 = try v.data()
            try d1.send([0x80, 0x01, 0, 0, 0, 6, 0, 0, 1, 0x7b])
            #expect(try d1.readResponse() == commandSize)
            // Larger than the buffer.
            let d2 = try v.data()
            try d2.send([0x80, 0x01, 0, 0, 0x20, 0, 0, 0, 1, 0x7b])
            #expect(try d2.readResponse() == commandSize)
            // Header says 14 bytes, 12 arrive.
            let d3 = try v.data()
            try d3.send([0x80, 0x01, 0, 0, 0, 14, 0, 0, 1, 0x7b, 0, 8])
            #expect(try d3.readResponse(timeout: 5000) == commandSize)
            // Two commands in one write: trailing bytes, one error reply (never two responses).
            let d6 = try v.data()
            try d6.send(TPMCommands.getRandom(4) + TPMCommands.getRandom(4))
            #expect(try d6.readResponse() == commandSize)
            #expect(d6.isClosedByPeer())
            // A client that disconnects mid-command does not disturb the next one.
            let d4 = try v.data()
            try d4.send([0x80, 0x01, 0, 0])
            _ = d4
            let d5 = try v.data()
            let r = try d5.transmit(TPMCommands.getRandom(8))
            #expect(TPMFrame.responseCode(r) == 0 && r.count == 20)
            #expect(v.daemon.isRunning)
        }
    }

    @Test func setDataFDCarriesTheDataChannel() throws {
        try withTemporaryDirectory { dir in
            let ctrl = "\(dir)/ctrl.sock"
            let daemon = try Daemon(
                Binaries.vtpmd,
                ["socket", "--tpm2", "--tpmstate", "dir=\(dir)", "--ctrl", "type=unixio,path=\(ctrl)"],
                waitFor: ctrl
            )
            let c = try ControlClient(unixPath: ctrl)
            // SET_DATAFD without a descriptor.
            #expect(try c.exchange([0, 0, 0, 0x10], replySize: 4) == ControlReply.result(ControlResult.badParameter))
            let (mine, theirs) = try Socket.pair()
            #expect(try c.exchange([0, 0, 0, 0x10], passing: theirs, replySize: 4) == ControlReply.result(0))
            closeDescriptor(theirs)
            let (_, extra) = try Socket.pair()
            #expect(
                try c.exchange([0, 0, 0, 0x10], passing: extra, replySize: 4)
                    == ControlReply.result(ControlResult.ioError)
            )
            let d = DataClient(descriptor: mine)
            #expect(try d.transmit(TPMCommands.readClock) == TPMFrame.errorResponse(0x101))
            #expect(try c.result(.initialize(flags: 0)) == 0)
            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.startup())) == 0)
            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.getRandom(16))) == 0)
            // Malformed commands on QEMU's socket: one error reply each, and the channel stays usable
            // (QEMU never reconnects, so closing it would cut the guest off from its TPM).
            let commandSize = TPMFrame.errorResponse(TPMFrame.rcCommandSize)
            #expect(try d.transmit([0x80, 0x01, 0, 0, 0, 6, 0, 0, 1, 0x7b]) == commandSize)
            #expect(try d.transmit(TPMCommands.getRandom(4) + [0xde, 0xad]) == commandSize)
            #expect(try d.transmit([0x80, 0x01, 0, 0, 0x20, 0, 0, 0, 1, 0x7b]) == commandSize)
            #expect(TPMFrame.responseCode(try d.transmit(TPMCommands.getRandom(16))) == 0)
            // SHUTDOWN: reply, then the process exits 0 and removes its socket.
            #expect(try c.result(.shutdown) == 0)
            #expect(daemon.waitForExit() == 0)
            #expect(!FileManager.default.fileExists(atPath: ctrl))
        }
    }
}

/// Control connections beside the one being served (QEMU's while the VM runs): read-only queries are
/// answered at once, anything else waits its turn, as swtpm's listen backlog makes it wait.
@Suite(.serialized)
struct ControlPeerTests {
    /// The connection being served (QEMU's while the VM runs), after a successful CMD_INIT.
    static func servedConnection(_ v: VTPMDInstance) throws -> ControlClient {
        let first = try v.control()
        try #require(try first.result(.initialize(flags: 0)) == 0)
        return first
    }

    @Test func aReadOnlyQueryIsAnsweredWhileAnotherConnectionIsServed() throws {
        try withTemporaryDirectory { dir in
            let v = try VTPMDInstance(dir: dir)
            let first = try Self.servedConnection(v)
            // `first` stays open (QEMU's connection); a second client's queries are answered now.
            let second = try v.control()
            #expect(try second.request(.getCapability, replySize: 8) == [0, 0, 0, 0, 0, 0, 0xff, 0xff])
            #expect(try second.request(.getConfig, replySize: 8) == [0, 0, 0, 0, 0, 0, 0, 0])
            #expect(try second.request(.getTPMEstablished, replySize: 8).prefix(4) == [0, 0, 0, 0])
            // Two queries in one write are both answered, in order.
            try second.send(ControlRequest.getCapability.encoded + ControlRequest.getConfig.encoded)
            #expect(try second.read(16) == [0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0])
            // The first connection is still served as before.
            #expect(try first.request(.getCapability, replySize: 8) == [0, 0, 0, 0, 0, 0, 0xff, 0xff])
        }
    }

    @Test func aCommandThatChangesStateWaitsUntilTheServedConnectionCloses() throws {
        try withTemporaryDirectory { dir in
            let v = try VTPMDInstance(dir: dir)
            var first: ControlClient? = try Self.servedConnection(v)
            let second = try v.control()
            try second.send(ControlRequest.stop.encoded)
            // No answer while `first` is served: STOP waits, and the TPM keeps running for `first`.
            #expect(try second.read(4, timeout: 500).isEmpty)
            #expect(try first?.request(.getTPMEstablished, replySize: 8).prefix(4) == [0, 0, 0, 0])
            first = nil
            // `first` closed: the waiting STOP is executed and answered.
            #expect(try second.read(4, timeout: 3000) == [0, 0, 0, 0])
            #expect(try second.result(.getTPMEstablished, replySize: 8) == ControlResult.badOrdinal)
        }
    }

    @Test func aWaitingConnectionThatHangsUpIsDropped() throws {
        try withTemporaryDirectory { dir in
            let v = try VTPMDInstance(dir: dir)
            let first = try Self.servedConnection(v)
            do {
                let waiting = try v.control()
                try waiting.send(ControlRequest.stop.encoded)
                Thread.sleep(forTimeInterval: 0.1)
            }
            // It gave up: its place is freed, and its STOP is never run.
            for _ in 0..<100 where !v.log.contains("a waiting connection hung up") {
                Thread.sleep(forTimeInterval: 0.02)
            }
            #expect(v.log.contains("a waiting connection hung up"), "\(v.log)")
            #expect(try first.request(.getTPMEstablished, replySize: 8).prefix(4) == [0, 0, 0, 0])
        }
    }

    @Test func aQueryThatStopsHalfwayIsClosedAtTheDeadlineAndDelaysNothing() throws {
        try withTemporaryDirectory { dir in
            let v = try VTPMDInstance(dir: dir)
            let first = try Self.servedConnection(v)
            let stalled = try v.control()
            try stalled.send([0, 0])
            // The served connection is answered meanwhile, and the stalled one is closed after 500 ms.
            #expect(try first.request(.getCapability, replySize: 8) == [0, 0, 0, 0, 0, 0, 0xff, 0xff])
            #expect(stalled.isClosed(timeout: 3000))
            #expect(v.log.contains("incomplete query"))
        }
    }
}

extension ControlPeerTests {
    static func openDescriptors(_ pid: Int32) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd"))?.count ?? -1
    }

    @Test func descriptorsSentWithQueriesAreClosed() throws {
        try withTemporaryDirectory { dir in
            let v = try VTPMDInstance(dir: dir)
            let first = try Self.servedConnection(v)
            let second = try v.control()
            #expect(try second.request(.getCapability, replySize: 8).count == 8)
            let before = Self.openDescriptors(v.daemon.pid)
            let (a, b) = try Socket.pair()
            defer {
                closeDescriptor(a)
                closeDescriptor(b)
            }
            for _ in 0..<50 {
                try Socket.send(second.fd, ControlRequest.getCapability.encoded, passing: a)
                #expect(try second.read(8).count == 8)
            }
            #expect(Self.openDescriptors(v.daemon.pid) == before)
        }
    }

    @Test func aQueryClientThatDoesNotReadIsDroppedAndTheTPMStaysResponsive() throws {
        try withTemporaryDirectory { dir in
            let v = try VTPMDInstance(dir: dir)
            let first = try Self.servedConnection(v)
            let data = try v.data()
            let flood = try v.control()
            // 64 Ki queries in one go, replies never read: vtpmd must not wait on this client.
            let queries = Array(repeating: ControlRequest.getCapability.encoded, count: 65536).flatMap { $0 }
            let floodFD = flood.fd
            let writer = Thread { try? Socket.sendAll(floodFD, queries) }
            writer.start()
            let startup: [UInt8] = [0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x44, 0, 0]
            #expect(try data.transmit(startup, timeout: 5000).count == 10)
            let getRandom: [UInt8] = [0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x7b, 0, 8]
            for _ in 0..<20 {
                #expect(try data.transmit(getRandom, timeout: 5000).count == 20)
            }
            #expect(try first.request(.getCapability, replySize: 8) == [0, 0, 0, 0, 0, 0, 0xff, 0xff])
            // The flooding client is dropped (its unread replies stay in its receive buffer).
            for _ in 0..<500 where !v.log.contains("does not read its replies") { Thread.sleep(forTimeInterval: 0.02) }
            #expect(v.log.contains("does not read its replies"), "\(v.log)")
            #expect(try first.request(.getCapability, replySize: 8) == [0, 0, 0, 0, 0, 0, 0xff, 0xff])
        }
    }
}

/// A control peer that stalls never stalls the guest's TPM: the data channel is served while the control
/// connection holds part of a message, and the control channel takes messages at any pace within their
/// deadline, pipelined or not.
@Suite(.serialized)
struct ControlStallTests {
    static let getRandom: [UInt8] = [0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x7b, 0, 8]

    /// Sends GetRandom on the data channel and returns the milliseconds until its response.
    static func timedGetRandom(_ d: DataClient) throws -> Double {
        let start = ProcessControl.monotonicNanoseconds()
        let r = try d.transmit(Self.getRandom, timeout: 5000)
        let elapsed = Double(ProcessControl.monotonicNanoseconds() - start) / 1e6
        #expect(TPMFrame.responseCode(r) == 0 && r.count == 20)
        return elapsed
    }

    static func stalledPrefixes() -> [(name: String, bytes: [UInt8], deadlineMs: Int)] {
        var blob = ByteWriter()
        blob.write(ControlCode.setStateBlob.rawValue)
        blob.write(UInt32(0))
        blob.write(UInt32(1))
        blob.write(UInt32(1000))
        blob.write(bytes: [UInt8](repeating: 0xAA, count: 100))
        var hash = ByteWriter()
        hash.write(ControlCode.hashData.rawValue)
        hash.write(UInt32(1000))
        hash.write(bytes: [UInt8](repeating: 0x55, count: 100))
        return [
            ("mid-header", [0, 0, 0], 500),
            ("mid-payload", [0, 0, 0, 2, 0], 500),
            ("mid-SET_STATEBLOB body", blob.bytes, 10_000),
            ("mid-HASH_DATA body", ControlRequest.hashStart.encoded + hash.bytes, 10_000),
        ]
    }

    @Test func theDataChannelIsServedWhileTheControlPeerStalls() throws {
        try withTemporaryDirectory { dir in
            let v = try VTPMDInstance(dir: dir, extra: ["--flags", "not-need-init,startup-clear"])
            let d = try v.data()
            _ = try Self.timedGetRandom(d)
            for stall in Self.stalledPrefixes() {
                let c = try v.control()
                try c.send(stall.bytes)
                // HASH_START's reply comes first.
                if stall.name.contains("HASH") { #expect(try c.read(4) == [0, 0, 0, 0]) }
                Thread.sleep(forTimeInterval: 0.05)
                var worst = 0.0
                for _ in 0..<10 { worst = max(worst, try Self.timedGetRandom(d)) }
                // Answered while the stalled message is still pending: nothing waited for it.
                #expect(try c.read(1, timeout: 0).isEmpty, "\(stall.name)")
                #expect(worst < Double(stall.deadlineMs) / 2, "\(stall.name): \(worst) ms")
                print("GetRandom while the control peer stalls \(stall.name): slowest of 10 \(worst) ms")
                if stall.deadlineMs == 500 {
                    // At its deadline the stalled connection is answered (when its command is known) and closed.
                    let reply = try c.read(4, timeout: 3000)
                    #expect(reply == (stall.bytes.count < 4 ? [] : [0, 0, 0, 3]), "\(stall.name)")
                    #expect(c.isClosed(timeout: 3000), "\(stall.name)")
                }
            }
            #expect(v.daemon.isRunning)
        }
    }

    @Test func aMessageSentOneBytePer50msWithinItsDeadlineIsServed() throws {
        try withTemporaryDirectory { dir in
            let v = try VTPMDInstance(dir: dir)
            let c = try v.control()
            // INIT: 8 bytes over 350 ms, within the 500 ms control deadline.
            for byte in ControlRequest.initialize(flags: 0).encoded {
                try c.send([byte])
                Thread.sleep(forTimeInterval: 0.05)
            }
            #expect(try c.read(4) == [0, 0, 0, 0])
            // A state blob body is paced the same way, within the 10 s body deadline.
            let header = try c.request(.getStateBlob(flags: 0, type: 1, offset: 0), replySize: 16)
            let length = Int(header.readBigEndianUInt32(at: 12))
            let blob = header + (try c.read(length))
            #expect(try c.result(.stop) == 0)
            var set = ByteWriter()
            set.write(ControlCode.setStateBlob.rawValue)
            set.write(blob.readBigEndianUInt32(at: 4))
            set.write(UInt32(1))
            set.write(UInt32(length))
            set.write(bytes: blob[16...])
            let pieces = stride(from: 0, to: set.bytes.count, by: max(set.bytes.count / 20, 1)).map {
                Array(set.bytes[$0..<min($0 + max(set.bytes.count / 20, 1), set.bytes.count)])
            }
            for piece in pieces {
                try c.send(piece)
                Thread.sleep(forTimeInterval: 0.05)
            }
            #expect(try c.read(4) == [0, 0, 0, 0])
            #expect(try c.result(.initialize(flags: 0)) == 0)
        }
    }

    @Test func shutdownEndsTheProcessEvenWhenItsSenderLeftAtOnce() throws {
        try withTemporaryDirectory { dir in
            let v = try VTPMDInstance(dir: dir)
            do {
                let c = try v.control()
                try c.send(ControlRequest.shutdown.encoded)
            }
            #expect(v.daemon.waitForExit() == 0)
        }
    }

    @Test func pipelinedMessagesGetTheirRepliesInOrder() throws {
        try withTemporaryDirectory { dir in
            let v = try VTPMDInstance(dir: dir)
            let c = try v.control()
            let requests: [ControlRequest] = [
                .getCapability, .initialize(flags: 0), .getTPMEstablished, .setLocality(0), .getConfig, .stop,
                .setBufferSize(0),
            ]
            try c.send(requests.flatMap(\.encoded))
            let reply = try c.read(8 + 4 + 8 + 4 + 8 + 4 + 16)
            #expect(reply.count == 52)
            #expect(Array(reply[0..<8]) == [0, 0, 0, 0, 0, 0, 0xff, 0xff])
            #expect(Array(reply[8..<12]) == [0, 0, 0, 0])
            #expect(Array(reply[12..<16]) == [0, 0, 0, 0])
            #expect(Array(reply[20..<24]) == [0, 0, 0, 0])
            #expect(Array(reply[32..<36]) == [0, 0, 0, 0])
            #expect(Array(reply[36..<40]) == [0, 0, 0, 0])
            // The TPM is stopped: GET_TPMESTABLISHED now fails, as it would sent alone.
            #expect(try c.result(.getTPMEstablished, replySize: 8) == ControlResult.badOrdinal)
        }
    }

    @Test func aControlClientThatDoesNotReadItsRepliesIsClosedAndStallsNothing() throws {
        try withTemporaryDirectory { dir in
            let v = try VTPMDInstance(dir: dir, extra: ["--flags", "not-need-init,startup-clear"])
            let d = try v.data()
            let flood = try v.control()
            // 64 Ki pipelined queries, replies never read: vtpmd stops decoding them when the socket is full.
            let queries = Array(repeating: ControlRequest.getCapability.encoded, count: 65536).flatMap { $0 }
            let floodFD = flood.fd
            let writer = Thread { try? Socket.sendAll(floodFD, queries) }
            writer.start()
            for _ in 0..<20 { _ = try Self.timedGetRandom(d) }
            // After the reply deadline (10 s) the client is closed, and the control channel is free again.
            for _ in 0..<300 where !v.log.contains("does not read its replies") { Thread.sleep(forTimeInterval: 0.05) }
            #expect(v.log.contains("does not read its replies"), "\(v.log)")
            let next = try v.control()
            #expect(try next.request(.getCapability, replySize: 8) == [0, 0, 0, 0, 0, 0, 0xff, 0xff])
            _ = try Self.timedGetRandom(d)
        }
    }
}
